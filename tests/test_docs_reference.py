"""The generated reference documents every parameter of the public API.

Found by a new user: the ``Host`` page documented 2 of the constructor's 17
parameters; ``fleet`` (what is ``True``?), ``control``, ``keep_versions`` and
``max_leaked`` were only in the guide, or nowhere.  The reference is built from
the docstrings (mkdocstrings, Google style): a parameter is documented when the
docstring's ``Args:`` section, as that parser reads it, names it.  A new
parameter without a line there fails here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from griffe import Docstring, DocstringSectionKind

from hotload import Host

ROOT = Path(__file__).resolve().parent.parent


def documented(doc: str | None) -> dict[str, str]:
    """Parameter name -> description, from a Google-style docstring's ``Args:``."""
    sections = Docstring(doc or "").parse("google", warn_missing_types=False)
    return {
        p.name.lstrip("*"): p.description
        for s in sections
        if s.kind is DocstringSectionKind.parameters
        for p in s.value
    }


def public_methods() -> list[tuple[str, Callable[..., Any], str | None]]:
    """(name, function, the docstring that documents its parameters): the
    constructor's are in the class docstring (``merge_init_into_class``)."""
    found: list[tuple[str, Callable[..., Any], str | None]] = [
        ("Host", Host.__init__, Host.__doc__)
    ]
    for name, member in vars(Host).items():
        if not name.startswith("_") and inspect.isfunction(member):
            found.append((f"Host.{name}", member, member.__doc__))
    return found


def parameters(fn: Callable[..., Any]) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_the_reference_is_rendered_from_google_style_docstrings() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^ +docstring_style: google$", config, re.M)
    assert re.search(r"^ +merge_init_into_class: true$", config, re.M)
    assert "::: hotload.Host" in (ROOT / "docs/reference/host.md").read_text(encoding="utf-8")


def test_every_constructor_parameter_of_host_is_documented() -> None:
    params = parameters(Host.__init__)
    assert len(params) >= 16  # 2 of them were documented
    docs = documented(Host.__doc__)
    assert [p for p in params if p not in docs] == []
    assert "embedded" in docs["fleet"] and "True" in docs["fleet"]  # what fleet=True means


@pytest.mark.parametrize(
    "where, fn, doc", public_methods(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_parameter_of_a_public_host_method_is_documented(
    where: str, fn: Callable[..., Any], doc: str | None
) -> None:
    assert doc, f"{where} has no docstring"
    docs = documented(doc)
    missing = [p for p in parameters(fn) if p not in docs]
    assert not missing, f"{where}: no Args: line for {missing}"
    stale = [p for p in docs if p not in parameters(fn)]
    assert not stale, f"{where}: Args: names {stale}, which it does not take"
    assert all(text.strip() for text in docs.values()), f"{where}: an empty description"


def test_every_public_property_of_host_says_what_it_is() -> None:
    props = [n for n, m in vars(Host).items() if isinstance(m, property) and not n.startswith("_")]
    assert props
    assert [n for n in props if not (vars(Host)[n].__doc__ or "").strip()] == []
