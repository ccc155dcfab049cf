"""The documentation is a small site (README.md and docs/*.md): every relative link in it reaches
a file of the repository, and every `#anchor` a heading of the page it names, as GitHub renders
anchors (lowercase, punctuation dropped, spaces to '-', '-1', '-2'... for repeated headings).
Headings and links inside code fences or inline code are not Markdown, so they do not count."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# The pages each link of the site points into are checked too (bench/README.md, ...).
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def prose(text: str, *, keep_code: bool = False) -> list[str]:
    """The lines of `text` outside code fences, inline code replaced by a placeholder (kept as
    written with `keep_code`: a heading's anchor includes its code spans' text)."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line if keep_code else INLINE_CODE.sub("code", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives `page`: one per heading (repeats numbered), plus HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = page.read_text(encoding="utf-8")
    for line in prose(text, keep_code=True):
        if match := HEADING.match(line):
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links that stay in the repository (no scheme)."""
    targets = [m.group(1) for line in prose(page.read_text()) for m in LINK.finditer(line)]
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def resolve(page: Path, target: str) -> tuple[Path, str]:
    path, _, anchor = target.partition("#")
    return (page.parent / path).resolve() if path else page, anchor


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, anchor = resolve(page, target)
        if not path.is_relative_to(REPO) or not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    assert broken == [], f"{page.relative_to(REPO)}: broken links"


def test_the_readme_links_every_docs_page() -> None:
    linked = {resolve(PAGES[0], target)[0] for target in links(PAGES[0])}
    assert set(PAGES[1:]) <= linked


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda page: page.name)
def test_each_docs_page_opens_with_a_title_and_one_paragraph(page: Path) -> None:
    lines = page.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# "), f"{page.name}: starts with {lines[0]!r}"
    assert lines[1] == "", f"{page.name}: no blank line after the title"
    assert lines[2].strip(), f"{page.name}: no opening paragraph"
    assert not lines[2].startswith(("#", "|", "```", "-", "*")), f"{page.name}: {lines[2]!r}"


def test_the_readme_stays_short() -> None:
    assert len(PAGES[0].read_text(encoding="utf-8").splitlines()) <= 300


# --- the checker itself, on GitHub's rules ------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Five-minute tour", "five-minute-tour"),
        ("Running `serve` on a host", "running-serve-on-a-host"),
        ("Processes, signals and reload", "processes-signals-and-reload"),
        ("What is forwarded, and what changes", "what-is-forwarded-and-what-changes"),
        (
            "Sidecar: one gateway next to one API server",
            "sidecar-one-gateway-next-to-one-api-server",
        ),
        ("nginx `auth_request`", "nginx-auth_request"),
        (
            "The lean engine's parser (`serve --engine lean`)",
            "the-lean-engines-parser-serve---engine-lean",
        ),
        ("Where to change what", "where-to-change-what"),
    ],
)
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_anchor_or_file_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Twice\n\n## Twice\n\n## With `code`\n\n```sh\n# not a heading\n```\n\n"
        "[ok](#twice-1) [bad](#not-a-heading) [`code`](other.md#x) `[no](#link)`\n"
    )
    (tmp_path / "other.md").write_text("# X\n")
    assert anchors(page) == {"title", "twice", "twice-1", "with-code"}
    assert links(page) == ["#twice-1", "#not-a-heading", "other.md#x"]
    assert resolve(page, "other.md#x") == (tmp_path / "other.md", "x")
    assert "x" in anchors(tmp_path / "other.md")
    assert "not-a-heading" not in anchors(page)
