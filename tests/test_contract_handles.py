"""Handles: host objects passed through C as integers (cgo.Handle)."""

from __future__ import annotations

import logging

import pytest

from hotload import HandleError, Host

PLUGIN = """
#include <hotload.h>
HOTLOAD_PLUGIN("keeper", "VERSION");
HOTLOAD_IMPORT(player_level, int32_t, (int64_t));
static int64_t kept;
HOTLOAD_API void keep(int64_t h) { kept = h; }
HOTLOAD_EXPORT(keep, void, (int64_t));
HOTLOAD_API int32_t level(void) { return player_level(kept); }
HOTLOAD_EXPORT(level, int32_t, (void));
static int on_unload(const void **s, size_t *n) { *s = &kept; *n = sizeof kept; return 0; }
HOTLOAD_ON_UNLOAD(on_unload);
static int on_load(const char *prev, const void *s, size_t n)
{ (void)prev; if (n == sizeof kept) kept = *(const int64_t *)s; return 0; }
HOTLOAD_ON_LOAD(on_load);
"""


class Player:
    def __init__(self, level: int) -> None:
        self.level = level


def test_handle_survives_swaps_and_stale_handle_is_refused_in_the_service(
    host: Host, cc, caplog
) -> None:
    host.provide("player_level", lambda h: host.resolve(h).level, "int32_t(int64_t)", error=-1)
    p = host.load(cc(PLUGIN.replace("VERSION", "1"), "keeper1"))
    alice = Player(12)
    h = host.handle(alice)
    assert host.resolve(h) is alice and host.handles() == 1
    p.keep(h)
    host.reload("keeper", cc(PLUGIN.replace("VERSION", "2"), "keeper2"))
    assert p.level() == 12  # the handle crossed the swap in the state blob
    assert host.release(h) is alice and host.handles() == 0
    with caplog.at_level(logging.ERROR, logger="hotload"):
        assert p.level() == -1  # stale: a HotloadError in the service, the error value in C
    assert f"handle {h:#x} was released (stale)" in caplog.text
    assert host.current("keeper").service_errors == 1


def test_forged_foreign_and_released_handles(tmp_path, host: Host) -> None:
    h = host.handle("x")
    with Host(tmp_path / "other", preflight=False) as other:
        theirs = other.handle("y")
        with pytest.raises(HandleError, match="not issued by this host"):
            host.resolve(theirs)
        with pytest.raises(HandleError, match="not issued by this host"):
            other.resolve(h)
    with pytest.raises(HandleError, match="never issued by this host"):
        host.resolve(h + 1)
    for forged in (0, -1, 12345, 1 << 62):
        with pytest.raises(HandleError):
            host.resolve(forged)
    with pytest.raises(HandleError, match="is an int"):
        host.resolve("1")  # type: ignore[arg-type]
    host.release(h)
    with pytest.raises(HandleError, match="released"):
        host.release(h)
    assert host.handle("z") != h  # serials are never reused


def test_ls_counts_live_handles(host: Host, short_tmp) -> None:
    import json
    import subprocess
    import sys

    server = host.serve_control(directory=short_tmp / "ctl")
    handles = [host.handle(object()) for _ in range(3)]
    host.release(handles[0])

    def ls(*extra: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "hotload", "ls", "--socket", str(server.path), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert json.loads(ls("--json"))["handles"] == 2
    assert ", 0 plugin(s), 2 handle(s), socket " in ls()
