"""MkDocs hook: check the README's links into docs/ as strictly as mkdocs checks
the pages themselves (the file exists, the anchor is a heading of the built page),
so the front page cannot rot either.  A broken link is a warning, which
``mkdocs build --strict`` (make docs, make test) turns into a failure."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.readme_links")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def on_post_build(config: Any, **kwargs: Any) -> None:
    root = Path(config["config_file_path"]).parent
    docs = Path(config["docs_dir"]).resolve()
    site = Path(config["site_dir"])
    readme = root / "README.md"
    for link in _LINK.findall(readme.read_text(encoding="utf-8")):
        if "://" in link or link.startswith("#"):
            continue
        target, _, anchor = link.partition("#")
        path = (root / target).resolve()
        if not path.exists():
            log.warning("README.md links to %s, which does not exist", link)
            continue
        if not anchor:
            continue
        if path.suffix != ".md" or docs not in path.parents:
            log.warning("README.md: cannot check the anchor of %s (not a page in docs/)", link)
            continue
        built = site / built_page(path.relative_to(docs), config["use_directory_urls"])
        if f'id="{anchor}"' not in built.read_text(encoding="utf-8"):
            log.warning("README.md links to %s, but %s has no heading #%s", link, target, anchor)


def built_page(page: Path, directory_urls: bool) -> Path:
    """Where mkdocs writes the page ``page`` (relative to docs/): ``guide/x.md`` is
    ``guide/x.html``, or ``guide/x/index.html`` with ``use_directory_urls``."""
    if not directory_urls or page.stem == "index":
        return page.with_suffix(".html")
    return page.with_suffix("") / "index.html"
