"""What a new user gets after ``host.close()`` and from easy mistakes: each
a clear error naming the cause, never a silent no-op or a wrong cause."""

from __future__ import annotations

import logging

import pytest

from hotload import ClosedError, Host, ServiceError

SRC = """
#include <hotload.h>
HOTLOAD_PLUGIN("closing", "1");
typedef struct { int64_t id; int32_t level; } cl_t;
HOTLOAD_STRUCT(cl_t);
HOTLOAD_FIELD(cl_t, id, int64_t);
HOTLOAD_FIELD(cl_t, level, int32_t);
HOTLOAD_API int32_t on_tick(int32_t t) { return t + 1; }
HOTLOAD_EXPORT(on_tick, int32_t, (int32_t));
HOTLOAD_API int32_t level_of(const cl_t *p) { return p->level; }
HOTLOAD_EXPORT(level_of, int32_t, (const cl_t *));
"""


def test_after_close_every_entry_point_says_the_host_is_closed(tmp_path, cc) -> None:
    host = Host(tmp_path / "w", preflight=False)
    p = host.load(cc(SRC, "closing"))
    assert host.emit("on_tick", 1) == [2]
    host.close()
    with pytest.raises(ClosedError, match="unloaded .*host closed"):
        p.new("cl_t", id=1)
    with pytest.raises(ClosedError, match="unloaded .*host closed"):
        p.on_tick(1)
    with pytest.raises(ClosedError, match="this host is closed"):
        host.emit("on_tick", 1)
    with pytest.raises(ClosedError, match="this host is closed"):
        host.reload("closing")
    with pytest.raises(ClosedError, match="this host is closed"):
        host.rollback("closing")


def test_mistakes_are_named(tmp_path, cc, caplog) -> None:
    with Host(tmp_path / "w", preflight=False) as host:
        with pytest.raises(ServiceError, match="cannot take the 3 argument"):
            host.provide("mistake_svc", lambda a, b: 0, "int32_t(int64_t, const char *, int32_t)")
        with pytest.raises(TypeError, match="call_timeout"):  # isolation options live in Isolated
            host.load(cc(SRC, "closing"), call_timeout=1.0)  # type: ignore[call-arg]
        p = host.load(cc(SRC, "closing"))
        with pytest.raises(Exception, match=r"cl_t \*.*plugin.new") as err:
            p.level_of({"id": 1, "level": 2})
        assert "__hl" not in str(err.value)  # plain type names, never cffi's mangled ones
        with caplog.at_level(logging.WARNING, logger="hotload"):
            assert host.emit("on_tikc", 1) == []
        assert "emit('on_tikc'): no loaded plugin exports it" in caplog.text
