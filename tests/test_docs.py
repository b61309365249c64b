"""The documentation renders and its links lead somewhere: every relative link of README.md,
bench/README.md and docs/*.md names a file that exists (and, with #anchor, a heading of that page, as
GitHub spells anchors), and every table has its |---| row with as many cells as its header."""
import re

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(path):
    """(line number, line) outside code fences."""
    fence = False
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            yield i, line


def anchors(path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    seen, out = {}, set()
    for _, line in prose(path):
        if line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def cells(row: str) -> int:
    return len(re.sub(r"`[^`]*`", "x", row).strip().strip("|").split("|"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    for i, line in prose(page):
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
            if re.match(r"[a-z]+:", target):
                continue  # an address on the web: not checked offline
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}:{i}: {target} does not exist"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest), f"{page.name}:{i}: {dest.name} has no heading #{anchor}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_tables_render(page):
    lines = dict(prose(page))
    for i, line in lines.items():
        if not line.startswith("|") or lines.get(i - 1, "").startswith("|"):
            continue  # not the first row of a table
        separator = lines.get(i + 1, "")
        assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", separator.strip()), f"{page.name}:{i}: table without a |---| row"
        j = i
        while lines.get(j, "").startswith("|"):
            assert cells(lines[j]) == cells(line), f"{page.name}:{j}: {cells(lines[j])} cells, the header has {cells(line)}"
            j += 1
