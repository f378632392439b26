"""The read policy: how a host turns a path (or bytes from the fleet) into a
checked ``Candidate``.

A build is read exactly once; the trust rules on its path, the size cap, the
binary format, the descriptor and the digest allow-list all run on those bytes,
and the very same bytes are what a swap copies and opens.  The policy is fixed
when the host starts (``Reader`` is built from its settings), so every entry
point (``Host.read``, ``load``, ``reload``, the watcher, the fleet agent) checks
a build the same way.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping

from .._errors import InvalidPluginError
from . import loader, trust
from .loader import Candidate


class Reader:
    """Reads and checks builds under one host's rules."""

    def __init__(
        self,
        *,
        trust_checks: bool,
        max_plugin_size: int,
        allowed_digests: str | os.PathLike[str] | Iterable[str] | None,
    ) -> None:
        self.trust_checks = trust_checks
        self.max_plugin_size = max_plugin_size
        self._allowed = trust.load_allow_list(allowed_digests) if allowed_digests else None

    def read(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        signatures: Mapping[str, str] | None = None,
        known: tuple[bytes, str] | None = None,
    ) -> Candidate:
        """Read ``path`` once and check it.  ``known``: bytes read before and
        their digest (an unchanged build costs a byte comparison, not a hash)."""
        source = os.fspath(path)
        try:
            real = trust.check_path(source) if self.trust_checks else None
            data = loader.read_source(
                source,
                real=real,
                verify=(lambda st: trust.check_stat(st, source, real)) if real else None,
                max_size=self.max_plugin_size,
            )
        except (OSError, ValueError) as exc:  # a path racing with us, a NUL byte...
            raise InvalidPluginError(f"{source}: cannot read: {exc}") from None
        return self._checked(
            loader.candidate(data, source, name=name, declared=signatures, known=known)
        )

    def adopt(self, data: bytes, *, source: str, name: str | None = None) -> Candidate:
        """Check bytes that came from elsewhere (the fleet) as ``read`` does."""
        loader.check_size(source, len(data), self.max_plugin_size)
        return self._checked(loader.candidate(bytes(data), source, name=name))

    def _checked(self, cand: Candidate) -> Candidate:
        if self._allowed is not None:
            trust.check_digest(cand.source, cand.digest, *self._allowed)
        return cand


_ON_DISK: dict[tuple[str, int, int, int, int, int], str] = {}
_ON_DISK_MAX = 256


def on_disk(
    path: str | os.PathLike[str], max_size: int = loader.DEFAULT_MAX_PLUGIN_SIZE
) -> str | None:
    """The SHA-256 of what ``path`` holds now; None when no readable regular
    file is there (gone, a FIFO, over ``max_size``, or not a path at all: a
    fleet build's source).  A file is hashed once per identity (device,
    inode, size, times): ``hotload ls`` asks at every call, to say when the
    file a version came from no longer holds what runs."""
    source = os.fspath(path)
    try:
        st = os.stat(source)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (source, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _ON_DISK.get(key)
    if digest is None:
        try:
            data = loader.read_source(source, max_size=max_size)
        except (InvalidPluginError, OSError, ValueError):
            return None
        digest = hashlib.sha256(data).hexdigest()
        if len(_ON_DISK) >= _ON_DISK_MAX:
            _ON_DISK.clear()
        _ON_DISK[key] = digest
    return digest
