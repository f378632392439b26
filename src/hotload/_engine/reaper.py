"""The reaper: closes retired versions once their last call has returned,
then checks with the kernel that each image really left memory.

It runs on its own thread so that neither a reload nor a caller ever waits
for the costly parts: parsing an ELF file (~2 ms with pyelftools) or reading
``/proc/self/maps`` (~0.3 ms).  A quiet version whose build was already
inspected is released at once on the reload path (``dlclose`` is cheap), so a
burst of reloads never piles up images.
"""

from __future__ import annotations

import logging
import threading
import time

from .._artifact.loader import Image, Loader
from .._errors import HotloadError
from .._platform import dl, proc
from .lifecycle import Version, VersionState
from .unload_policy import UnloadPolicy

log = logging.getLogger(__name__)

TRIM_EVERY = 1.0  # seconds between two trims of the C heap, at most (``_trim``)
# Seconds between two reads of the kernel's mappings, at most, while nobody waits in
# settle() (``_verify_wait``): a reload storm's retired images are proven gone together.
VERIFY_EVERY = 0.02


class Reaper:
    def __init__(self, loader: Loader, policy: UnloadPolicy) -> None:
        self._loader = loader
        self._policy = policy
        self._lock = threading.Lock()
        self.wake = threading.Event()  # versions set it when their last call leaves
        self._retired: list[tuple[Version, bool]] = []  # (version, host says unload safe)
        self._unverified: list[Version] = []
        self._fresh: list[Image] = []
        self._busy = 0
        self._stopping = False
        self._trimmed = 0.0
        self._trim_due = False  # images were closed since the last trim
        self._verified = 0.0  # monotonic time of the last batch proven (``_verify_wait``)
        self._settling = 0  # threads waiting in settle(): proofs are not deferred for them
        self._thread = threading.Thread(target=self._loop, name="hotload-reaper", daemon=True)
        self._thread.start()

    # -- called by the host ----------------------------------------------------
    def inspect_later(self, image: Image) -> None:
        with self._lock:
            self._fresh.append(image)
        self.wake.set()

    def retire(self, version: Version, *, unload_safe: bool) -> None:
        """Take a version that no longer receives calls; close it when quiet."""
        img = version.image
        quick = not version.calls and self._policy.report_cached(img)
        if quick:
            self._release(version, unload_safe)
        else:
            with self._lock:
                self._retired.append((version, unload_safe))
        self.wake.set()

    def draining(self) -> list[Version]:
        with self._lock:
            return [v for v, _ in self._retired]

    def settle(self, timeout: float) -> bool:
        """Wait until every retired version has been closed and checked."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._settling += 1
        try:
            while True:
                with self._lock:
                    if not (self._retired or self._unverified or self._busy or self._fresh):
                        return True
                if time.monotonic() >= deadline:
                    return False
                self.wake.set()
                time.sleep(0.002)
        finally:
            with self._lock:
                self._settling -= 1

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping = True
        self.wake.set()
        self._thread.join(timeout)

    # -- the thread -------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self.wake.wait(self._wait())
            self.wake.clear()
            self._trim()
            with self._lock:
                ready = [(v, safe) for v, safe in self._retired if not v.calls]
                fresh, self._fresh = self._fresh, []
                self._busy = len(ready) + len(fresh)  # settle() waits for this work too
            # Inspect outside any lock: the releases below then find every
            # report cached and never stall a reload.
            for image in fresh:
                self._policy.warn_once(image)
            for version, safe in ready:
                self._policy.report(version.image)
                with self._lock:
                    if (version, safe) not in self._retired or version.calls:
                        continue
                    self._retired.remove((version, safe))
                self._release(version, safe)
            with self._lock:
                due = self._verify_wait() == 0.0
                batch, self._unverified = (self._unverified, []) if due else ([], self._unverified)
                self._busy = len(batch)
            if batch:
                self._verified = time.monotonic()
                with dl.maps_snapshot():  # one read of the kernel's mappings for the batch
                    for version in batch:
                        self._verify(version)
                self._trim_due = True
                self._trim()
            with self._lock:
                self._busy = 0
                done = self._stopping and not self._retired and not self._unverified
            if done:
                return

    def _release(self, version: Version, unload_safe: bool) -> None:
        if version.stuck:  # a thread is still inside one of its hooks: never unmap it
            version.retain(f"kept loaded: {version.stuck}")
            self._loader.keep(version.image)
            log.warning(
                "%s v%d is kept loaded, not closed: %s",
                version.plugin_name,
                version.seq,
                version.stuck,
            )
            return
        hazards = self._policy.hazards(version.image, unload_safe)
        if hazards:
            codes = ", ".join(f.code for f in hazards)
            version.retain(f"kept loaded: unloading it could crash the process ({codes})")
            self._loader.keep(version.image)
            log.warning(
                "%s v%d is kept loaded, not closed: %s",
                version.plugin_name,
                version.seq,
                "; ".join(f.message for f in hazards),
            )
            return
        version.released()  # the image may be gone after this: never call into it again
        try:
            self._loader.release(version.image)
        except HotloadError as exc:
            log.error("%s", exc)
            version.leaked(str(exc))
            return
        with self._lock:
            self._unverified.append(version)

    def _trim(self) -> None:
        """Give the C heap's free pages back, at most once a second, after
        images were closed.  Each version's figures (a few KB of histogram),
        its link map and its symbol tables are freed with it, but between
        long-lived blocks: glibc keeps those pages resident, and a host that
        reloads all day crept up ~3 KB of RSS per reload (the soak caught it).
        Off the call path: the reaper's thread; a trim skipped in a burst is
        made once the second is up (``_trim_wait``)."""
        now = time.monotonic()
        if self._trim_due and now - self._trimmed >= TRIM_EVERY:
            self._trim_due = False
            self._trimmed = now
            proc.trim_heap()

    def _wait(self) -> float | None:
        """How long the loop may sleep: until a deferred proof or a trim is due."""
        waits = [w for w in (self._verify_wait(), self._trim_wait()) if w is not None]
        if self._retired:
            waits.append(0.25)
        return min(waits) if waits else None

    def _verify_wait(self) -> float | None:
        """Seconds until the next batch of closed images may be proven gone
        (None: none waits).  Reading ``/proc/self/maps`` is most of the
        reaper's cost (~0.5 ms of kernel time for a host with ~400 mappings,
        and a dozen handovers of the interpreter's lock, one per page read):
        one read per retired version took ~40 % of a core from the callers in
        a reload storm.  So proofs wait up to ``VERIFY_EVERY`` and a burst is
        proven with one read; never while a thread waits in ``settle()``."""
        if not self._unverified:
            return None
        if self._settling or self._stopping:
            return 0.0
        return max(0.0, self._verified + VERIFY_EVERY - time.monotonic())

    def _trim_wait(self) -> float | None:
        """How long the idle reaper may sleep before a trim falls due."""
        if not self._trim_due:
            return None
        return max(0.0, self._trimmed + TRIM_EVERY - time.monotonic())

    def _verify(self, version: Version) -> None:
        verdict = self._loader.verify_gone(version.image)
        version.verified(verdict.gone, verdict.mapped_bytes)
        if version.state is VersionState.UNLOADED:
            log.info(
                "unloaded %s v%d: image gone from the process", version.plugin_name, version.seq
            )
        else:
            log.warning(
                "%s v%d: still mapped after dlclose (%d bytes): %s",
                version.plugin_name,
                version.seq,
                verdict.mapped_bytes,
                ", ".join(self._policy.blockers(version)),
            )
