"""Plugin-declared types: structs and enums with the compiler's layout.

One spec for both modes: every test that loads a plugin runs in process and
isolated (``mode``, from conftest); what cannot cross the process boundary (a
struct with a pointer field) is an explicit ``xfail``.  Tests that load
nothing (the compiler's refusals, ``hotload inspect``) have no mode.
"""

from __future__ import annotations

import pytest

from hotload import Host, Isolated, SignatureError, TypeLayoutError
from hotload._artifact.signatures import ffi

from conftest import modes

Mode = bool | Isolated

PLAYER = """
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "VERSION");
typedef struct { int64_t id; int32_t level; char name[16]; EXTRA } player_t;
HOTLOAD_STRUCT(player_t);
HOTLOAD_FIELD(player_t, id, int64_t);
HOTLOAD_FIELD(player_t, level, int32_t);
HOTLOAD_FIELD(player_t, name, char[16]);
EXTRA_FIELD
"""

TYPES = (
    PLAYER
    + """
typedef enum { QUEST_NONE = -1, QUEST_DAILY = 5 } quest_t;
HOTLOAD_ENUM(quest_t);
HOTLOAD_ENUMERATOR(quest_t, QUEST_NONE);
HOTLOAD_ENUMERATOR(quest_t, QUEST_DAILY);
typedef struct { player_t leader; int32_t scores[4]; quest_t quest; } guild_t;
HOTLOAD_STRUCT(guild_t);
HOTLOAD_FIELD(guild_t, leader, player_t);
HOTLOAD_FIELD(guild_t, scores, int32_t[4]);
HOTLOAD_FIELD(guild_t, quest, quest_t);

HOTLOAD_API int32_t level_of(const player_t *p) { return p->level; }
HOTLOAD_EXPORT(level_of, int32_t, (const player_t *));
HOTLOAD_API player_t promote(player_t p) { p.level += 1; p.name[0] = 'B'; return p; }
HOTLOAD_EXPORT(promote, player_t, (player_t));
HOTLOAD_API int64_t guild_sum(const guild_t *g)
{ return g->leader.level + g->scores[3] + g->quest; }
HOTLOAD_EXPORT(guild_sum, int64_t, (const guild_t *));
HOTLOAD_API quest_t next_quest(quest_t q) { return q == QUEST_NONE ? QUEST_DAILY : QUEST_NONE; }
HOTLOAD_EXPORT(next_quest, quest_t, (quest_t));
"""
)

# A struct with a pointer field: the pointer is the host's memory.
DEPUTY = (
    PLAYER
    + """
typedef struct { player_t leader; player_t *deputy; } band_t;
HOTLOAD_STRUCT(band_t);
HOTLOAD_FIELD(band_t, leader, player_t);
HOTLOAD_FIELD(band_t, deputy, player_t *);
HOTLOAD_API int64_t band_sum(const band_t *b) { return b->leader.level + b->deputy->id; }
HOTLOAD_EXPORT(band_sum, int64_t, (const band_t *));
"""
)


def build(cc, src: str, name: str = "typed", version: str = "1", xp: bool = False, out=None):
    """``xp=True``: player_t grows a declared ``int64_t xp`` field."""
    text = src.replace("NAME", name).replace("VERSION", version)
    text = text.replace("EXTRA_FIELD", "HOTLOAD_FIELD(player_t, xp, int64_t);" if xp else "")
    text = text.replace("EXTRA", "int64_t xp;" if xp else "")
    return cc(text, out or f"{name}_{version}")


def test_structs_by_pointer_by_value_nested_arrays_and_enums(host: Host, cc, isolate: Mode) -> None:
    p = host.load(build(cc, TYPES), isolate=isolate)
    bob = p.new("player_t", id=1, level=3, name="bob")
    assert p.level_of(bob) == 3
    promoted = p.promote(bob[0])
    assert (promoted.id, promoted.level, ffi.string(promoted.name)) == (1, 4, b"Bob")
    assert bob.level == 3  # by value: the caller's struct is untouched
    guild = p.new("guild_t", leader={"level": 5}, scores=[1, 2, 3, 4], quest=5)
    assert p.guild_sum(guild) == 5 + 4 + 5
    assert p.next_quest(-1) == 5 and p.next_quest(5) == -1  # enums are integers
    assert p.functions()["level_of"] == "int32_t(const player_t *)"  # plain names, not cffi's
    with pytest.raises(TypeLayoutError, match="player_t has no declared field xp"):
        p.new("player_t", xp=1)
    with pytest.raises(TypeLayoutError, match="no type 'nope_t'|not a struct"):
        p.new("nope_t")


@modes(
    isolated=pytest.mark.xfail(
        strict=True,
        raises=SignatureError,
        reason="cannot cross the process boundary: a pointer field holds an address in the "
        "host's memory; an isolated load refuses the export naming the field "
        "(docs/guide/isolation.md, what crosses)",
    )
)
def test_a_struct_with_a_pointer_field(host: Host, cc, isolate: Mode) -> None:
    p = host.load(build(cc, DEPUTY, name="band"), isolate=isolate)
    deputy = p.new("player_t", id=100)
    band = p.new("band_t", leader={"level": 5}, deputy=deputy)
    assert p.band_sum(band) == 5 + 100


def test_layout_cffi_cannot_reproduce_is_refused_naming_field_and_offsets(
    host: Host, cc, isolate: Mode
) -> None:
    src = """
    #include <hotload.h>
    HOTLOAD_PLUGIN("odd", "1");
    typedef struct { char c; int16_t s __attribute__((packed)); int32_t n; } odd_t;
    HOTLOAD_STRUCT(odd_t);
    HOTLOAD_FIELD(odd_t, c, char);
    HOTLOAD_FIELD(odd_t, s, int16_t);
    HOTLOAD_FIELD(odd_t, n, int32_t);
    HOTLOAD_API int32_t get(odd_t *o) { return o->n; }
    HOTLOAD_EXPORT(get, int32_t, (odd_t *));
    """
    with pytest.raises(TypeLayoutError) as err:
        host.load(cc(src, "odd"), isolate=isolate)
    msg = str(err.value)
    assert "odd.so: type odd_t, field s (int16_t): the compiler put it at offset 1" in msg
    assert "hotload's C layout at offset 2" in msg
    assert host.names() == []


def test_packed_struct_is_refused_naming_the_field(host: Host, cc, isolate: Mode) -> None:
    src = """
    #include <hotload.h>
    HOTLOAD_PLUGIN("packed", "1");
    typedef struct __attribute__((packed)) { char c; int32_t n; } packed_t;
    HOTLOAD_STRUCT(packed_t);
    HOTLOAD_FIELD(packed_t, c, char);
    HOTLOAD_FIELD(packed_t, n, int32_t);
    """
    with pytest.raises(
        TypeLayoutError, match=r"field n \(int32_t\): the compiler put it at offset 1"
    ):
        host.load(cc(src, "packed"), isolate=isolate)


def test_type_used_but_not_declared_is_refused(host: Host, cc, isolate: Mode) -> None:
    src = """
    #include <hotload.h>
    HOTLOAD_PLUGIN("undeclared", "1");
    typedef struct { int64_t id; } player_t;
    HOTLOAD_API int64_t id_of(const player_t *p) { return p->id; }
    HOTLOAD_EXPORT(id_of, int64_t, (const player_t *));
    """
    with pytest.raises(
        TypeLayoutError,
        match="id_of .* uses type player_t, which the plugin does "
        "not declare: declare it with HOTLOAD_STRUCT",
    ):
        host.load(cc(src, "undeclared"), isolate=isolate)


def test_two_plugins_with_one_type_name_and_two_layouts(host: Host, cc, isolate: Mode) -> None:
    host.load(build(cc, PLAYER, name="first"), isolate=isolate)
    host.load(build(cc, PLAYER, name="same"), isolate=isolate)  # same layout: the same type
    with pytest.raises(TypeLayoutError) as err:
        host.load(build(cc, PLAYER, name="second", xp=True), isolate=isolate)
    msg = str(err.value)
    assert "second_1.so: declares type player_t (size 40" in msg
    assert "but plugin first declares it with another layout (size 32" in msg
    assert host.names() == ["first", "same"]


def test_layout_change_between_versions_is_a_signature_change(
    host: Host, cc, isolate: Mode
) -> None:
    p = host.load(build(cc, TYPES), isolate=isolate)
    assert p.level_of(p.new("player_t", level=7)) == 7
    grown = build(cc, TYPES, version="2", xp=True)
    with pytest.raises(SignatureError, match="uses a type whose layout changed from version 1"):
        host.reload("typed", grown)
    assert p.level_of(p.new("player_t", level=8)) == 8  # v1 still serves
    host.reload("typed", grown, allow_signature_change=True)
    assert p.level_of(p.new("player_t", level=9)) == 9  # new() follows the new layout
    assert host.current("typed").plugin_version == "2"


PLAYER_CALLS = (
    PLAYER
    + """
HOTLOAD_API int32_t level_of(const player_t *p) { return p->level * SCALE; }
HOTLOAD_EXPORT(level_of, int32_t, (const player_t *));
HOTLOAD_API player_t promote(player_t p) { p.level += 1; return p; }
HOTLOAD_EXPORT(promote, player_t, (player_t));
"""
)


def test_a_struct_made_for_v1_may_be_passed_to_v2_while_the_layout_stays(
    host: Host, cc, isolate: Mode
) -> None:
    """What docs/guide/contract.md states: a struct from ``p.new()`` belongs to
    Python, not to the version that made it, and equal layouts are one type,
    so after a swap it goes to the new version, even once the old one has left
    memory; after a layout change (allowed by the reload) it is refused, and
    ``p.new()`` makes one of the new layout."""
    p = host.load(build(cc, PLAYER_CALLS.replace("SCALE", "1")), isolate=isolate)
    bob = p.new("player_t", id=1, level=7, name="bob")
    held = p.promote(bob[0])  # a struct by value, as v1 returned it
    assert p.level_of(bob) == 7
    host.reload("typed", build(cc, PLAYER_CALLS.replace("SCALE", "10"), version="2"))
    assert host.settle(10.0)
    assert [v.state for v in host.versions("typed")] == ["unloaded", "active"]  # v1 is gone
    assert p.level_of(bob) == 70  # v1's struct, v2's code
    assert p.promote(held).level == 9
    assert p.level_of(p.new("player_t", level=7)) == 70
    grown = build(cc, PLAYER_CALLS.replace("SCALE", "100"), version="3", xp=True)
    host.reload("typed", grown, allow_signature_change=True)
    with pytest.raises(SignatureError, match=r"level_of: bad arguments"):
        p.level_of(bob)
    with pytest.raises(SignatureError, match=r"promote: bad arguments"):
        p.promote(held)
    assert p.level_of(p.new("player_t", level=7, xp=5)) == 700


def test_inspect_shows_types_and_imports(cc) -> None:
    import json
    import subprocess
    import sys

    src = TYPES.replace(
        "HOTLOAD_API int32_t level_of",
        "HOTLOAD_IMPORT(note, void, (const char *));\nHOTLOAD_API int32_t level_of",
    )
    path = str(build(cc, src))
    out = subprocess.run(
        [sys.executable, "-m", "hotload", "inspect", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "(ABI 2)" in out.stdout.splitlines()[0]
    assert "  imports   void note(const char *)" in out.stdout
    assert (
        "  types     struct player_t (32 bytes, align 8): id int64_t @0, level int32_t @8, "
        "name char[16] @12"
    ) in out.stdout
    assert "enum quest_t (4 bytes, align 4): QUEST_NONE = -1, QUEST_DAILY = 5" in out.stdout
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "hotload", "inspect", "--json", path],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    assert data["imports"][0]["c"] == "void note(const char *)" and len(data["types"]) == 3


@pytest.mark.parametrize(
    "decl, words",
    [
        (
            "typedef struct { int32_t a : 3; int32_t b; } bits_t;\nHOTLOAD_STRUCT(bits_t);\n"
            "HOTLOAD_FIELD(bits_t, a, int32_t);",
            "bit-field",
        ),
        (
            "typedef struct { int32_t a; } wrong_t;\nHOTLOAD_STRUCT(wrong_t);\n"
            "HOTLOAD_FIELD(wrong_t, a, int64_t);",
            "wrong_t.a is not of type int64_t",
        ),
    ],
)
def test_fields_the_compiler_refuses(cc, decl: str, words: str) -> None:
    from hotload import BuildError

    src = f'#include <hotload.h>\nHOTLOAD_PLUGIN("bad", "1");\n{decl}\n'
    with pytest.raises(BuildError, match=words):
        cc(src, "bad_fields")


def test_an_undeclared_field_is_padding_and_fields_may_be_declared_in_any_order(
    host: Host, cc, isolate: Mode
) -> None:
    """Found by a new user: the guide said an undeclared field is padding,
    but the load was refused blaming the next field's offset."""
    src = """
    #include <hotload.h>
    HOTLOAD_PLUGIN("gappy", "1");
    typedef struct { int64_t id; int32_t level; int32_t vip; char name[16]; int64_t xp; } gp_t;
    HOTLOAD_STRUCT(gp_t);
    HOTLOAD_FIELD(gp_t, name, char[16]);
    HOTLOAD_FIELD(gp_t, id, int64_t);
    HOTLOAD_FIELD(gp_t, level, int32_t);
    HOTLOAD_API int64_t score(const gp_t *p) { return p->id * 1000 + p->level + p->name[0]; }
    HOTLOAD_EXPORT(score, int64_t, (const gp_t *));
    HOTLOAD_API gp_t make(int64_t id) { gp_t g = {id, 7, 1, "zed", 99}; return g; }
    HOTLOAD_EXPORT(make, gp_t, (int64_t));
    """
    p = host.load(cc(src, "gappy"), isolate=isolate)  # vip (middle) and xp (tail) are undeclared
    assert p.score(p.new("gp_t", id=3, level=4, name="A")) == 3000 + 4 + ord("A")
    made = p.make(5)
    assert (made.id, made.level, ffi.string(made.name)) == (5, 7, b"zed")
    with pytest.raises(TypeLayoutError, match="no declared field vip .* padding"):
        p.new("gp_t", vip=1)
    with pytest.raises(TypeLayoutError, match=r"field level=.*handle"):
        p.new("gp_t", level=object())


@modes()
def test_a_struct_by_value_from_an_initializer_has_every_unnamed_field_zero(
    host: Host, cc, isolate: Mode
) -> None:
    """Found by the wire-parity property test: cffi builds a by-value struct
    from a dict or list in call-local memory without zeroing it, so the
    fields an initializer did not name held whatever was there before (text of
    an earlier error message); isolated, the worker made them zero.  Both modes
    now give zero."""
    p = host.load(build(cc, TYPES), isolate=isolate)
    for i in range(300):
        junk = [f"{'x' * i} has no attribute {i}" for _ in range(3)]  # dirty the heap
        for init in ({"level": 4}, [7, 4], {"id": 7, "level": 4}):
            r = p.promote(init)
            ident = 7 if not isinstance(init, dict) or "id" in init else 0
            assert (r.id, r.level) == (ident, 5), (init, r.id, r.level)
            assert ffi.string(r.name) == b"B", (init, bytes(ffi.buffer(ffi.addressof(r, "name"))))
            assert bytes(ffi.buffer(ffi.addressof(r, "name")))[1:] == b"\0" * 15
        assert junk
