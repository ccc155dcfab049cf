"""The shell commands README.md shows, as a reader would paste them: the ```sh blocks under one
heading, backslash continuations joined. Tests run these (tests/docker/, tests/test_deploy.py)
rather than copies, so the README cannot drift from what is tested."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

__all__ = ["deployment_sections", "readme_commands"]


def _section(heading: str) -> str:
    text = README.read_text().split(f"\n### {heading}\n", 1)[1]
    return text.split("\n### ", 1)[0].split("\n## ", 1)[0]


def readme_commands(heading: str) -> list[str]:
    """The commands of the ```sh blocks under README heading `### {heading}`, in order."""
    commands: list[str] = []
    blocks = re.findall(r"^ *```sh\n(.*?)^ *```", _section(heading), re.MULTILINE | re.DOTALL)
    for block in blocks:
        joined = re.sub(r"\\\n\s*", "", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip()]
    return commands


def deployment_sections() -> list[str]:
    """The `###` headings of README "Deployment" that show shell commands."""
    text = README.read_text().split("\n## Deployment\n", 1)[1].split("\n## ", 1)[0]
    headings = re.findall(r"^### (.+)$", text, re.MULTILINE)
    return [heading for heading in headings if readme_commands(heading)]
