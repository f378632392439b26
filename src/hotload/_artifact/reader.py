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

import os
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
