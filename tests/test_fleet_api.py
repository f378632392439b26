"""``hotload.fleet`` is public: what it shows is exactly ``__all__``, and each
name in it is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hotload import ConfigError, Host, HotloadError, fleet

ROOT = Path(__file__).resolve().parent.parent

PUBLIC = {
    "Controller",
    "Fleet",
    "Rule",
    "abort",
    "cancel_release",
    "connect",
    "embedded",
    "publish",
    "release",
    "resign",
    "resume",
    "rollback",
    "rollout",
    "status",
}


def test_the_public_names_are_exactly_all() -> None:
    assert set(fleet.__all__) == PUBLIC
    assert len(fleet.__all__) == len(PUBLIC), "a name listed twice"
    shown = {n for n in dir(fleet) if not n.startswith("_")}
    assert shown == PUBLIC, f"not in __all__: {sorted(shown - PUBLIC)}"  # no os, json, socket...
    for name in fleet.__all__:
        assert getattr(fleet, name) is not None


def test_every_public_name_is_documented() -> None:
    pages = [ROOT / "docs" / "guide" / "fleet.md", *(ROOT / "docs" / "reference").glob("*.md")]
    text = "\n".join(p.read_text() for p in pages)
    missing = [n for n in fleet.__all__ if not re.search(rf"::: hotload\.fleet\.{n}\b", text)]
    assert missing == [], "not in docs/reference/fleet.md"


# ---- a bad fleet key is a HotloadError naming the file (issue 19 item 10) --------------


@pytest.mark.parametrize("kind", ["directory", "missing", "junk", "junk bytes", "private"])
def test_a_bad_fleet_public_key_names_the_file_and_the_cause(tmp_path: Path, kind: str) -> None:
    """``Host(fleet_public_key=<dir|missing|junk>)`` raised a bare
    ``IsADirectoryError``, ``FileNotFoundError`` or ``ValueError``; it is a
    ``ConfigError`` (a ``HotloadError``) naming the key file and why, raised
    before anything connects (the URL here has no server), and the host is
    closed again."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / "fleet.pub"
    key: object = path
    if kind == "directory":
        path.mkdir()
        why = "is a directory, not a key file"
    elif kind == "missing":
        why = "no such file"
    elif kind == "junk":
        path.write_text("not a key\n")
        why = "not a PEM public key"
    elif kind == "junk bytes":
        key, why = b"-----BEGIN PUBLIC KEY-----\njunk\n", "not a PEM public key"
    else:  # the private half, where the public one belongs
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.write_bytes(pem)
        why = "not a PEM public key"
    with pytest.raises(ConfigError, match="fleet_public_key") as err:
        Host(tmp_path / "work", fleet="redis://127.0.0.1:9", fleet_public_key=key)  # type: ignore[arg-type]
    assert isinstance(err.value, HotloadError) and why in str(err.value)
    if not isinstance(key, bytes):
        assert str(path) in str(err.value)
    assert not any((tmp_path / "work").glob("host-*"))  # closed again: nothing left behind
