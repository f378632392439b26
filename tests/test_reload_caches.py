"""What the reload path remembers (by digest, by descriptor, by import list)
never changes a verdict: a changed build is seen as changed, a bad layout or a
changed import prototype is refused every time, and every cache is bounded."""

from __future__ import annotations

import hashlib
import struct

import pytest

from hotload import Host, InvalidPluginError, ServiceError, TypeLayoutError
from hotload._artifact import descriptor as _descriptor
from hotload._artifact import loader as _loader

PLUGIN = """
#include <hotload.h>
HOTLOAD_PLUGIN("cached", "VERSION");
typedef struct { int64_t id; int32_t level; } player_t;
HOTLOAD_STRUCT(player_t);
HOTLOAD_FIELD(player_t, id, int64_t);
HOTLOAD_FIELD(player_t, level, int32_t);
HOTLOAD_IMPORT(award, int32_t, (ARG));
HOTLOAD_API int32_t level_of(const player_t *p) { return award(p->level) + TAG; }
HOTLOAD_EXPORT(level_of, int32_t, (const player_t *));
"""


def build(cc, name: str, *, version: str = "1", tag: int = 0, arg: str = "int64_t"):
    text = PLUGIN.replace("VERSION", version).replace("TAG", str(tag)).replace("ARG", arg)
    return cc(text, name)


@pytest.fixture
def served(host: Host) -> Host:
    host.provide("award", lambda n: n, "int32_t(int64_t)")
    return host


def test_unchanged_bytes_keep_their_digest_and_a_rebuild_is_hashed(served: Host, cc) -> None:
    lib = build(cc, "a", tag=0)
    p = served.load(lib)
    first = served.current("cached").digest
    assert served.reload("cached").digest == first == hashlib.sha256(lib.read_bytes()).hexdigest()
    rebuilt = build(cc, "b", tag=1)
    assert rebuilt.stat().st_size == lib.stat().st_size  # same length: only the bytes differ
    lib.write_bytes(rebuilt.read_bytes())  # rebuilt in place
    info = served.reload("cached")
    assert info.digest == hashlib.sha256(rebuilt.read_bytes()).hexdigest() != first
    assert p.level_of(p.new("player_t", level=4)) == 5  # the new code serves


def test_format_check_is_remembered_only_for_bytes_that_passed(tmp_path, cc) -> None:
    data = build(cc, "fmt").read_bytes()
    good = _loader.candidate(data, "good.so")
    assert _loader._formats[good.digest] is not None
    foreign = bytearray(data)
    struct.pack_into("<H", foreign, 18, 183)  # e_machine: AArch64
    for _ in range(2):  # refused every time, never remembered
        with pytest.raises(InvalidPluginError, match="bad.so: built for AArch64"):
            _loader.candidate(bytes(foreign), "bad.so")
        assert hashlib.sha256(foreign).hexdigest() not in _loader._formats
    for i in range(80):  # distinct digests, one descriptor: every cache stays bounded
        cand = _loader.candidate(data + i.to_bytes(4, "little"), f"pad{i}.so")
        assert cand.descriptor is good.descriptor and cand.types is good.types
    assert len(_loader._formats) <= 64
    assert len(_descriptor._parsed) <= 64 and len(_loader._contracts) <= 64


def test_a_bad_layout_is_refused_every_time_naming_each_file(served: Host, cc) -> None:
    served.load(build(cc, "ok"))
    odd = PLUGIN.replace(
        "typedef struct { int64_t id; int32_t level; } player_t;",
        "typedef struct { int32_t level; int64_t id __attribute__((packed)); } player_t;",
    ).replace(
        "HOTLOAD_FIELD(player_t, id, int64_t);\nHOTLOAD_FIELD(player_t, level, int32_t);",
        "HOTLOAD_FIELD(player_t, level, int32_t);\nHOTLOAD_FIELD(player_t, id, int64_t);",
    )
    odd = odd.replace("VERSION", "2").replace("TAG", "0").replace("ARG", "int64_t")
    for name in ("odd1", "odd2", "odd1"):  # the second file has the same layout: same verdict
        lib = cc(odd, name)
        with pytest.raises(
            TypeLayoutError,
            match=f"{name}.so: type player_t, field id .*: the compiler put it at offset 4",
        ):
            served.reload("cached", lib, allow_signature_change=True)
        assert served.current("cached").plugin_version == "1"  # v1 keeps serving


def test_a_changed_import_prototype_is_refused_after_a_cached_check(served: Host, cc) -> None:
    v1 = build(cc, "v1")
    p = served.load(v1)
    served.reload("cached", v1)  # the import check is now remembered
    narrow = build(cc, "v2", version="2", arg="int32_t")
    for _ in range(2):
        with pytest.raises(ServiceError, match=r"imports service award as 'int32_t\(int32_t\)'"):
            served.reload("cached", narrow)
    served.reload("cached", v1)
    served.provide("award", lambda n: n * 10, "int32_t(int64_t)")  # a new service: re-checked
    served.reload("cached", v1)
    assert p.level_of(p.new("player_t", level=3)) == 30
    served.provide("award", lambda n: n, "int32_t(int64_t)")
