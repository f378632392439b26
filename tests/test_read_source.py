"""The one hardened reader every read of a plugin goes through (``_loader.read_source``):
hostile files are refused before they cost memory or block a thread."""

from __future__ import annotations

import os
import resource
import socket
import threading
from pathlib import Path

import pytest

from hotload._artifact.loader import DEFAULT_MAX_PLUGIN_SIZE, read_source
from hotload._errors import InvalidPluginError

GiB = 1 << 30


def peak_rss() -> int:
    """This process's peak resident set size, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_in_thread(path: Path, **kw: object) -> BaseException | bytes:
    """``read_source`` on a helper thread, so a read that blocks fails the test, not the run."""
    result: list[BaseException | bytes] = []

    def run() -> None:
        try:
            result.append(read_source(str(path), **kw))  # type: ignore[arg-type]
        except BaseException as exc:  # the result is the assertion
            result.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), f"read_source({path}) blocked"
    return result[0]


def test_the_default_cap_is_far_above_any_real_plugin() -> None:
    assert DEFAULT_MAX_PLUGIN_SIZE == 256 * 1024 * 1024


def test_a_sparse_1_gib_file_is_refused_by_its_size_before_it_is_read(tmp_path: Path) -> None:
    huge = tmp_path / "huge.so"
    with open(huge, "wb") as fh:
        fh.truncate(GiB)  # sparse: costs no disk, but reading it would cost 1 GiB of memory
    before = peak_rss()
    err = read_in_thread(huge)
    assert isinstance(err, InvalidPluginError)
    msg = str(err)
    assert str(huge) in msg and "1,073,741,824 bytes" in msg
    assert "cap is 256 MiB" in msg and "Host(max_plugin_size=...)" in msg
    assert peak_rss() - before < GiB // 4  # refused unread: no 1 GiB buffer was ever made


def test_max_size_is_the_cap(tmp_path: Path) -> None:
    f = tmp_path / "p.so"
    f.write_bytes(b"x" * 1000)
    assert read_source(str(f), max_size=1000) == b"x" * 1000
    with pytest.raises(InvalidPluginError, match=r"p\.so: is 1,000 bytes.*cap is 999 bytes"):
        read_source(str(f), max_size=999)


def test_a_file_that_grows_past_the_cap_while_read_is_refused_at_the_cap() -> None:
    """``/proc/self/maps`` is a regular file whose ``fstat`` size is 0 but which
    reads as kilobytes: the size check passes, the bounded read must not."""
    assert os.stat("/proc/self/maps").st_size == 0
    with pytest.raises(InvalidPluginError, match="grew past the plugin size cap while being read"):
        read_source("/proc/self/maps", max_size=100)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "evil.so"
    os.mkfifo(fifo)
    err = read_in_thread(fifo)
    assert isinstance(err, InvalidPluginError) and "not a regular file (a FIFO)" in str(err)


def test_a_symlink_to_dev_zero_is_refused_without_reading(tmp_path: Path) -> None:
    link = tmp_path / "zero.so"
    link.symlink_to("/dev/zero")
    err = read_in_thread(link)
    assert isinstance(err, InvalidPluginError)
    assert "not a regular file (a character device)" in str(err)


def test_a_socket_is_refused_as_not_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "sock.so"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        err = read_in_thread(path)
    assert isinstance(err, InvalidPluginError) and "not a regular file (a socket)" in str(err)
