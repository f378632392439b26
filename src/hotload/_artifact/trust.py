"""Who may have written the code we are about to load?

A plugin runs with all of the host's privileges, so a file (or any directory
above it) that another user can write to is a way into the service.  Like
sshd's StrictModes, refuse unless the file and every directory on its real
path are owned by us or root and not writable by group or others.  A
world-writable directory with the sticky bit (``/tmp``) is accepted when root
owns it: others cannot rename or delete our entries there.

Optionally, a host may only load files whose SHA-256 digest it was given.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .._errors import TrustError


def _who(mode: int) -> str:
    return " and ".join(
        w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit
    )


def check_path(path: str, *, uid: int | None = None) -> str:
    """Walk the path from the root as the kernel would, checking every
    directory passed through and the file itself, and following symlinks
    (a link's own directory is checked on the way in, since whoever can write
    it can re-point the link).  One ``lstat`` per component.  Returns the
    resolved path, which the loader then opens without following links.
    Raise ``TrustError`` naming the path and the permission at fault."""
    uid = os.getuid() if uid is None else uid
    pending = [p for p in os.path.abspath(path).split(os.sep) if p]
    resolved = os.sep
    _check_node(resolved, path, uid)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        if part == ".":
            continue
        node = os.path.join(resolved, part)
        try:
            st = os.lstat(node)
        except FileNotFoundError:
            return os.path.join(node, *pending)  # the loader reports a missing file itself
        except OSError as exc:
            raise TrustError(f"{path}: cannot check {node}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise TrustError(f"{path}: too many levels of symbolic links")
            target = os.readlink(node)
            if os.path.isabs(target):
                resolved = os.sep
            pending[:0] = [p for p in target.split(os.sep) if p]
            continue
        check_stat(st, path, node, uid=uid)
        resolved = node
    return resolved


def _check_node(node: str, path: str, uid: int) -> None:
    try:
        st = os.stat(node)
    except OSError as exc:
        raise TrustError(f"{path}: cannot check {node}: {exc.strerror}") from None
    check_stat(st, path, node, uid=uid)


def check_stat(st: os.stat_result, path: str, node: str | Path, *, uid: int | None = None) -> None:
    """The owner and permission rule for one file or directory."""
    uid = os.getuid() if uid is None else uid
    is_dir = stat.S_ISDIR(st.st_mode)
    what = "directory" if is_dir else "file"
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (uid, 0):
        raise TrustError(
            f"{path}: refusing to load: {what} {node} is owned by uid {st.st_uid}, not by "
            f"you (uid {uid}) or root; Host(trust_checks=False) to override"
        )
    sticky_ok = is_dir and st.st_mode & stat.S_ISVTX and st.st_uid == 0
    if mode & 0o022 and not sticky_ok:
        raise TrustError(
            f"{path}: refusing to load: {what} {node} is writable by {_who(mode)} "
            f"(mode {mode:o}), so another user could replace the plugin; fix with "
            f"chmod go-w {node}, or Host(trust_checks=False) to override"
        )


def load_allow_list(spec: str | os.PathLike[str] | Iterable[str]) -> tuple[frozenset[str], str]:
    """Digests from an iterable of hex strings, or from a manifest file in
    ``sha256sum`` format (``<hex>  <file>`` per line, ``#`` comments).
    Returns the digests and a description for messages."""
    if (
        isinstance(spec, str)
        and len(spec) == 64
        and all(c in "0123456789abcdefABCDEF" for c in spec)
    ):
        raise TrustError(
            f"allowed_digests={spec[:12]}...: a single digest must be given in a list "
            f"([digest]); a string is read as the path of a manifest file"
        )
    if isinstance(spec, (str, os.PathLike)):
        manifest = Path(spec)
        try:
            lines = manifest.read_text().splitlines()
        except OSError as exc:
            raise TrustError(
                f"{manifest}: cannot read the allow-list manifest: {exc.strerror}"
            ) from None
        digests = set()
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            digest = line.split()[0].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise TrustError(f"{manifest}:{n}: not a SHA-256 digest: {line[:80]!r}")
            digests.add(digest)
        return frozenset(digests), f"manifest {manifest}"
    listed = frozenset(d.lower() for d in spec)
    return listed, f"allow-list of {len(listed)} digest(s)"


def check_digest(path: str, digest: str, allowed: frozenset[str], described: str) -> None:
    if digest not in allowed:
        raise TrustError(
            f"{path}: refusing to load: its SHA-256 {digest} is not in the host's {described}"
        )
