"""Large state blobs and call bodies across the isolation boundary (issue 19
item 7).

An isolated version's state used to travel as hex inside JSON (twice its
size), so a 40 MiB state passed the 64 MiB frame cap: the worker was killed as
"garbage" and the counter it carried went from 1000 to 0.  A state now
travels as raw bytes, up to ``wire.MAX_STATE`` (64 MiB, the documented
``max_state_size``); a larger one is refused before anything is lost (the old
version serves on, with its state, in the same worker).  A call body (its
arguments, its ``char *`` result, copied-back buffers) is capped at
``wire.MAX_BODY`` each way: past it the call raises a clear error and the
worker lives on.  Real plugins, real workers; every wait is bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hotload import HookError, Host, HotloadError, SignatureError
from hotload._process import wire

from conftest import Compile

BIG = r"""
#include <hotload.h>
#include <stdlib.h>
#include <string.h>

HOTLOAD_PLUGIN("bigstate", "VERSION");

static int64_t counter;
static int64_t state_size = 8;   /* the blob on_unload hands over: the counter, then filler */
static int64_t received = -1;    /* the size of the blob on_load got */
static int32_t intact = 1;       /* every filler byte on_load got was the one handed over */
static unsigned char *blob;

static unsigned char filler(size_t i) { return (unsigned char)(i * 131u + 7u); }

static int save(const void **state, size_t *size)
{
    free(blob);
    blob = malloc((size_t)state_size);
    if (!blob) return 1;
    memcpy(blob, &counter, 8);
    for (size_t i = 8; i < (size_t)state_size; i++) blob[i] = filler(i);
    *state = blob;
    *size = (size_t)state_size;
    return 0;
}
HOTLOAD_ON_UNLOAD(save);

static int restore(const char *prev, const void *state, size_t size)
{
    (void)prev;
    received = state ? (int64_t)size : -1;
    if (state && size >= 8) {
        const unsigned char *b = state;
        memcpy(&counter, b, 8);
        for (size_t i = 8; i < size; i++) if (b[i] != filler(i)) { intact = 0; break; }
    }
    return 0;
}
HOTLOAD_ON_LOAD(restore);

HOTLOAD_API int64_t bump(int64_t n) { counter += n; return counter; }
HOTLOAD_EXPORT(bump, int64_t, (int64_t));
HOTLOAD_API void set_state_size(int64_t n) { state_size = n; }
HOTLOAD_EXPORT(set_state_size, void, (int64_t));
HOTLOAD_API int64_t received_size(void) { return received; }
HOTLOAD_EXPORT(received_size, int64_t, (void));
HOTLOAD_API int32_t received_intact(void) { return intact; }
HOTLOAD_EXPORT(received_intact, int32_t, (void));

static char *text;
HOTLOAD_API const char *text_of(int64_t n)
{
    free(text);
    text = malloc((size_t)n + 1);
    if (!text) return NULL;
    memset(text, 'x', (size_t)n);
    text[n] = 0;
    return text;
}
HOTLOAD_EXPORT(text_of, const char *, (int64_t));
HOTLOAD_API int64_t total(const uint8_t *xs, size_t n)
{
    int64_t t = 0;
    for (size_t i = 0; i < n; i++) t += xs[i];
    return t;
}
HOTLOAD_EXPORT(total, int64_t, (const uint8_t *, size_t));
"""

MIB = 1 << 20


def build(cc: Compile, version: str) -> Path:
    return cc(BIG.replace("VERSION", version), f"bigstate{version}")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with Host(tmp_path / "work", preflight=False) as h:
        yield h


def test_a_40_mib_state_crosses_an_isolated_reload_intact(host: Host, cc: Compile) -> None:
    """The case of the issue: 1000 in a counter, a 40 MiB state; it used to
    become 0 (the worker killed as garbage, restarted from its start state)."""
    p = host.load(build(cc, "1"), isolate=True)
    assert p.bump(1000) == 1000
    p.set_state_size(40 * MIB)
    pid = host.current("bigstate").pid  # type: ignore[union-attr]
    host.reload("bigstate", build(cc, "2"))
    assert p.received_size() == 40 * MIB
    assert p.received_intact() == 1  # every byte, in order
    assert p.bump(1) == 1001
    old = host.versions("bigstate")[0]
    assert old.restarts == 0 and pid != host.current("bigstate").pid  # type: ignore[union-attr]


def test_a_state_at_the_cap_crosses_and_one_byte_more_is_refused_before_anything_is_lost(
    host: Host, cc: Compile
) -> None:
    """64 MiB (``Host(max_state_size)``'s default, and an isolated state's
    cap) crosses; 64 MiB + 1 is refused by the old version's worker before
    anything leaves it: the reload raises ``HookError`` naming the limit, and
    the old version serves on in the same worker with its state."""
    p = host.load(build(cc, "1"), isolate=True)
    p.bump(7)
    p.set_state_size(wire.MAX_STATE)
    host.reload("bigstate", build(cc, "2"))
    assert p.received_size() == wire.MAX_STATE and p.received_intact() == 1
    assert p.bump(1) == 8
    p.set_state_size(wire.MAX_STATE + 1)
    pid = host.current("bigstate").pid  # type: ignore[union-attr]
    with pytest.raises(HookError, match=r"over the 64 MiB limit \(max_state_size\)"):
        host.reload("bigstate", build(cc, "3"))
    now = host.current("bigstate")
    assert now is not None and now.plugin_version == "2" and now.pid == pid
    assert now.restarts == 0
    assert p.bump(1) == 9  # its state, untouched


def test_a_larger_max_state_size_still_refuses_isolated_state_over_the_cap(
    tmp_path: Path, cc: Compile
) -> None:
    """``Host(max_state_size=...)`` above 64 MiB applies in process only: an
    isolated state travels in one frame, so above ``wire.MAX_STATE`` it is
    refused the same way, naming the isolated cap."""
    with Host(tmp_path / "w", preflight=False, max_state_size=128 * MIB) as host:
        p = host.load(build(cc, "1"), isolate=True)
        p.bump(3)
        p.set_state_size(wire.MAX_STATE + 1)
        with pytest.raises(HookError, match="64 MiB limit \\(an isolated plugin's state cap\\)"):
            host.reload("bigstate", build(cc, "2"))
        assert p.bump(1) == 4 and host.current("bigstate").restarts == 0  # type: ignore[union-attr]


def test_a_char_result_over_the_body_cap_is_a_clear_error_and_the_worker_lives(
    host: Host, cc: Compile
) -> None:
    """A ``char *`` result over 64 MiB used to kill the worker as garbage; it
    is an error in that call now, naming the cap, and the worker serves on."""
    p = host.load(build(cc, "1"), isolate=True)
    p.bump(5)
    pid = host.current("bigstate").pid  # type: ignore[union-attr]
    assert len(p.text_of(60 * MIB)) == 60 * MIB  # a large reply, received in one buffer
    with pytest.raises(
        HotloadError, match=f"text_of: its char \\* result of {wire.MAX_BODY:,} bytes"
    ):
        p.text_of(wire.MAX_BODY)
    info = host.current("bigstate")
    assert info is not None and info.pid == pid and info.restarts == 0
    assert p.bump(1) == 6  # the same worker, its state intact


def test_arguments_over_the_body_cap_are_refused_before_they_are_sent(
    host: Host, cc: Compile
) -> None:
    p = host.load(build(cc, "1"), isolate=True)
    p.bump(2)
    big = bytes(wire.MAX_BODY)
    with pytest.raises(SignatureError, match="over the 64 MiB an isolated call may carry"):
        p.total(big, len(big))
    assert p.total(b"\x01\x02", 2) == 3 and p.bump(1) == 3
    assert host.current("bigstate").restarts == 0  # type: ignore[union-attr]
