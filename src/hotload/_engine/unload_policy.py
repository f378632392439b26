"""The unload policy: may this image be closed, and why does it stay?

Closing an image whose code may still run (a thread it started, a
thread-key destructor, a signal or atexit handler) crashes the process
later, so such an image is kept, like Erlang's soft purge, unless the plugin
(``HOTLOAD_UNLOAD_SAFE()``) or the host (``load(unload_safe=True)``) says
nothing of it runs after it is closed.  The inspector's report on the file
decides; it is cached by digest, so asking twice costs nothing.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from .._artifact.loader import Candidate, Image
from .._errors import HotloadError
from .._inspect import leaks
from .._inspect import report as inspector
from .._inspect.rules import Finding
from .lifecycle import Version, VersionState

log = logging.getLogger(__name__)

# Looked up once: an enum member costs ~200 ns per access on Python 3.11, and the
# reload path tests every version of the history (up to history_limit + live ones).
_STUCK = frozenset((VersionState.LEAKED, VersionState.RETAINED))

#: Builds whose warnings were logged, newest last: as many as the inspector keeps reports of.
#: Bounded: a host reloading a fresh build all day must not keep every digest it ever saw.
WARNED_KEPT = inspector.CACHE_SIZE


class UnloadPolicy:
    """Decides what may close; explains what stays."""

    def __init__(self, max_leaked: int) -> None:
        self.max_leaked = max_leaked
        self._warned: OrderedDict[str, None] = OrderedDict()  # digests warned about

    # -- reports --------------------------------------------------------------
    @staticmethod
    def report(image: Image) -> inspector.Report | None:
        """The inspector's report on an image (cached by digest)."""
        hit = inspector.cached(image.digest, image.source)
        if hit is not None:
            return hit  # without reading the copy again
        try:
            with open(image.copy, "rb") as fh:
                data = fh.read()
            return inspector.inspect_bytes(data, image.source, image.digest)
        except (HotloadError, OSError) as exc:
            log.debug("cannot inspect %s: %s", image.copy, exc)
            return None

    @staticmethod
    def report_cached(image: Image) -> bool:
        return inspector.cached(image.digest, image.source) is not None

    def warn_once(self, image: Image) -> None:
        """Inspect a new build off the reload path and warn once per build
        about what will keep it in memory or make it unsafe to unload."""
        report = self.report(image)
        if report is None:
            return
        worth = [f for f in report.findings if f.pins or f.unsafe]
        if not worth or image.digest in self._warned:  # a clean build is never remembered
            return
        self._warned[image.digest] = None
        while len(self._warned) > WARNED_KEPT:
            self._warned.popitem(last=False)
        for f in worth:
            log.warning(
                "%s (%s %s): [%s] %s%s",
                image.source,
                image.name,
                image.version,
                f.code,
                f.message,
                f" Fix: {f.fix}" if f.fix else "",
            )

    # -- closing --------------------------------------------------------------
    def hazards(self, image: Image, host_says_safe: bool) -> list[Finding]:
        """Reasons why closing this image could crash the process later."""
        if host_says_safe or (image.descriptor is not None and image.descriptor.unload_safe):
            return []
        if image.process is not None:  # isolated: stopping its worker process is always safe
            return []
        found = self.report(image)
        return list(found.hazards()) if found is not None else []

    @staticmethod
    def may_close_candidate(cand: Candidate, host_says_safe: bool) -> bool:
        """For a build refused before it served: may its image be closed?"""
        if host_says_safe or (cand.descriptor is not None and cand.descriptor.unload_safe):
            return True
        try:
            report = inspector.inspect_bytes(cand.data, cand.source, cand.digest)
        except HotloadError:
            return True
        return not report.hazards()

    def check_budget(self, versions: list[Version], name: str, source: str) -> None:
        """Refuse another reload of a plugin whose images cannot leave memory
        once ``max_leaked`` of them are stuck: each costs memory (and, for
        static TLS, a slot that eventually makes every load fail)."""
        stuck = [v for v in versions if v.state in _STUCK]
        if len(stuck) < self.max_leaked:
            return
        codes = sorted({c for v in stuck for c in self.blockers(v)})
        fixes = self._fixes(stuck)
        raise HotloadError(
            f"{source}: reload of {name} refused: {len(stuck)} of its images are still in memory "
            f"(max_leaked={self.max_leaked}, {sum(v.mapped_bytes for v in stuck)} bytes; "
            f"reasons: {', '.join(codes) or 'unknown'}). "
            + (f"Fix: {fixes}. " if fixes else "")
            + "Or restart the process, or raise Host(max_leaked=...); `hotload inspect "
            f"{source}` explains each reason"
        )

    def _fixes(self, versions: list[Version]) -> str:
        fixes = []
        for v in versions:
            report = inspector.cached(v.image.digest, v.image.source)
            if report is not None:
                fixes += [f.fix for f in report.findings if (f.pins or f.unsafe) and f.fix]
        return "; ".join(f.rstrip(".") for f in dict.fromkeys(fixes))

    # -- explaining -----------------------------------------------------------
    def blockers(self, v: Version, *, inspect: bool = True) -> list[str]:
        """Reason codes: why this image did (leaked, retained) or would
        (active) stay in memory.  ``inspect=False``: only what is known
        already (a build not inspected yet gets none).  An isolated version
        has none: it lives in its worker process, whose exit is the unload,
        so what would hold its file in this process does not apply."""
        if v.state is VersionState.UNLOADED:
            return []
        img = v.image
        if img.process is not None:
            return []
        report = self.report(img) if inspect else inspector.cached(img.digest, img.source)
        if report is None:
            return ["not-inspected"] if inspect else []
        if v.state is VersionState.RETAINED:
            found = [*report.hazards(), *report.pins()]
        else:
            found = list(report.pins())
        if v.state is VersionState.LEAKED and v.leak_codes:
            return list(v.leak_codes)
        return list(dict.fromkeys(f.code for f in found))

    def explain_leak(self, v: Version) -> list[Finding]:
        """Why a closed image is still mapped (the reaper asks, off the
        reload path: finding which library bound into it costs ~40 ms)."""
        img = v.image
        report = self.report(img)
        if report is None:
            return []
        return leaks.leak_findings(report, img.opens, img.closes, loaded_as=str(img.copy))
