"""``hotload.fleet`` is public: what it shows is exactly ``__all__``, and each
name in it is documented."""

from __future__ import annotations

import re
from pathlib import Path

from hotload import fleet

ROOT = Path(__file__).resolve().parent.parent

PUBLIC = {
    "Controller",
    "Fleet",
    "Rule",
    "abort",
    "connect",
    "embedded",
    "publish",
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
