"""One call, every path: in process, and isolated through each wire encoding and both channels.

A property test (hypothesis) over a real compiled plugin whose exports cover
what crosses the process boundary: integers of every width and sign, float
and double, ``_Bool``, ``char``, ``const char *`` in, a ``char *`` result, a
struct by value, a struct pointer (const and copied back), a buffer with its
``size_t`` length (const and copied back), and ``void``.  Each generated call
(edge values included: 0, -1, min, max, one past them, NaN, infinities, -0.0,
empty and long strings, NULL) goes through every path, and every path must
give the same outcome: the same result, the same bytes left in the caller's
buffers and structs, or the same exception type:

- ``in_process``: the plugin loaded in this process, through its router;
- ``shm``: the plugin isolated, in a real worker, on the shared-memory
  channel (bodies larger than ``wire.SHM_CAP`` travel on its socket);
- ``socket``: the plugin isolated in a worker started with
  ``HOTLOAD_ISOLATE_CHANNEL=socket``, where every call uses the socket;
- ``wire/simple``, ``wire/fixed``, ``wire/general``: the wire's three
  encodings of a call (``wire.CallPlan``: scalars only; numbers and plain
  structs as one fixed struct; the general one with length-prefixed strings
  and buffers), each run both ways in this process (``encode``, the callee's
  ``serve`` around the very function the worker would call, ``decode``),
  every encoding that can carry the prototype, not only the one ``plan()``
  picks for it.  A bad argument raises ``TypeError``/``OverflowError`` there,
  which the router reports as ``SignatureError``: compared as such.

The argument kinds the two modes used to treat differently (a ``str``,
``None`` or ``bytearray`` for a ``const char *``, a NUL in one, a ``_Bool`` of
2, a float beyond ``FLT_MAX``, a buffer object for a ``T *``, a list the
callee writes, a struct value for a struct pointer, a bad initializer) follow
one rule now (issue 19 item 10, ``hotload._artifact.arguments``): the
generators draw them, and ``test_one_rule_in_both_modes`` pins what the rule
says for each.  A length past the end of a list or a cffi array is not
compared: in process it is a read past the buffer (C's own contract),
isolated a ``SignatureError`` (``tests/test_wire.py``); past a buffer object
it is refused in both.

The hosts and plugins are built once for the module (``preflight=False``):
three hosts, two worker processes.  The generated calls are the same on every
run (``derandomize``); ``HOTLOAD_PARITY_EXAMPLES=N`` draws N per export
(default 40).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import reprlib
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotload import Host, SignatureError
from hotload._artifact import loader
from hotload._artifact.builder import compile_plugin
from hotload._artifact.signatures import ffi
from hotload._process import wire

SOURCE = r"""
#include <hotload.h>
#include <string.h>

HOTLOAD_PLUGIN("parity", "1.0.0");

typedef struct { int8_t a; int64_t b; double c; uint16_t d[3]; char tag[5]; } rec_t;
HOTLOAD_STRUCT(rec_t);
HOTLOAD_FIELD(rec_t, a, int8_t);
HOTLOAD_FIELD(rec_t, b, int64_t);
HOTLOAD_FIELD(rec_t, c, double);
HOTLOAD_FIELD(rec_t, d, uint16_t[3]);
HOTLOAD_FIELD(rec_t, tag, char[5]);

/* integers of every width and sign; the order of the arguments matters */
#define MIX(T, N) \
    HOTLOAD_API T N##_mix(T a, T b) { return (T)((uint64_t)a * 31u + (uint64_t)b); } \
    HOTLOAD_EXPORT(N##_mix, T, (T, T))
MIX(int8_t, i8);
MIX(uint8_t, u8);
MIX(int16_t, i16);
MIX(uint16_t, u16);
MIX(int32_t, i32);
MIX(uint32_t, u32);
MIX(int64_t, i64);
MIX(uint64_t, u64);

HOTLOAD_API int64_t all_ints(int8_t a, uint8_t b, int16_t c, uint16_t d, int32_t e, uint32_t f,
                             int64_t g, uint64_t h)
{
    return (int64_t)((uint64_t)a + 3u * b + 5u * (uint64_t)c + 7u * d + 11u * (uint64_t)e
                     + 13u * (uint64_t)f + 17u * (uint64_t)g + 19u * h);
}
HOTLOAD_EXPORT(all_ints, int64_t,
               (int8_t, uint8_t, int16_t, uint16_t, int32_t, uint32_t, int64_t, uint64_t));

HOTLOAD_API float f32_mix(float a, float b) { return a * 2.0f - b; }
HOTLOAD_EXPORT(f32_mix, float, (float, float));
HOTLOAD_API double f64_mix(double a, float b) { return a / 3.0 + (double)b; }
HOTLOAD_EXPORT(f64_mix, double, (double, float));
HOTLOAD_API _Bool flip(_Bool a, int32_t b) { return a ^ (b & 1); }
HOTLOAD_EXPORT(flip, _Bool, (_Bool, int32_t));
HOTLOAD_API char next_char(char c) { return (char)(c + 1); }
HOTLOAD_EXPORT(next_char, char, (char));

static int64_t sunk;
HOTLOAD_API void sink(int64_t x) { sunk = x; }
HOTLOAD_EXPORT(sink, void, (int64_t));
HOTLOAD_API int64_t last_sunk(void) { return sunk; }
HOTLOAD_EXPORT(last_sunk, int64_t, (void));
HOTLOAD_API void nop(void) {}
HOTLOAD_EXPORT(nop, void, (void));

HOTLOAD_API int64_t str_len(const char *s) { return s ? (int64_t)strlen(s) : -1; }
HOTLOAD_EXPORT(str_len, int64_t, (const char *));
HOTLOAD_API uint64_t str_hash(const char *s, int32_t k)
{
    uint64_t h = 1469598103934665603u ^ (uint64_t)k;
    if (!s) return 0;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}
HOTLOAD_EXPORT(str_hash, uint64_t, (const char *, int32_t));
HOTLOAD_API const char *str_echo(const char *s) { return s; }
HOTLOAD_EXPORT(str_echo, const char *, (const char *));
static char words[3][8] = {"", "one", "three"};
HOTLOAD_API char *word(int32_t i) { return i >= 0 && i < 3 ? words[i] : NULL; }
HOTLOAD_EXPORT(word, char *, (int32_t));
static char big[200001];
/* a small request, a reply larger than the shared memory */
HOTLOAD_API const char *big_word(int32_t n)
{
    if (n < 0 || n > 200000) return NULL;
    memset(big, 'x', (size_t)n);
    big[n] = 0;
    return big;
}
HOTLOAD_EXPORT(big_word, const char *, (int32_t));

HOTLOAD_API rec_t rec_twist(rec_t r, int32_t k)
{
    r.a = (int8_t)((uint32_t)r.a + (uint32_t)k);
    r.b ^= k;
    r.c = r.c * k + 0.5;
    r.d[(uint32_t)k % 3] += 7;
    r.tag[0] = 'T';
    return r;
}
HOTLOAD_EXPORT(rec_twist, rec_t, (rec_t, int32_t));
HOTLOAD_API int64_t rec_bump(rec_t *r, int32_t k)
{
    if (!r) return -1;
    r->b = (int64_t)((uint64_t)r->b + (uint64_t)(int64_t)k);
    r->a = (int8_t)~r->a;
    r->c = -r->c;
    r->d[2] = (uint16_t)k;
    memcpy(r->tag, "bump", 4);
    return r->b;
}
HOTLOAD_EXPORT(rec_bump, int64_t, (rec_t *, int32_t));
HOTLOAD_API double rec_sum(const rec_t *r)
{
    if (!r) return -1.0;
    return r->a + (double)r->b + r->c + r->d[0] + r->d[1] + r->d[2] + r->tag[0];
}
HOTLOAD_EXPORT(rec_sum, double, (const rec_t *));
HOTLOAD_API int64_t rec_label(const rec_t *r, const char *s)
{
    return (int64_t)((uint64_t)(r ? r->b : -1) * 1000u + (uint64_t)(s ? strlen(s) : 7));
}
HOTLOAD_EXPORT(rec_label, int64_t, (const rec_t *, const char *));
HOTLOAD_API rec_t rec_from(const int32_t *xs, size_t n)
{
    rec_t r;
    memset(&r, 0, sizeof r);
    r.b = (int64_t)n;
    for (size_t i = 0; i < n; i++) { r.c += xs[i]; r.d[i % 3] ^= (uint16_t)xs[i]; }
    if (n) r.a = (int8_t)xs[0];
    memcpy(r.tag, "from", 5);
    return r;
}
HOTLOAD_EXPORT(rec_from, rec_t, (const int32_t *, size_t));

HOTLOAD_API int64_t i32_sum(const int32_t *xs, size_t n)
{
    int64_t t = 0;
    for (size_t i = 0; i < n; i++) t += xs[i] * (int64_t)(i + 1);
    return t;
}
HOTLOAD_EXPORT(i32_sum, int64_t, (const int32_t *, size_t));
HOTLOAD_API void u8_fill(uint8_t *xs, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++) xs[i] = (uint8_t)(v + i);
}
HOTLOAD_EXPORT(u8_fill, void, (uint8_t *, size_t, uint8_t));
HOTLOAD_API double f64_scale(double *xs, size_t n, double k)
{
    double t = 0;
    for (size_t i = 0; i < n; i++) { xs[i] *= k; t += xs[i]; }
    return t;
}
HOTLOAD_EXPORT(f64_scale, double, (double *, size_t, double));
HOTLOAD_API int16_t i16_rev(int16_t *xs, size_t n)
{
    for (size_t i = 0; i < n / 2; i++) {
        int16_t t = xs[i];
        xs[i] = xs[n - 1 - i];
        xs[n - 1 - i] = t;
    }
    return n ? xs[0] : -1;
}
HOTLOAD_EXPORT(i16_rev, int16_t, (int16_t *, size_t));
HOTLOAD_API void char_up(char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) if (s[i] >= 'a' && s[i] <= 'z') s[i] = (char)(s[i] - 32);
}
HOTLOAD_EXPORT(char_up, void, (char *, size_t));
"""

#: the encoding ``wire.plan`` picks for each export (the worker picks the same)
ENCODING = {
    **{f"{n}_mix": "simple" for n in ("i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64")},
    **dict.fromkeys(
        ("all_ints", "f32_mix", "f64_mix", "flip", "next_char", "sink", "last_sunk", "nop"),
        "simple",
    ),
    **dict.fromkeys(("rec_twist", "rec_bump", "rec_sum"), "fixed"),
    **dict.fromkeys(
        ("str_len", "str_hash", "str_echo", "word", "big_word", "rec_label", "rec_from"),
        "general",
    ),
    **dict.fromkeys(("i32_sum", "u8_fill", "f64_scale", "i16_rev", "char_up"), "general"),
}
#: after a call of the key, each path also reads this export of its own plugin (its state)
AFTER = {"sink": "last_sunk"}

INTS = {
    "int8_t": (-(2**7), 2**7 - 1),
    "uint8_t": (0, 2**8 - 1),
    "int16_t": (-(2**15), 2**15 - 1),
    "uint16_t": (0, 2**16 - 1),
    "int32_t": (-(2**31), 2**31 - 1),
    "uint32_t": (0, 2**32 - 1),
    "int64_t": (-(2**63), 2**63 - 1),
    "uint64_t": (0, 2**64 - 1),
}
MIX_TYPES = dict(zip(("i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64"), INTS, strict=True))
FLT_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
CAP = wire.SHM_CAP
#: sizes around the shared memory's capacity, in bytes
LARGE = (CAP - 64, CAP, CAP + 1, 3 * CAP)


# ---- arguments: pure descriptions, made into fresh values for each path -------------------


@dataclass(frozen=True)
class Arr:
    """A cffi array of ``ctype``: the caller's own buffer (written back unless const)."""

    ctype: str
    items: tuple[Any, ...]

    def make(self, ctx: Ctx) -> Any:
        return ffi.new(f"{self.ctype}[]", list(self.items))

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self.items[:4]))
        return (
            f"Arr({self.ctype}[{len(self.items)}]: {head}{', ...' if len(self.items) > 4 else ''})"
        )


@dataclass(frozen=True)
class Seq:
    """A list or a tuple of numbers (a fresh list per path: an isolated call
    may write into it)."""

    kind: str  # "list" or "tuple"
    items: tuple[Any, ...]

    def make(self, ctx: Ctx) -> Any:
        return list(self.items) if self.kind == "list" else self.items

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self.items[:4]))
        return f"{self.kind}[{len(self.items)}]({head}{', ...' if len(self.items) > 4 else ''})"


@dataclass(frozen=True)
class Fresh:
    """A buffer object (``bytes``, ``bytearray``, ``memoryview``, or an
    ``array`` of a typecode), made anew for each path: the callee may write
    into it."""

    kind: str  # "bytes", "bytearray", "memoryview", "memoryview-rw" or an array typecode
    items: tuple[Any, ...]

    def make(self, ctx: Ctx) -> Any:
        if self.kind in ("bytes", "bytearray", "memoryview", "memoryview-rw"):
            data = bytes(self.items)
            if self.kind == "memoryview-rw":
                return memoryview(bytearray(data))
            return {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(data)}[
                self.kind
            ]
        return array(self.kind, self.items)

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self.items[:4]))
        return f"{self.kind}[{len(self.items)}]({head}{', ...' if len(self.items) > 4 else ''})"


@dataclass(frozen=True)
class Rec:
    """A ``rec_t`` argument in one of the forms a caller may pass:
    ``ptr`` (``p.new``), ``value`` (``ptr[0]``), ``dict`` / ``list`` (an
    initializer), ``one`` (a list holding one initializer: a temporary array),
    ``pair`` (a ``rec_t[2]``), ``null``.  A field ``rec_t`` does not have is
    an unknown key (``dict``) or an initializer too many (``list``)."""

    form: str
    fields: tuple[tuple[str, Any], ...] = ()

    def make(self, ctx: Ctx) -> Any:
        init = dict(self.fields)
        if self.form == "null":
            return ffi.NULL
        if self.form == "dict":
            return init
        if self.form == "list":  # every field in order, hotload's padding fields included
            names = [f for f, _ in ffi.typeof(ctx.rec).fields]
            extra = [v for f, v in self.fields if f not in names]  # one too many
            return [init.get(f, ZERO.get(f, b"")) for f in names] + extra
        if self.form == "one":
            return [init]
        if self.form == "pair":
            return ffi.new(f"{ctx.rec}[2]", [init, init])
        ptr = ffi.new(f"{ctx.rec} *", init)
        if self.form == "value":
            ctx.keep.append(ptr)  # the value lives in ptr's memory
            return ptr[0]
        return ptr


ZERO = {"a": 0, "b": 0, "c": 0.0, "d": [], "tag": b""}  # rec_t's fields; padding: b""


@dataclass
class Ctx:
    rec: str  # rec_t's cffi name
    keep: list[Any] = dataclasses.field(default_factory=list)


def make(desc: Any, ctx: Ctx) -> Any:
    return desc.make(ctx) if hasattr(desc, "make") else desc


# ---- outcomes: what a call left, comparable across paths ---------------------------------


def _fields(value: Any) -> tuple[Any, ...]:
    """A struct's declared fields as bytes (not the padding, which hotload
    declares to cffi as ``hotload__*`` fields: no one's business, and C need
    not copy it)."""
    t = ffi.typeof(value)
    return tuple(
        (name, bytes(ffi.buffer(ffi.addressof(value, name))))
        for name, _ in t.fields or ()
        if not name.startswith("hotload__")
    )


def norm(value: Any) -> Any:
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(value))  # -0.0 is not 0.0
    if isinstance(value, ffi.CData):
        t = ffi.typeof(value)
        if t.kind == "struct":
            return ("struct", _fields(value))
        if t.kind == "pointer" and t.item.kind == "struct":
            return ("ptr", None) if value == ffi.NULL else ("ptr", _fields(value[0]))
        if t.kind == "array" and t.item.kind == "struct":
            return ("array", tuple(_fields(value[i]) for i in range(len(value))))
        if t.kind == "array":
            return ("array", bytes(ffi.buffer(value)))
        if value == ffi.NULL:
            return ("NULL",)
        return ("cdata", t.cname)
    if isinstance(value, (list, tuple)):
        if all(type(v) is int or type(v) is bytes for v in value):  # the common, long case
            return (type(value).__name__, tuple(value))
        return (type(value).__name__, tuple(norm(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, norm(v)) for k, v in value.items())))
    return (type(value).__name__, value)


Call = Callable[..., Any]


def outcome(call: Call, args: tuple[Any, ...], after: Call | None) -> tuple[Any, ...]:
    """The result (or the exception's type), the caller's arguments after the
    call (what was copied back), and the plugin's state read by ``after``."""
    try:
        result = call(*args)
    except Exception as exc:  # noqa: BLE001 - compared across paths
        return ("raised", type(exc).__name__, tuple(norm(a) for a in args))
    state = norm(after()) if after is not None else None
    return ("returned", norm(result), tuple(norm(a) for a in args), state)


def through(cp: wire.CallPlan, fn: Call) -> Call:
    """A call through one encoding, both sides in this process: the caller's
    ``encode``, the callee's ``serve`` around ``fn`` (a raw cffi function, as
    the worker resolves it), the caller's ``decode``."""

    def call(*args: Any) -> Any:
        try:
            body = wire.encode(cp, args)
        except (TypeError, OverflowError) as exc:  # the router's SignatureError (registry.py)
            raise SignatureError(f"{cp.fname}: bad arguments: {exc}") from None
        return wire.decode(cp, wire.serve(cp, fn, body), args)

    return call


def encodings(cp: wire.CallPlan) -> dict[str, wire.CallPlan]:
    """Every encoding that can carry ``cp``'s prototype: a call of scalars in
    all three, one with structs in the fixed and the general one, one with
    strings or buffers in the general one only."""
    general = wire.CallPlan(  # the general encoding's layout (wire.plan's last branch)
        cp.fname,
        cp.idx,
        cp.params,
        cp.result,
        struct.Struct("<BH" + "".join(p.code for p in cp.params if p.kind in ("scalar", "len"))),
        struct.Struct("<B" + (cp.result if cp.result not in ("", "s", "T") else "")),
        cp.rtype,
        cp.rsize,
    )
    object.__setattr__(general, "simple", False)
    if cp.simple:
        fixed = dataclasses.replace(cp, fixed=True)  # scalars: the same layout, fixed's code
        object.__setattr__(fixed, "simple", False)
        return {"simple": cp, "fixed": fixed, "general": general}
    if cp.fixed:
        return {"fixed": cp, "general": general}
    return {"general": cp}


# ---- the module's hosts ------------------------------------------------------------------


@dataclass
class Sides:
    plugins: dict[str, Any]  # path -> the loaded plugin (in_process, shm, socket)
    raw: dict[str, Call]  # export -> the in-process image's raw cffi function
    plans: dict[str, wire.CallPlan]
    hosts: dict[str, Host]
    rec: str

    def paths(self, fname: str) -> Iterator[tuple[str, Call, Call | None]]:
        after = AFTER.get(fname)
        for path, p in self.plugins.items():
            yield path, p[fname], p[after] if after else None
        for enc, cp in encodings(self.plans[fname]).items():
            yield f"wire/{enc}", through(cp, self.raw[fname]), self.raw[after] if after else None

    def outcomes(self, fname: str, desc: tuple[Any, ...]) -> dict[str, tuple[Any, ...]]:
        out = {}
        for path, call, after in self.paths(fname):
            ctx = Ctx(self.rec)
            out[path] = outcome(call, tuple(make(d, ctx) for d in desc), after)
        return out


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sides]:
    root = tmp_path_factory.mktemp("parity")
    (root / "parity.c").write_text(SOURCE)
    lib = root / "parity.so"
    compile_plugin(root / "parity.c", lib)
    hosts: dict[str, Host] = {}
    try:
        hosts["in_process"] = Host(root / "in_process", preflight=False)
        hosts["shm"] = Host(root / "shm", preflight=False)
        plugins = {
            "in_process": hosts["in_process"].load(lib),
            "shm": hosts["shm"].load(lib, isolate=True),
        }
        with pytest.MonkeyPatch.context() as env:
            # read when the host's first isolated load starts its worker (and its spare)
            env.setenv("HOTLOAD_ISOLATE_CHANNEL", "socket")
            hosts["socket"] = Host(root / "socket", preflight=False)
            plugins["socket"] = hosts["socket"].load(lib, isolate=True)
        image = plugins["in_process"]._version().image
        protos = image.prototypes
        raw = {f: loader.resolve(image.handle, image.source, f, protos[f]) for f in protos}
        rec = ffi.typeof(plugins["in_process"].new("rec_t")).item.cname
        yield Sides(plugins, raw, wire.plans(protos, where=image.source), hosts, rec)
    finally:
        for h in hosts.values():
            h.close()


def worker_argv(host: Host) -> list[str]:
    info = host.current("parity")
    assert info is not None and info.isolated and info.pid
    with open(f"/proc/{info.pid}/cmdline", "rb") as fh:
        return fh.read().decode().split("\0")


SHORT = reprlib.Repr()
SHORT.maxstring = SHORT.maxother = 160
SHORT.maxtuple = SHORT.maxlist = 12
SHORT.maxlevel = 8


class Disagree(AssertionError):
    """Two paths gave different outcomes for one call."""


def agree(out: dict[str, tuple[Any, ...]]) -> None:
    want = out["in_process"]
    differ = {path: got for path, got in out.items() if got != want}
    if differ:
        raise Disagree(f"in_process gave {SHORT.repr(want)}; other paths: {SHORT.repr(differ)}")


# ---- the paths are what they claim -------------------------------------------------------


def test_every_encoding_and_both_channels_are_exercised(sides: Sides) -> None:
    picked = {
        f: "simple" if cp.simple else "fixed" if cp.fixed else "general"
        for f, cp in sides.plans.items()
    }
    assert picked == ENCODING  # so the prototypes below cover all three encodings
    assert set(picked.values()) == {"simple", "fixed", "general"}
    assert "--shm" in worker_argv(sides.hosts["shm"])  # calls go through shared memory
    assert "--shm" not in worker_argv(sides.hosts["socket"])  # every call on the socket
    assert sides.hosts["in_process"].current("parity").isolated is False  # type: ignore[union-attr]


# ---- generated calls ---------------------------------------------------------------------


def ints(ctype: str, bad: int = 4) -> st.SearchStrategy[Any]:
    """Integers for a ``ctype`` parameter, edges included; one draw in
    ``bad`` is one both modes refuse (out of range, or not an integer)."""
    lo, hi = INTS[ctype]
    good = st.one_of(st.integers(lo, hi), st.sampled_from([0, 1, -1 if lo else 0, lo, hi, True]))
    refused = st.sampled_from([lo - 1, hi + 1, -(2**64) - 1, 2**64, 1.5, "1", None, b"1"])
    return st.one_of(*[good] * (bad - 1), refused)


def reals(ctype: str) -> st.SearchStrategy[Any]:
    edges = [0.0, -0.0, 1.0, math.nan, math.inf, -math.inf, 5e-324, -1]
    if ctype == "float":
        # a finite double beyond the float range is refused by both (it would be infinity)
        finite = st.floats(-FLT_MAX, FLT_MAX) | st.floats(width=32) | st.integers(-(2**24), 2**24)
        finite |= st.floats() | st.integers(-(2**200), 2**200)
        edges += [FLT_MAX, -FLT_MAX, 1.1754943508222875e-38, 3.5e38, -1e39, 2**128]
    else:
        finite = st.floats() | st.integers(-(2**63), 2**63)
        edges += [1.7976931348623157e308, -1.7976931348623157e308]
    refused = st.sampled_from(["1.0", None, 2**1024, b"1"])
    return st.one_of(finite, finite, st.sampled_from(edges), refused)


def bools() -> st.SearchStrategy[Any]:
    """True, False, 0 and 1; anything else is refused by both (not its truth)."""
    refused = st.sampled_from([2, -1, 0.5, 1.0, None, "x", b"\1", 2**64])
    return st.one_of(st.sampled_from([True, False, 0, 1]), refused)


def chars() -> st.SearchStrategy[Any]:
    refused = st.sampled_from([b"", b"ab", 97, "a", None])
    return st.one_of(st.binary(min_size=1, max_size=1), st.binary(min_size=1, max_size=1), refused)


@st.composite
def large_text(draw: st.DrawFn) -> bytes:
    return bytes([draw(st.integers(1, 255))]) * draw(st.sampled_from(LARGE))


def texts() -> st.SearchStrategy[Any]:
    """``const char *`` arguments: bytes without NUL (long ones cross the
    shared memory's capacity), ``str`` (UTF-8, lone surrogates included),
    ``bytearray``, NULL as ``ffi.NULL`` or ``None``; refused by both: a NUL
    anywhere, a number, a memoryview."""
    short = st.lists(st.integers(1, 255), max_size=40).map(bytes)
    return st.one_of(
        short,
        short,
        short,
        large_text(),
        st.text(max_size=20),
        st.binary(max_size=12),  # NULs too
        short.map(bytearray),
        st.sampled_from([ffi.NULL, None, "\udcff", "a\0b", 5, 1.5, memoryview(b"m")]),
    )


ELEM = {"int32_t": "i", "int16_t": "h", "uint8_t": "B", "double": "d", "char": "c"}


def _elements(ctype: str) -> st.SearchStrategy[Any]:
    if ctype == "double":
        return st.floats() | st.integers(-(2**53), 2**53)
    if ctype == "char":
        return st.binary(min_size=1, max_size=1)
    lo, hi = INTS[ctype]
    return st.integers(lo, hi)


def _filled(ctype: str, n: int, seed: int) -> tuple[Any, ...]:
    rnd = random.Random(seed)
    if ctype == "double":
        return tuple(rnd.uniform(-1e6, 1e6) for _ in range(n))
    if ctype == "char":
        return tuple(bytes([rnd.randrange(32, 127)]) for _ in range(n))
    lo, hi = INTS[ctype]
    return tuple(rnd.randint(lo, hi) for _ in range(n))


@st.composite
def buffers(draw: st.DrawFn, ctype: str, const: bool) -> tuple[Any, Any]:
    """A buffer and its ``size_t`` length: a list (the callee's writes come
    back into it) or a tuple (a temporary), the caller's cffi array, a buffer
    object (``bytes``: a temporary; ``bytearray``, an ``array``, a memoryview:
    written), or NULL with 0; large ones cross the shared memory's capacity.
    Refused by both: an element out of range (lists and tuples), a negative
    or non-integer length, a length past a buffer object.  Never a length
    past the end of a list or a cffi array (see the docstring)."""
    size = struct.calcsize(ELEM[ctype])
    if draw(st.integers(0, 5)) == 0:
        items = _filled(ctype, draw(st.sampled_from(LARGE)) // size + 1, draw(st.integers()))
    else:
        items = tuple(draw(st.lists(_elements(ctype), max_size=24)))
    objects = ["bytes", "bytearray", "memoryview", "memoryview-rw", "B"]
    form = draw(st.sampled_from(["tuple", "array", "null", "list", *objects]))
    if form == "null":
        return ffi.NULL, 0
    if form in ("tuple", "list") and items and draw(st.integers(0, 7)) == 0:
        bad = {"double": "x", "char": 97}.get(ctype, INTS.get(ctype, (0, 0))[1] + 1)
        items = (*items[:-1], bad)
    n: Any = draw(st.integers(0, len(items)))
    if draw(st.integers(0, 7)) == 0:
        n = draw(st.sampled_from([-1, 1.5, None]))
    if form == "array":
        return Arr(ctype, items), n
    if form in objects:  # its raw bytes; a length one past it is refused by both
        raw = struct.pack(f"<{len(items)}{ELEM[ctype]}", *items)
        if isinstance(n, int) and draw(st.integers(0, 7)) == 0:
            n = len(items) + 1
        return Fresh(form, tuple(raw)), n
    return Seq(form, items), n


@st.composite
def rec_fields(draw: st.DrawFn) -> tuple[tuple[str, Any], ...]:
    values = {
        "a": st.integers(*INTS["int8_t"]),
        "b": st.integers(*INTS["int64_t"]),
        "c": st.floats(),
        "d": st.lists(st.integers(*INTS["uint16_t"]), max_size=3),
        "tag": st.binary(max_size=5),
    }
    names = draw(st.lists(st.sampled_from(sorted(values)), unique=True))
    return tuple((n, draw(values[n])) for n in sorted(names))


@st.composite
def recs(draw: st.DrawFn, by_value: bool) -> Rec:
    """A struct argument.  By value: ``ptr[0]``, a dict or a list initializer
    (refused by both: a pointer, NULL, a field value out of range, a field the
    struct lacks, an initializer too many).  By pointer: ``p.new``, NULL, a
    list holding one initializer, a ``rec_t[2]``, a struct value (passed by
    its address) (refused by both: a dict)."""
    fields = draw(rec_fields())
    if by_value:
        form = draw(st.sampled_from(["value", "value", "dict", "list", "ptr", "null"]))
        if form in ("dict", "list") and draw(st.integers(0, 7)) == 0:
            extra = draw(st.sampled_from([("a", 200), ("nope", 1)]))  # out of range; unknown
            fields = tuple({**dict(fields), extra[0]: extra[1]}.items())
    else:
        form = draw(st.sampled_from(["ptr", "ptr", "null", "one", "pair", "dict", "value"]))
    return Rec(form, fields)


def args_of(fname: str) -> st.SearchStrategy[tuple[Any, ...]]:
    if fname.endswith("_mix") and fname[:-4] in MIX_TYPES:
        t = MIX_TYPES[fname[:-4]]
        return st.tuples(ints(t), ints(t))
    match fname:
        case "all_ints":
            return st.tuples(*(ints(t, bad=24) for t in INTS))
        case "f32_mix":
            return st.tuples(reals("float"), reals("float"))
        case "f64_mix":
            return st.tuples(reals("double"), reals("float"))
        case "flip":
            return st.tuples(bools(), ints("int32_t"))
        case "next_char":
            return st.tuples(chars())
        case "sink":
            return st.tuples(ints("int64_t"))
        case "last_sunk" | "nop":
            return st.just(())
        case "str_len" | "str_echo":
            return st.tuples(texts())
        case "str_hash":
            return st.tuples(texts(), ints("int32_t"))
        case "word":
            return st.tuples(st.integers(-2, 4) | ints("int32_t"))
        case "big_word":
            sizes = st.sampled_from([-1, 0, 1, CAP - 8, CAP - 1, CAP, CAP + 1, 200000, 200001])
            return st.tuples(sizes | st.integers(-1, 3 * CAP))
        case "rec_twist":
            return st.tuples(recs(by_value=True), ints("int32_t"))
        case "rec_bump":
            return st.tuples(recs(by_value=False), ints("int32_t"))
        case "rec_sum":
            return st.tuples(recs(by_value=False))
        case "rec_label":
            return st.tuples(recs(by_value=False), texts())
        case "rec_from" | "i32_sum":
            return buffers("int32_t", const=True)
        case "u8_fill":
            return st.tuples(buffers("uint8_t", const=False), ints("uint8_t")).map(
                lambda t: (*t[0], t[1])
            )
        case "f64_scale":
            return st.tuples(buffers("double", const=False), reals("double")).map(
                lambda t: (*t[0], t[1])
            )
        case "i16_rev":
            return buffers("int16_t", const=False)
        case "char_up":
            return buffers("char", const=False)
    raise AssertionError(f"no arguments for {fname}")


@pytest.mark.parametrize("fname", sorted(ENCODING))
@settings(
    max_examples=int(os.environ.get("HOTLOAD_PARITY_EXAMPLES", "40")),
    deadline=None,
    derandomize=True,  # the same calls on every run: a failure here is a difference, not luck
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_path_agrees(sides: Sides, fname: str, data: st.DataObject) -> None:
    desc = data.draw(args_of(fname), label="arguments")
    agree(sides.outcomes(fname, desc))


# ---- edge values, always sent ------------------------------------------------------------


def _edges() -> Iterator[Any]:
    for n, t in MIX_TYPES.items():
        lo, hi = INTS[t]
        for a, b in ((0, 0), (-1, -1), (lo, hi), (hi, lo), (hi, hi), (lo - 1, 0), (0, hi + 1)):
            yield pytest.param(f"{n}_mix", (a, b), id=f"{n}_mix({a},{b})")
    yield pytest.param("all_ints", tuple(INTS[t][1] for t in INTS), id="all_ints(max)")
    yield pytest.param("all_ints", tuple(INTS[t][0] for t in INTS), id="all_ints(min)")
    for x in (math.nan, math.inf, -math.inf, -0.0, FLT_MAX, 5e-324):
        yield pytest.param("f32_mix", (x, x), id=f"f32_mix({x})")
        yield pytest.param("f64_mix", (x, x), id=f"f64_mix({x})")
    yield pytest.param("f64_mix", (1.7976931348623157e308, 0.0), id="f64_mix(DBL_MAX)")
    for size in (0, 1, *LARGE):
        yield pytest.param("str_len", (b"y" * size,), id=f"str_len({size} bytes)")
        yield pytest.param("str_echo", (b"z" * size,), id=f"str_echo({size} bytes)")
    yield pytest.param("str_echo", (ffi.NULL,), id="str_echo(NULL)")
    for n in (-1, 0, CAP - 1, CAP, CAP + 1, 200000):
        yield pytest.param("big_word", (n,), id=f"big_word({n})")
    for size in LARGE:
        items = tuple(range(size // 4 + 1))
        yield pytest.param("i32_sum", (items, len(items)), id=f"i32_sum({size} bytes)")
        yield pytest.param(
            "u8_fill", (Arr("uint8_t", (0,) * (size + 1)), size + 1, 3), id=f"u8_fill({size})"
        )
    yield pytest.param("i32_sum", (ffi.NULL, 0), id="i32_sum(NULL, 0)")
    yield pytest.param("rec_sum", (Rec("null"),), id="rec_sum(NULL)")
    yield pytest.param("rec_bump", (Rec("ptr", (("a", -128), ("b", -(2**63)))), -1), id="bump(min)")


@pytest.mark.parametrize("fname, desc", list(_edges()))
def test_edge_values_agree(sides: Sides, fname: str, desc: tuple[Any, ...]) -> None:
    agree(sides.outcomes(fname, desc))


def test_bodies_larger_than_shared_memory_take_the_socket(sides: Sides) -> None:
    """On the shared-memory host these travel on the worker's socket: a
    request larger than the area (a string; a buffer, whose reply copies it
    back), a small request whose reply is larger (a long ``char *`` result).
    They are served, and agree with every other path."""
    plans, raw = sides.plans, sides.raw
    assert len(wire.encode(plans["str_len"], (b"q" * (CAP + 1),))) > CAP
    fill = (ffi.new("uint8_t[]", CAP + 1), CAP + 1, 1)
    assert len(wire.encode(plans["u8_fill"], fill)) > CAP
    assert (
        len(wire.serve(plans["u8_fill"], raw["u8_fill"], wire.encode(plans["u8_fill"], fill))) > CAP
    )
    cp = plans["big_word"]
    assert len(wire.encode(cp, (CAP + 1,))) < CAP
    assert len(wire.serve(cp, raw["big_word"], wire.encode(cp, (CAP + 1,)))) > CAP
    for fname, desc in (
        ("str_len", (b"q" * (CAP + 1),)),
        ("u8_fill", (Arr("uint8_t", (9,) * (CAP + 1)), CAP + 1, 1)),
        ("big_word", (CAP + 1,)),
    ):
        out = sides.outcomes(fname, desc)
        agree(out)
        assert out["shm"][0] == "returned", out["shm"]


# ---- one rule for what the two modes used to treat differently ---------------------------
#
# Each case below gave one outcome in process and another isolated until issue 19 item 10
# chose one rule for both (``hotload._artifact.arguments``, docs/guide/contract.md "Arguments"):
# every path must now give the outcome the rule says.  The generators above draw these kinds
# of argument too.

REFUSED = ("raised", "SignatureError")


def returned(kind: str, value: Any) -> tuple[str, Any]:
    return ("returned", (kind, value))


def rule(fname: str, desc: tuple[Any, ...], want: tuple[Any, ...], name: str) -> Any:
    return pytest.param(fname, desc, want, id=name)


RULES = [
    rule("str_len", ("text",), returned("int", 4), "str for const char *: UTF-8"),
    rule("str_len", ("h\u00e9",), returned("int", 3), "str for const char *: 2-byte UTF-8"),
    rule("str_len", (None,), returned("int", -1), "None for const char *: NULL"),
    rule("str_len", (bytearray(b"abc"),), returned("int", 3), "bytearray for const char *"),
    rule("str_len", (b"ab\0cd",), REFUSED, "NUL in bytes for const char *: refused"),
    rule("str_len", ("ab\0cd",), REFUSED, "NUL in str for const char *: refused"),
    rule("str_len", (bytearray(b"a\0"),), REFUSED, "NUL in bytearray for const char *: refused"),
    rule("str_len", (memoryview(b"ab"),), REFUSED, "memoryview for const char *: refused"),
    *(
        rule("flip", (v, 0), REFUSED, f"_Bool given {v!r}: refused")
        for v in (2, -1, 0.5, 1.0, None, "x", b"\1")
    ),
    *(
        rule("flip", (v, 0), returned("bool", bool(v)), f"_Bool given {v!r}")
        for v in (True, False, 0, 1)
    ),
    *(
        rule("f32_mix", (v, 1.0), REFUSED, f"float given {v!r}: refused")
        for v in (1e300, -1e39, 2**200, 3.5e38)
    ),
    rule("f32_mix", (FLT_MAX, 1.0), returned("float", "inf"), "float FLT_MAX: taken"),  # 2*FLT_MAX
    rule("f32_mix", (math.inf, 0.0), returned("float", "inf"), "float given inf: itself"),
    *(
        rule("i32_sum", (Fresh(k, v), 1), returned("int", 1), f"{k} for a const buffer")
        for k, v in (
            ("bytes", (1, 0, 0, 0)),
            ("bytearray", (1, 0, 0, 0)),
            ("memoryview", (1, 0, 0, 0)),
            ("i", (1,)),
        )
    ),
    rule("i32_sum", (Fresh("bytes", (1, 0, 0, 0)), 2), REFUSED, "a length past a buffer: refused"),
    rule("i32_sum", (Fresh("h", (1, 0)), 1), returned("int", 1), "an array of another type: bytes"),
    rule("u8_fill", (Seq("list", (0, 0, 0)), 3, 7), returned("NoneType", None), "list, written"),
    rule("u8_fill", (Seq("list", (9, 9, 9)), 2, 7), returned("NoneType", None), "list, 2 of 3"),
    rule("u8_fill", (Seq("tuple", (0, 0)), 2, 7), returned("NoneType", None), "tuple: temporary"),
    rule("u8_fill", (Fresh("bytearray", (0,) * 3), 3, 7), returned("NoneType", None), "bytearray"),
    rule(
        "u8_fill", (Fresh("memoryview-rw", (0,) * 3), 3, 7), returned("NoneType", None), "rw view"
    ),
    rule("u8_fill", (Fresh("bytes", (0,) * 3), 3, 7), returned("NoneType", None), "bytes: copy"),
    rule("i16_rev", (Fresh("h", (1, 2, 3)), 3), returned("int", 3), "array, written"),
    rule("f64_scale", (Seq("list", (1.0, True, 2)), 3, 2.0), returned("float", "8.0"), "list mix"),
    rule("char_up", (Seq("list", (b"a", b"b")), 2), returned("NoneType", None), "char list"),
    rule("rec_sum", (Rec("value", (("b", 5),)),), returned("float", "5.0"), "struct value for S *"),
    rule("rec_bump", (Rec("value", (("b", 5),)), 2), returned("int", 7), "struct value, written"),
    rule("rec_twist", (Rec("dict", (("nope", 1),)), 1), REFUSED, "unknown field: refused"),
    rule("rec_twist", (Rec("list", (("extra", 9),)), 1), REFUSED, "too many initializers: refused"),
    rule("rec_twist", (Rec("dict", (("d", [1, 2, 3, 4]),)), 1), REFUSED, "array field too long"),
]


@pytest.mark.parametrize("fname, desc, want", RULES)
def test_one_rule_in_both_modes(
    sides: Sides, fname: str, desc: tuple[Any, ...], want: tuple[Any, ...]
) -> None:
    """Every path gives what the rule says, and the same bytes are left in the
    caller's arguments (a list or a struct the callee wrote)."""
    out = sides.outcomes(fname, desc)
    assert out["in_process"][:2] == want, out["in_process"]
    agree(out)


def test_writes_reach_the_callers_list_and_struct_value(sides: Sides) -> None:
    """What ``test_one_rule_in_both_modes`` compares across paths, spelled
    out: the callee's writes land in a list and in a struct value passed for
    a non-const pointer, in process as isolated."""
    for path in ("in_process", "shm", "socket"):
        p = sides.plugins[path]
        xs = [9, 9, 9]
        p.u8_fill(xs, 2, 7)
        assert xs == [7, 8, 9], path  # the first 2 written, the third untouched
        rec = p.new("rec_t", b=5)[0]
        assert p.rec_bump(rec, 2) == 7 and rec.b == 7 and rec.d[2] == 2, path
        buf = bytearray(3)
        p.u8_fill(buf, 3, 1)
        assert buf == b"\1\2\3", path
        assert p.str_len("h\u00e9") == 3 and p.str_len(None) == -1, path
