"""Handles: host objects passed through C as integers (cgo.Handle).

One spec for both modes: every test that loads a plugin runs in process and
isolated (``mode``, from conftest); a test about one mode by nature (a crash
and the restart that follows it) says so in its skip.  Tests that load nothing
(forged handles, ``hotload ls``) have no mode.
"""

from __future__ import annotations

import logging

import pytest

from hotload import HandleError, HookError, Host, Isolated, PluginCrashedError

from conftest import modes

Mode = bool | Isolated

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
    host: Host, cc, caplog, isolate: Mode
) -> None:
    host.provide("player_level", lambda h: host.resolve(h).level, "int32_t(int64_t)", error=-1)
    p = host.load(cc(PLUGIN.replace("VERSION", "1"), "keeper1"), isolate=isolate)
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


CONFIGURED = """
#include <hotload.h>
HOTLOAD_PLUGIN("quests", "VERSION");
HOTLOAD_IMPORT(world, int64_t, (void));
HOTLOAD_IMPORT(level_cap_of, int32_t, (int64_t));
static int64_t the_world;
static int configure(const char *prev, const void *state, size_t size)
{
    (void)prev; (void)state; (void)size;
    the_world = world();
    return the_world != 0 || hotload_in_preflight() ? 0 : 1;  /* no world: refuse */
}
HOTLOAD_ON_LOAD(configure);
HOTLOAD_API int32_t level_cap(void) { return level_cap_of(the_world); }
HOTLOAD_EXPORT(level_cap, int32_t, (void));
HOTLOAD_API int32_t crash(void) { volatile int32_t *nowhere = 0; return *nowhere; }
HOTLOAD_EXPORT(crash, int32_t, (void));
"""


class World:
    def __init__(self, level_cap: int) -> None:
        self.level_cap = level_cap


def test_a_plugin_gets_its_configuration_handle_in_every_versions_on_load(
    host: Host, cc, caplog, isolate: Mode
) -> None:
    """The configuration step docs/guide/contract.md documents: a service returns
    a handle and the plugin asks for it in on_load, which every version runs
    before its first call: a load, a reload, a rollback, a load after unload.
    Preflight's stand-in answers 0 (its error value) and the plugin lets that
    pass there; in the host, a version that gets no world refuses to start."""
    worlds = {"current": host.handle(World(60))}
    host.provide("world", lambda: worlds["current"], "int64_t(void)")
    host.provide("level_cap_of", lambda h: host.resolve(h).level_cap, "int32_t(int64_t)", error=-1)
    v1, v2 = (cc(CONFIGURED.replace("VERSION", v), f"quests{v}") for v in ("1", "2"))
    p = host.load(v1, isolate=isolate)  # preflight on: the stand-in's 0 passed there
    assert p.level_cap() == 60
    worlds["current"] = host.handle(World(70))  # the host moves the plugin to another world
    assert p.level_cap() == 60  # v1 keeps what it was given
    host.reload("quests", v2)
    assert p.level_cap() == 70  # v2 asked in its on_load
    worlds["current"] = host.handle(World(80))
    assert host.rollback("quests").note == "rollback to v1"
    assert p.level_cap() == 80  # so did the rolled-back build
    host.unload("quests")
    p = host.load(v2, isolate=isolate)
    assert p.level_cap() == 80
    worlds["current"] = 0  # the host has no world for it
    with pytest.raises(HookError, match="on_load"):
        host.reload("quests", v1)
    assert p.level_cap() == 80  # refused: the running version serves on with its world
    assert host.current("quests").seq == 4


@modes(
    in_process=pytest.mark.skip(
        reason="about one mode by nature: a crash in process ends the host; this test is "
        "about the worker that an isolated plugin's crash restarts"
    )
)
def test_an_isolated_worker_restarted_after_a_crash_asks_for_its_configuration_again(
    host: Host, cc, isolate: Mode
) -> None:
    worlds = {"current": host.handle(World(60))}
    host.provide("world", lambda: worlds["current"], "int64_t(void)")
    host.provide("level_cap_of", lambda h: host.resolve(h).level_cap, "int32_t(int64_t)", error=-1)
    p = host.load(cc(CONFIGURED.replace("VERSION", "1"), "quests"), isolate=isolate)
    assert p.level_cap() == 60
    worlds["current"] = host.handle(World(90))
    with pytest.raises(PluginCrashedError):
        p.crash()
    assert p.level_cap() == 90  # the new worker ran on_load, which asked again
    assert host.current("quests").restarts == 1
