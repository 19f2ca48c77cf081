"""Every relative link in README.md and docs/ names a file or folder that exists, and every
`#anchor` on a markdown page names one of its headings (as GitHub spells them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
# [text](target) and ![alt](target), the text allowed one level of brackets, an optional title
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text]
    r"\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"  # (target "title")
)
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The page without fenced code blocks, so example code is not read as links."""
    return _FENCE.sub("", text)


def link_targets(text: str) -> list[str]:
    """The targets of a page's inline links, images and reference definitions, in order."""
    prose = _prose(text)
    targets = _INLINE_LINK.findall(prose)
    targets += _REFERENCE.findall(_CODE_SPAN.sub("", prose))
    return targets


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces
    to hyphens, and `-1`, `-2` ... after a repeated one."""
    anchors: set[str] = set()
    for heading in _HEADING.findall(_prose(text)):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file, folder or heading does not exist."""
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in link_targets(text):
        if _SCHEME.match(target):
            continue  # http:, https:, mailto: and the like: not ours to check
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif (
            anchor
            and resolved.suffix == ".md"
            and resolved.is_file()
            and anchor not in heading_anchors(resolved.read_text(encoding="utf-8"))
        ):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_readme_links_to_every_docs_page() -> None:
    linked = {
        (REPO / target.partition("#")[0]).resolve()
        for target in link_targets((REPO / "README.md").read_text(encoding="utf-8"))
        if not _SCHEME.match(target)
    }
    unlinked = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert unlinked == []


def test_links_in_code_are_ignored_and_urls_skipped(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n[here](page.md#a-page) [web](https://example.org/x) ![img](gone.png)\n"
        "```\n[in code](missing.md)\n```\n[ref]: also-gone.md\n[bad anchor](#nowhere)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "gone.png (no such file)",
        "#nowhere (no such heading)",
        "also-gone.md (no such file)",
    ]
