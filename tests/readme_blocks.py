"""The shell commands docs/deployment.md shows, as a reader would paste them: the ```sh blocks
under one heading, backslash continuations joined. Tests run these (tests/docker/,
tests/test_deploy.py) rather than copies, so the page cannot drift from what is tested."""

from __future__ import annotations

import re
from pathlib import Path

DEPLOYMENT = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"

__all__ = ["DEPLOYMENT", "deployment_sections", "readme_commands"]


def _headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """(line index, level, title) of every Markdown heading outside code fences."""
    found: list[tuple[int, int, str]] = []
    fenced = False
    for index, line in enumerate(lines):
        if re.match(r"^\s*```", line):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^(#+) (.+)$", line)):
            found.append((index, len(match.group(1)), match.group(2)))
    return found


def _section(heading: str) -> str:
    """The text under `heading` (any level) up to the next heading of the same or a higher level."""
    lines = DEPLOYMENT.read_text().splitlines()
    headings = _headings(lines)
    start, level = next((i, lvl) for i, lvl, title in headings if title == heading)
    stop = next((i for i, lvl, _title in headings if i > start and lvl <= level), len(lines))
    return "\n".join(lines[start + 1 : stop]) + "\n"


def readme_commands(heading: str) -> list[str]:
    """The commands of the ```sh blocks under docs/deployment.md heading `heading`, in order."""
    commands: list[str] = []
    blocks = re.findall(r"^ *```sh\n(.*?)^ *```", _section(heading), re.MULTILINE | re.DOTALL)
    for block in blocks:
        joined = re.sub(r"\\\n\s*", "", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip()]
    return commands


def deployment_sections() -> list[str]:
    """The `##` headings of docs/deployment.md that show shell commands."""
    lines = DEPLOYMENT.read_text().splitlines()
    titles = [title for _i, level, title in _headings(lines) if level == 2]
    return [title for title in titles if readme_commands(title)]
