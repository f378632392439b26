"""The built documentation as a reader gets it: opened from disk, at 1280 px.

Found by a new user: with mkdocs' directory URLs every nav link of the site
opened as files (``build/site/index.html``) landed on a directory listing,
and the fleet page's first code block ran past the page.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
# The readthedocs theme's content column is 800 px with 3.236em padding each side, less a
# code block's own 12 px padding: 672 px, 93 characters of its 12 px monospace font.
WIDTH = 92
OUTPUT = {"", "text"}  # captured output: kept as printed, scrolled inside its block


def test_every_link_of_the_site_opened_from_disk_lands_on_a_file(tmp_path: Path) -> None:
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")  # 404: servers only
    assert len(pages) > 15
    wrong = []

    def read(page: Path) -> str:
        return page.read_text(encoding="utf-8")

    for page in pages:
        for ref in re.findall(r'(?:href|src)="([^"]*)"', read(page)):
            if re.match(r"[a-z][a-z0-9+.-]*:", ref):  # http:, mailto:, data:...
                continue
            path, _, anchor = ref.partition("#")
            path = urllib.parse.unquote(path.split("?")[0])
            target = (page.parent / path) if path else page
            where = f"{page.relative_to(site)}: {ref}"
            if target.is_dir():
                wrong.append(f"{where} is a directory (a listing, opened from disk)")
            elif not target.is_file():
                wrong.append(f"{where} does not exist")
            elif anchor and target.suffix == ".html" and f'id="{anchor}"' not in read(target):
                wrong.append(f"{where}: no #{anchor} there")
    assert not wrong, "\n".join(wrong)
    nav = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="guide/fleet.html"' in nav  # the nav links files, relative, as checked above


def test_no_line_of_code_in_the_docs_runs_past_a_1280_px_page() -> None:
    long = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1) in OUTPUT:
                continue
            first = text.count("\n", 0, m.start(2)) + 1
            for i, line in enumerate(m.group(2).splitlines()):
                if len(line) > WIDTH:
                    long.append(f"{page.relative_to(ROOT)}:{first + i}: {len(line)} characters")
    assert not long, f"code lines over {WIDTH} characters:\n" + "\n".join(long)


def test_output_blocks_scroll_inside_their_block() -> None:
    """Captured output keeps its long lines; the site's CSS keeps them in the block."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^use_directory_urls: false$", config, re.M)
    assert re.search(r"^extra_css:\n  - css/extra.css$", config, re.M)
    css = (ROOT / "docs/css/extra.css").read_text(encoding="utf-8")
    assert re.search(r"\.rst-content pre \{\s*overflow-x: auto;", css)
