"""Trust: who could have written the code we load."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from hotload import Host
from hotload._artifact.trust import TrustError


@pytest.fixture
def plugin(tmp_path: Path, example_plugins: dict[str, Path]) -> Path:
    d = tmp_path / "drop"
    d.mkdir(mode=0o755)
    p = d / "loot_drop.so"
    shutil.copyfile(example_plugins["loot_drop"], p)
    p.chmod(0o644)
    return p


def test_group_writable_directory_is_refused(host: Host, plugin: Path) -> None:
    plugin.parent.chmod(0o775)
    with pytest.raises(
        TrustError,
        match=rf"{plugin}: refusing to load: directory {plugin.parent} is writable "
        r"by group \(mode 775\).*chmod go-w",
    ):
        host.load(plugin)


def test_world_writable_file_is_refused(host: Host, plugin: Path) -> None:
    plugin.chmod(0o646)
    with pytest.raises(TrustError, match=rf"file {plugin} is writable by others \(mode 646\)"):
        host.load(plugin)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_file_owned_by_another_user_is_refused(host: Host, plugin: Path) -> None:
    os.chown(plugin, 65534, 65534)
    with pytest.raises(TrustError, match=r"is owned by uid 65534, not by you \(uid 0\) or root"):
        host.load(plugin)


def test_trust_checks_can_be_turned_off(tmp_path: Path, plugin: Path) -> None:
    plugin.parent.chmod(0o777)
    with Host(tmp_path / "w", trust_checks=False) as host:
        assert host.load(plugin).rarity(0, 0) == 0


def test_sticky_root_owned_directory_is_accepted(host: Host, plugin: Path) -> None:
    assert Path("/tmp").stat().st_mode & 0o1000
    host.load(plugin)  # tmp_path lives under /tmp (1777, root)


def test_allow_list_from_manifest(
    tmp_path: Path, plugin: Path, example_plugins: dict[str, Path]
) -> None:
    digest = hashlib.sha256(plugin.read_bytes()).hexdigest()
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"# allowed builds\n{digest}  loot_drop.so\n")
    with Host(tmp_path / "w", allowed_digests=manifest) as host:
        host.load(plugin)
        assert host.versions("loot_drop")[0].digest == digest
        other = example_plugins["double_xp"]
        with pytest.raises(
            TrustError,
            match=rf"{other}: refusing to load: its SHA-256 [0-9a-f]{{64}} is not in "
            rf"the host's manifest {manifest}",
        ):
            host.load(other)
        assert not [p for p in host.workdir.iterdir() if p.name != ".lock" and "double" in p.name]
    bad = tmp_path / "BAD"
    bad.write_text("not-a-digest  x.so\n")
    with pytest.raises(TrustError, match=rf"{bad}:1: not a SHA-256 digest"):
        Host(tmp_path / "w2", allowed_digests=bad)


def test_allow_list_from_digests(tmp_path: Path, plugin: Path) -> None:
    with Host(tmp_path / "w", allowed_digests=["0" * 64]) as host, pytest.raises(TrustError):
        host.load(plugin)


def test_symlink_in_a_writable_directory_is_refused(
    host: Host, plugin: Path, tmp_path: Path
) -> None:
    """Whoever can write the link's directory can re-point the link: the
    directories on the path as written count, not only the resolved ones."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    link = shared / "plugin.so"
    link.symlink_to(plugin)
    with pytest.raises(
        TrustError,
        match=rf"{link}: refusing to load: directory {shared} is writable by group "
        r"and others \(mode 777\)",
    ):
        host.load(link)
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    (safe / "plugin.so").symlink_to(plugin)
    assert host.load(safe / "plugin.so").rarity(0, 0) == 0  # a link in a trusted directory is fine


def test_a_bare_digest_string_is_explained(tmp_path: Path) -> None:
    with pytest.raises(TrustError, match=r"a single digest must be given in a list"):
        Host(tmp_path / "w", allowed_digests="ab" * 32)
