"""Typed state (``HOTLOAD_STATE``): the host carries a plugin's state struct
across reloads and rollbacks by field name, proves the migration on copies
first (old -> new -> old), and refuses, naming plugin, field and both types,
what no rule covers.  Real plugins, compiled here, opened with dlopen."""

from __future__ import annotations

import logging
import re
import struct
import sys
from pathlib import Path

import pytest

from hotload import (
    BuildError,
    CanaryRefusedError,
    DescriptorError,
    Host,
    ReleaseError,
    StateMigrationError,
)
from hotload._artifact.builder import compile_plugin
from hotload._artifact.descriptor import Field, StateDecl, TypeDecl
from hotload._errors import HookTimeoutError
from hotload._state import apply, plan

from conftest import Compile

Fields = list[tuple[str, str]]  # (ctype as HOTLOAD_FIELD spells it, name)


def winter(
    version: str, fields: Fields, *, init: str = "", extra: str = "", types: str = ""
) -> str:
    """A plugin keeping ``winter_state_t`` with ``fields``; for each integer
    field ``f`` it exports get_f()/set_f(v), for each 1-D integer array
    at_f(i)/put_f(i, v)."""
    members = " ".join(f"{_decl(ctype, name)};" for ctype, name in fields)
    lines = [
        "#include <hotload.h>",
        types,
        f"typedef struct {{ {members} }} winter_state_t;",
        "HOTLOAD_STRUCT(winter_state_t);",
        *(f"HOTLOAD_FIELD(winter_state_t, {n}, {c});" for c, n in fields),
        f"static winter_state_t state = {{ {init} }};",
        "HOTLOAD_STATE(winter_state_t, state);",
        f'HOTLOAD_PLUGIN("winter", "{version}");',
    ]
    for ctype, name in fields:
        if "[" in ctype and ctype.count("[") == 1 and "int" in ctype:
            lines += [
                f"HOTLOAD_API int64_t at_{name}(int32_t i) {{ return (int64_t)state.{name}[i]; }}",
                f"HOTLOAD_EXPORT(at_{name}, int64_t, (int32_t));",
                f"HOTLOAD_API void put_{name}(int32_t i, int64_t v) {{ state.{name}[i] = v; }}",
                f"HOTLOAD_EXPORT(put_{name}, void, (int32_t, int64_t));",
            ]
        elif "int" in ctype and "[" not in ctype:
            lines += [
                f"HOTLOAD_API int64_t get_{name}(void) {{ return (int64_t)state.{name}; }}",
                f"HOTLOAD_EXPORT(get_{name}, int64_t, (void));",
                f"HOTLOAD_API void set_{name}(int64_t v) {{ state.{name} = v; }}",
                f"HOTLOAD_EXPORT(set_{name}, void, (int64_t));",
            ]
    return "\n".join([*lines, extra, ""])


def _decl(ctype: str, name: str) -> str:
    base, _, dims = ctype.partition("[")
    return f"{base} {name}[{dims}" if dims else f"{ctype} {name}"


V1: Fields = [
    ("int32_t", "level"),
    ("int64_t", "coins"),
    ("uint16_t[4]", "bag"),
    ("int32_t", "old"),
]
V2: Fields = [
    ("int64_t", "level"),
    ("int64_t", "coins"),
    ("uint32_t[6]", "bag"),
    ("int32_t", "bonus"),
]


@pytest.fixture
def thost(tmp_path: Path) -> Host:
    with Host(tmp_path / "w", preflight_timeout=30) as host:
        yield host


def _play(w: object) -> None:
    w.set_level(-7)  # type: ignore[attr-defined]
    w.set_coins(1 << 40)  # type: ignore[attr-defined]
    w.put_bag(0, 65535)  # type: ignore[attr-defined]
    w.put_bag(3, 9)  # type: ignore[attr-defined]
    w.set_old(3)  # type: ignore[attr-defined]


def test_kept_fields_keep_their_value_widened_new_ones_start_at_their_default(
    thost: Host, cc: Compile, caplog: pytest.LogCaptureFixture
) -> None:
    w = thost.load(cc(winter("1.0.0", V1, init=".level = 1"), "v1"))
    _play(w)
    with caplog.at_level(logging.INFO, logger="hotload"):
        thost.reload(
            "winter",
            cc(winter("2.0.0", V2, init=".bonus = 5, .bag = {1,1,1,1,1,1}"), "v2"),
            allow_signature_change=True,
        )
    assert (w.get_level(), w.get_coins(), w.get_bonus()) == (-7, 1 << 40, 5)
    assert [w.at_bag(i) for i in range(6)] == [65535, 0, 0, 9, 1, 1]  # grown: the rest default
    assert "2.0.0 drops field(s) old" in caplog.text
    entry = thost.journal("winter")[-1]
    assert (entry.kind, entry.detail) == ("reload", "state: new bonus; dropped old")
    assert re.search(
        r"migrated 32 bytes to 2.0.0 in [\d.]+ ms \(\d step\(s\); new: bonus; "
        r"dropped: old\)",
        caplog.text,
    )


def test_rollback_migrates_down_and_a_value_that_no_longer_fits_refuses_it(
    thost: Host, cc: Compile
) -> None:
    w = thost.load(cc(winter("1.0.0", V1), "v1"))
    _play(w)
    thost.reload("winter", cc(winter("2.0.0", V2), "v2"), allow_signature_change=True)
    w.set_level(12)
    thost.rollback("winter")  # int64 -> int32 back down: checked, 12 fits
    assert (w.get_level(), w.get_coins(), w.at_bag(0), w.get_old()) == (12, 1 << 40, 65535, 0)
    thost.reload("winter", cc(winter("2.0.0", V2), "v2"), allow_signature_change=True)
    w.set_level(1 << 33)
    with pytest.raises(
        StateMigrationError,
        match=r"field level holds 8589934592, which does "
        r"not fit int32_t \(from int64_t\).*keeps serving",
    ):
        thost.rollback("winter")
    assert w.get_level() == 1 << 33 and w.get_bonus() == 0


def test_a_narrowing_is_refused_at_preflight_naming_plugin_field_and_types(
    thost: Host, cc: Compile
) -> None:
    w = thost.load(cc(winter("1.0.0", [("int64_t", "coins")]), "v1"))
    w.set_coins(40)
    bad = cc(winter("2.0.0", [("int32_t", "coins")]), "v2")
    with pytest.raises(StateMigrationError) as err:
        thost.reload("winter", bad, allow_signature_change=True)
    text = str(err.value)
    assert "v2.so: state winter_state_t of winter" in text
    assert "field coins changed from int64_t (version 1.0.0) to int32_t (version 2.0.0)" in text
    assert "a narrowing; export HOTLOAD_MIGRATE(coins, fn)" in text
    assert w.get_coins() == 40 and [v.seq for v in thost.versions("winter")] == [1]


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("int32_t", "uint32_t", "a change of sign"),
        ("int32_t", "uint64_t", "a change of sign"),
        ("double", "int64_t", "a changed type"),
        ("int32_t[4]", "int32_t[2]", "the array shrank from 4 to 2"),
        ("int32_t[4]", "int32_t[2][2]", "the array's shape changed"),
        ("char *", "char *", "a pointer cannot follow a state"),
    ],
)
def test_a_change_no_rule_covers_is_refused(
    thost: Host, cc: Compile, old: str, new: str, why: str
) -> None:
    thost.load(cc(winter("1.0.0", [(old, "x"), ("int32_t", "n")]), "v1"))
    with pytest.raises(StateMigrationError, match=f"field x changed from .*: {why}"):
        thost.reload(
            "winter",
            cc(winter("2.0.0", [(new, "x"), ("int32_t", "n")]), "v2"),
            allow_signature_change=True,
        )
    assert [v.seq for v in thost.versions("winter")] == [1]


MIGRATE = """
static int convert(int down, const void *from, size_t from_size, void *to, size_t to_size)
{
    if (down) {  /* to version 1: int64_t whole coins */
        if (from_size != sizeof(double) || to_size != sizeof(int64_t)) return 2;
        *(int64_t *)to = (int64_t)(*(const double *)from / SCALE);
    } else {
        if (from_size != sizeof(int64_t) || to_size != sizeof(double)) return 2;
        if (*(const int64_t *)from == REFUSE) return 7;
        *(double *)to = (double)*(const int64_t *)from * SCALE;
    }
    return 0;
}
HOTLOAD_MIGRATE(coins, convert);
HOTLOAD_API double coins_now(void) { return state.coins; }
HOTLOAD_EXPORT(coins_now, double, (void));
"""


def _migrating(scale: str, refuse: int = -1, lossy: bool = False) -> str:
    body = MIGRATE.replace("SCALE", scale).replace("REFUSE", str(refuse))
    if lossy:  # an odd number of coins loses one on the way up
        body = body.replace(
            "(double)*(const int64_t *)from", "(double)(*(const int64_t *)from / 2 * 2)"
        )
    return winter("2.0.0", [("double", "coins"), ("int32_t", "level")], extra=body)


def test_a_migration_function_converts_up_and_down(thost: Host, cc: Compile) -> None:
    w = thost.load(cc(winter("1.0.0", [("int64_t", "coins"), ("int32_t", "level")]), "v1"))
    w.set_coins(15)
    w.set_level(3)
    thost.reload("winter", cc(_migrating("100.0"), "v2"), allow_signature_change=True)
    assert w.coins_now() == 1500.0 and w.get_level() == 3
    thost.rollback("winter")  # the newer build's function, down=1
    assert w.get_coins() == 15 and w.get_level() == 3


def test_a_migration_runs_only_where_the_type_changed_and_only_the_newer_builds(
    thost: Host, cc: Compile
) -> None:
    """v3 keeps v2's HOTLOAD_MIGRATE(coins) (written for int64_t -> double) but
    not the change: coins is copied, never run through it; a rollback to v2
    does not use v2's function either (it converts from v1's layout)."""
    w = thost.load(cc(winter("1.0.0", [("int64_t", "coins"), ("int32_t", "level")]), "v1"))
    w.set_coins(15)
    thost.reload("winter", cc(_migrating("100.0"), "v2"), allow_signature_change=True)
    v3 = _migrating("100.0").replace('"2.0.0"', '"3.0.0"')
    thost.reload("winter", cc(v3, "v3"))
    assert w.coins_now() == 1500.0
    thost.rollback("winter")
    assert w.coins_now() == 1500.0


def test_a_migration_that_loses_a_value_is_refused_with_the_first_differing_field(
    thost: Host, cc: Compile
) -> None:
    w = thost.load(cc(winter("1.0.0", [("int64_t", "coins"), ("int32_t", "level")]), "v1"))
    w.set_coins(15)
    with pytest.raises(
        StateMigrationError,
        match=r"does not round-trip: field coins was 15, "
        r"came back as 14 \(the proof",
    ):
        thost.reload("winter", cc(_migrating("1.0", lossy=True), "v2"), allow_signature_change=True)
    assert w.get_coins() == 15 and [v.seq for v in thost.versions("winter")] == [1]


def test_a_migration_function_that_returns_an_error_refuses_the_swap(
    thost: Host, cc: Compile
) -> None:
    w = thost.load(cc(winter("1.0.0", [("int64_t", "coins"), ("int32_t", "level")]), "v1"))
    w.set_coins(66)
    with pytest.raises(
        StateMigrationError,
        match=r"HOTLOAD_MIGRATE\(coins\) of winter 2.0.0 "
        r"returned 7 \(down=0, int64_t -> double\)",
    ):
        thost.reload("winter", cc(_migrating("1.0", refuse=66), "v2"), allow_signature_change=True)
    assert w.get_coins() == 66 and [v.seq for v in thost.versions("winter")] == [1]


NESTED_V1 = (
    "typedef struct { int16_t hp; int32_t xp; } hero_t; HOTLOAD_STRUCT(hero_t); "
    "HOTLOAD_FIELD(hero_t, hp, int16_t); HOTLOAD_FIELD(hero_t, xp, int32_t);"
)
NESTED_V2 = (
    "typedef struct { int64_t xp; int32_t hp; int8_t mood; } hero_t; "
    "HOTLOAD_STRUCT(hero_t); HOTLOAD_FIELD(hero_t, xp, int64_t); "
    "HOTLOAD_FIELD(hero_t, hp, int32_t); HOTLOAD_FIELD(hero_t, mood, int8_t);"
)
HEROES = """
HOTLOAD_API int64_t hero(int32_t i, int32_t which) {
    return which ? (int64_t)state.party[i].xp : (int64_t)state.party[i].hp; }
HOTLOAD_EXPORT(hero, int64_t, (int32_t, int32_t));
HOTLOAD_API void set_hero(int32_t i, int64_t hp, int64_t xp) {
    state.party[i].hp = hp; state.party[i].xp = xp; }
HOTLOAD_EXPORT(set_hero, void, (int32_t, int64_t, int64_t));
HOTLOAD_API int64_t leader_xp(void) { return state.leader.xp; }
HOTLOAD_EXPORT(leader_xp, int64_t, (void));
"""


def test_nested_structs_and_arrays_of_structs_follow_by_field_name(
    thost: Host, cc: Compile
) -> None:
    fields: Fields = [("hero_t", "leader"), ("hero_t[3]", "party"), ("int32_t", "day")]
    w = thost.load(cc(winter("1.0.0", fields, types=NESTED_V1, extra=HEROES), "v1"))
    for i in range(3):
        w.set_hero(i, -100 - i, 1000 * i + 1)
    w.set_day(4)
    thost.reload(
        "winter",
        cc(winter("2.0.0", fields, types=NESTED_V2, extra=HEROES), "v2"),
        allow_signature_change=True,
    )
    assert [(w.hero(i, 0), w.hero(i, 1)) for i in range(3)] == [
        (-100, 1),
        (-101, 1001),
        (-102, 2001),
    ]
    assert w.get_day() == 4 and w.leader_xp() == 0


PATHS = [pytest.param(None, id="memoryview")] + (
    [pytest.param(apply.NATIVE, id="compiled")] if apply.NATIVE is not None else []
)


@pytest.mark.parametrize("native", PATHS)
def test_typed_state_plans_are_bulk_copies(native: object) -> None:
    """An unchanged 1 MB array is one copy; a widened array is strided lane
    copies, sign-extended; a checked narrowing names the first element that
    does not fit."""
    n = 1 << 18
    old = (TypeDecl("struct", "s_t", 4 * n, 4, (Field("v", f"int32_t[{n}]", 0, 4 * n),)),)
    new = (TypeDecl("struct", "s_t", 8 * n, 8, (Field("v", f"int64_t[{n}]", 0, 8 * n),)),)
    so, sn = (
        StateDecl("s_t", "hotload_state", 4 * n, 4),
        StateDecl("s_t", "hotload_state", 8 * n, 8),
    )
    same = plan.make(so, old, so, old, narrow=False, versions=("1", "1"))
    assert [(s.kind, s.swidth) for s in same.steps] == [("copy", 4 * n)]
    up = plan.make(so, old, sn, new, narrow=False, versions=("1", "2"))
    values = [(-1) ** i * i * 1000 for i in range(n)]
    src = bytearray(struct.pack(f"<{n}i", *values))
    dst = bytearray(8 * n)
    apply.run(up, memoryview(src), memoryview(dst), lambda *a: None, native)
    assert list(struct.unpack(f"<{n}q", dst)) == values
    down = plan.make(sn, new, so, old, narrow=True, versions=("2", "1"))
    struct.pack_into("<q", dst, 8 * 77, -(1 << 31) - 1)
    with pytest.raises(StateMigrationError, match=r"field v\[77\] holds -2147483649"):
        apply.run(down, memoryview(dst), memoryview(bytearray(4 * n)), lambda *a: None, native)


def test_a_state_over_max_state_size_is_refused(tmp_path: Path, cc: Compile) -> None:
    big: Fields = [("uint8_t[2097152]", "cells"), ("int32_t", "n")]
    with Host(tmp_path / "w", max_state_size=1 << 20) as host:
        w = host.load(cc(winter("1.0.0", big), "v1"))
        w.set_n(5)
        with pytest.raises(
            StateMigrationError,
            match=r"2097156 bytes, over the 1048576-byte "
            r"limit \(Host\(max_state_size=...\)\)",
        ):
            host.reload("winter", cc(winter("2.0.0", big), "v2"))
        assert w.get_n() == 5


HAND_MADE = """
#include <hotload.h>
typedef struct { int64_t coins; } winter_state_t;
HOTLOAD_STRUCT(winter_state_t);
HOTLOAD_FIELD(winter_state_t, coins, int64_t);
static winter_state_t state;
HOTLOAD_PLUGIN("winter", "1.0.0");
HOTLOAD_API int64_t get(void) { return state.coins; }
HOTLOAD_EXPORT(get, int64_t, (void));
"""


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            'HOTLOAD__RECORD_N(hotload__state, HOTLOAD__REC4("state") "winter_state_t\\x1f"'
            ' "hotload_state", 4, 8);',
            r"HOTLOAD_STATE\(winter_state_t, ...\) says size 4, alignment 8, but winter_state_t"
            r" is declared with size 8, alignment 8",
        ),
        (
            'HOTLOAD__RECORD_N(hotload__state, HOTLOAD__REC4("state") "nobody_t\\x1f"'
            ' "hotload_state", 8, 8);',
            r"nobody_t is not a struct declared with HOTLOAD_STRUCT",
        ),
        (
            'HOTLOAD__RECORD(hotload__state, HOTLOAD__REC4("state") "winter_state_t\\x1f"'
            ' "hotload_state");',
            r"unknown descriptor record",
        ),
        (
            "HOTLOAD_STATE(winter_state_t, state);"
            'HOTLOAD__RECORD(hotload__m, HOTLOAD__REC4("migrate") "gold\\x1f"'
            ' "hotload__migrate_gold");',
            r"HOTLOAD_MIGRATE\(gold, ...\): winter_state_t declares no field gold",
        ),
        (
            'HOTLOAD__RECORD(hotload__m, HOTLOAD__REC4("migrate") "coins\\x1f" "x");',
            r"HOTLOAD_MIGRATE\(coins, ...\) without HOTLOAD_STATE",
        ),
    ],
)
def test_a_garbled_state_record_is_refused_before_any_code_runs(
    thost: Host, cc: Compile, records: str, message: str
) -> None:
    path = cc(HAND_MADE + records + "\n", "bad")
    with pytest.raises(DescriptorError, match=message):
        thost.load(path)


def test_a_state_pointer_that_is_null_refuses_the_swap(thost: Host, cc: Compile) -> None:
    good = HAND_MADE + "HOTLOAD_STATE(winter_state_t, state);\n"
    null = HAND_MADE + (
        "HOTLOAD_API void *const hotload_state = 0;\n"
        'HOTLOAD__RECORD_N(hotload__state, HOTLOAD__REC4("state") "winter_state_t\\x1f"'
        ' "hotload_state", 8, 8);\n'
    )
    thost.load(cc(null, "null"))
    with pytest.raises(
        StateMigrationError, match=r"its hotload_state is 0x0: not a winter_state_t"
    ):
        thost.reload(
            "winter", cc(good.replace('"1.0.0"', '"2.0.0"'), "good"), allow_signature_change=True
        )


def test_inspect_shows_the_state_and_its_migrations(cc: Compile) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "hotload", "inspect", str(cc(_migrating("1.0"), "v2"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "(ABI 4)" in out
    assert "  state     winter_state_t (16 bytes, HOTLOAD_STATE); migrates coins" in out


LYING = """
#include <hotload.h>
typedef struct { int64_t coins; } winter_state_t;
HOTLOAD__RECORD_N(hotload__struct_winter_state_t, HOTLOAD__REC2("struct") "winter_state_t",
                  60000000, 8);
HOTLOAD_FIELD(winter_state_t, coins, int64_t);
static winter_state_t state;
HOTLOAD_API void *const hotload_state = &state;
HOTLOAD__RECORD_N(hotload__state, HOTLOAD__REC4("state") "winter_state_t\\x1f" "hotload_state",
                  60000000, 8);
HOTLOAD_PLUGIN("winter", "1.0.0");
HOTLOAD_API int64_t get(void) { return state.coins; }
HOTLOAD_EXPORT(get, int64_t, (void));
"""


def test_a_state_record_bigger_than_its_variable_refuses_the_swap(thost: Host, cc: Compile) -> None:
    """A hand-made record (the macro cannot lie) declares 60 MB over an 8-byte
    variable: the proof copies it through the kernel and refuses, no fault."""
    w = thost.load(cc(LYING, "lying"))
    good = HAND_MADE.replace('"1.0.0"', '"2.0.0"') + "HOTLOAD_STATE(winter_state_t, state);\n"
    with pytest.raises(
        StateMigrationError,
        match=r"1.0.0's state at 0x[0-9a-f]+ \(60000000 "
        r"bytes\) cannot be read \(Bad address",
    ):
        thost.reload("winter", cc(good, "good"), allow_signature_change=True)
    assert w.get() == 0 and [v.seq for v in thost.versions("winter")] == [1]


READ_ONLY = """
#include <hotload.h>
typedef struct { int64_t coins; } winter_state_t;
HOTLOAD_STRUCT(winter_state_t);
HOTLOAD_FIELD(winter_state_t, coins, int64_t);
static const winter_state_t state = { 7 };
HOTLOAD_API void *const hotload_state = (void *)&state;
HOTLOAD__RECORD_N(hotload__state, HOTLOAD__REC4("state") "winter_state_t\\x1f" "hotload_state",
                  sizeof(winter_state_t), 8);
HOTLOAD_PLUGIN("winter", "VER");
HOTLOAD_API int64_t get(void) { return state.coins; }
HOTLOAD_EXPORT(get, int64_t, (void));
"""


@pytest.mark.parametrize("preflight", [False, True])
def test_a_state_variable_in_read_only_memory_refuses_the_swap(
    tmp_path: Path, cc: Compile, preflight: bool
) -> None:
    """A hand-made record names a const variable (.rodata): writing the new
    state there was the host's SIGSEGV; the proof writes it back through the
    kernel first, and refuses, naming the cause."""
    with Host(tmp_path / "w", preflight=preflight) as host:
        w = host.load(cc(READ_ONLY.replace("VER", "1.0.0"), "ro1"))
        with pytest.raises(StateMigrationError, match=r"cannot be written .*read-only memory"):
            host.reload("winter", cc(READ_ONLY.replace("VER", "2.0.0"), "ro2"))
        assert w.get() == 7 and [v.seq for v in host.versions("winter")] == [1]


def test_a_release_carries_typed_state_and_a_canary_is_refused(thost: Host, cc: Compile) -> None:
    w = thost.load(cc(winter("1.0.0", V1), "v1"))
    _play(w)
    thost.reload_together(
        {"winter": cc(winter("2.0.0", V2, init=".bonus = 2"), "v2")}, allow_signature_change=True
    )
    assert (w.get_level(), w.get_coins(), w.get_bonus()) == (-7, 1 << 40, 2)
    w.set_level(5)
    thost.rollback_together()  # down: level int64_t -> int32_t, checked (5 fits)
    assert (w.get_level(), w.get_coins(), w.get_old()) == (5, 1 << 40, 0)
    thost.reload_together({"winter": cc(winter("2.0.0", V2), "v2")}, allow_signature_change=True)
    with pytest.raises(CanaryRefusedError, match=r"hands state over"):
        thost.canary("winter", cc(winter("3.0.0", V2), "v3"), share=0.5, key=0)


def test_a_migration_function_that_never_returns_refuses_the_swap(
    tmp_path: Path, cc: Compile
) -> None:
    """Bounded by hook_timeout: the swap is refused, the old version serves
    on; the stuck build stays loaded (a thread is still inside it)."""
    hang = _migrating("1.0").replace("    return 0;\n}", "    for (;;) sleep(1);\n}")
    hang = "#include <unistd.h>\n" + hang
    with Host(tmp_path / "w", hook_timeout=0.5, preflight_timeout=30) as host:
        w = host.load(cc(winter("1.0.0", [("int64_t", "coins"), ("int32_t", "level")]), "v1"))
        w.set_coins(9)
        with pytest.raises(
            HookTimeoutError,
            match=r"HOTLOAD_MIGRATE of winter 2.0.0 did not "
            r"return within 0.5 s",
        ):
            host.reload("winter", cc(hang, "v2"), allow_signature_change=True)
        assert w.get_coins() == 9 and [v.seq for v in host.versions("winter")] == [1]


def test_a_const_state_does_not_compile(tmp_path: Path) -> None:
    """The host writes the state at a swap: a const one (in read-only memory)
    is a compile error naming it."""
    src = tmp_path / "const.c"
    src.write_text(
        HAND_MADE.replace("static winter_state_t", "static const winter_state_t")
        + "HOTLOAD_STATE(winter_state_t, state);\n"
    )
    with pytest.raises(BuildError, match=r"state is not a \(non-const\) variable of type"):
        compile_plugin(src, tmp_path / "const.so")


MIXED = """
typedef enum { QUEST_NONE, QUEST_DAILY = 5 } quest_t;
HOTLOAD_ENUM(quest_t);
HOTLOAD_ENUMERATOR(quest_t, QUEST_NONE);
HOTLOAD_ENUMERATOR(quest_t, QUEST_DAILY);
"""
PEEK = """
#include <string.h>
HOTLOAD_API int64_t peek(int32_t what) {
    switch (what) {
    case 0: return state.quest;
    case 1: return state.grid[1][2];
    case 2: return (int64_t)strlen(state.name);
    case 3: return (int64_t)(state.speed * 4);
    default: return state.on;
    } }
HOTLOAD_EXPORT(peek, int64_t, (int32_t));
HOTLOAD_API void poke(void) {
    state.quest = QUEST_DAILY; state.grid[1][2] = -9; strcpy(state.name, "frost");
    state.speed = 2.25f; state.on = 1; }
HOTLOAD_EXPORT(poke, void, (void));
"""


def test_enums_2d_arrays_strings_floats_and_bools_are_copied(thost: Host, cc: Compile) -> None:
    v1: Fields = [
        ("quest_t", "quest"),
        ("int16_t[2][3]", "grid"),
        ("char[16]", "name"),
        ("float", "speed"),
        ("bool", "on"),
    ]
    v2: Fields = [
        ("quest_t", "quest"),
        ("int16_t[4][3]", "grid"),
        ("char[32]", "name"),
        ("float", "speed"),
        ("bool", "on"),
    ]
    head = "#include <stdbool.h>\n" + MIXED
    w = thost.load(cc(winter("1.0.0", v1, types=head, extra=PEEK), "v1"))
    w.poke()
    thost.reload("winter", cc(winter("2.0.0", v2, types=head, extra=PEEK), "v2"))
    assert [w.peek(i) for i in range(5)] == [5, -9, 5, 9, 1]


INTS = [f"{u}int{b}_t" for u in ("", "u") for b in (8, 16, 32, 64)]


@pytest.mark.parametrize("native", PATHS)
def test_every_integer_pair_widens_and_narrows_value_by_value(native: object) -> None:
    """Each pair of integer types, in an array of 3-field structs (strided):
    the values that fit come through as Python ints would say, the first that
    does not names its element; both paths (compiled, memoryview) agree."""
    import random

    rng = random.Random(23)
    n = 257
    for a in INTS:
        for b in INTS:
            (aw, asg), (bw, bsg) = plan.integer(a), plan.integer(b)  # type: ignore[misc]
            alo, ahi = (
                (-(1 << (8 * aw - 1)), (1 << (8 * aw - 1)) - 1) if asg else (0, (1 << 8 * aw) - 1)
            )
            blo, bhi = (
                (-(1 << (8 * bw - 1)), (1 << (8 * bw - 1)) - 1) if bsg else (0, (1 << 8 * bw) - 1)
            )
            lo, hi = max(alo, blo), min(ahi, bhi)
            if lo > hi:
                continue
            values = [rng.choice((lo, hi, 0, rng.randint(lo, hi))) for _ in range(n)]
            ostride, nstride = 8 + aw * 2, 8 + bw * 2
            old = (
                TypeDecl("struct", "e_t", ostride, 1, (Field("v", a, 8, aw),)),
                TypeDecl(
                    "struct", "s_t", ostride * n, 1, (Field("e", f"e_t[{n}]", 0, ostride * n),)
                ),
            )
            new = (
                TypeDecl("struct", "e_t", nstride, 1, (Field("v", b, 8, bw),)),
                TypeDecl(
                    "struct", "s_t", nstride * n, 1, (Field("e", f"e_t[{n}]", 0, nstride * n),)
                ),
            )
            so = StateDecl("s_t", "hotload_state", ostride * n, 1)
            sn = StateDecl("s_t", "hotload_state", nstride * n, 1)
            how = plan.make(so, old, sn, new, narrow=True, versions=("1", "2"))
            src = bytearray(ostride * n)
            for i, v in enumerate(values):
                src[i * ostride + 8 : i * ostride + 8 + aw] = v.to_bytes(
                    aw, sys.byteorder, signed=asg
                )
            dst = bytearray(nstride * n)
            apply.run(how, memoryview(src), memoryview(dst), lambda *x: None, native)
            got = [
                int.from_bytes(
                    dst[i * nstride + 8 : i * nstride + 8 + bw], sys.byteorder, signed=bsg
                )
                for i in range(n)
            ]
            assert got == values, (a, b)
            out = alo if alo < blo else (ahi if ahi > bhi else None)
            if out is not None:  # one value b cannot hold, at element 100
                src[100 * ostride + 8 : 100 * ostride + 8 + aw] = out.to_bytes(
                    aw, sys.byteorder, signed=asg
                )
                with pytest.raises(
                    StateMigrationError,
                    match=rf"field e\[100\]\.v holds {out}, which "
                    rf"does not fit {b} \(from {a}\)",
                ):
                    apply.run(how, memoryview(src), memoryview(dst), lambda *x: None, native)


def test_a_release_back_to_a_build_it_ran_before_migrates_down(thost: Host, cc: Compile) -> None:
    """The fleet's way to take a release back is a release of the builds
    before it: a build the plugin ran before (in its rollback chain) is a
    downgrade, its narrowing checked value by value, not refused."""
    v1 = cc(winter("1.0.0", V1), "v1")
    w = thost.load(v1)
    _play(w)
    first = thost.current("winter").digest
    thost.reload_together({"winter": cc(winter("2.0.0", V2), "v2")}, allow_signature_change=True)
    w.set_level(12)
    back = thost.kept("winter", first)
    assert back is not None
    thost.reload_together({"winter": back}, allow_signature_change=True)
    assert (w.get_level(), w.get_coins(), w.at_bag(0)) == (12, 1 << 40, 65535)
    with pytest.raises(ReleaseError, match="a narrowing"):  # a new build: still refused
        thost.reload_together(
            {"winter": cc(winter("3.0.0", [("int16_t", "level")]), "v3")},
            allow_signature_change=True,
        )
    thost.reload_together({"winter": cc(winter("2.0.0", V2), "v2")}, allow_signature_change=True)
    w.set_level(1 << 33)
    with pytest.raises(ReleaseError, match="does not fit int32_t"):  # the value decides
        thost.reload_together({"winter": thost.kept("winter", first)}, allow_signature_change=True)
    assert w.get_level() == 1 << 33
