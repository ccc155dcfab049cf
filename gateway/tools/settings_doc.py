"""The configuration reference (docs/configuration.md), generated from the `Settings` fields so it
cannot drift.

    python -m gateway.tools.settings_doc            # print the block
    python -m gateway.tools.settings_doc --write    # rewrite the block in docs/configuration.md
    python -m gateway.tools.settings_doc --check    # exit 1 when docs/configuration.md's block differs

The block sits between `<!-- settings:begin -->` and `<!-- settings:end -->`; everything outside
the markers is left byte for byte. tests/test_settings_doc.py fails when the page is stale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gateway.settings import Settings, env_for, flag_for

__all__ = ["BEGIN", "END", "REGENERATE", "TARGET", "render_block", "render_table", "replace_block"]

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
REPO = Path(__file__).resolve().parents[2]  # the checkout: gateway/tools/settings_doc.py
TARGET = REPO / "docs" / "configuration.md"
REGENERATE = "python -m gateway.tools.settings_doc --write"
MiB = 1024 * 1024


def render_default(value: Any) -> str:
    """A default as a reader would type it, independent of the machine that generated it."""
    if value is None:
        return "*(unset)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, Path):
        # Defaults next to the package (the route table) are shown relative to the checkout.
        shown = value.relative_to(REPO) if value.is_relative_to(REPO) else value
        return f"`{shown.as_posix()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"`{value}` ({value // MiB} MiB)"
    if value in ("", []):
        return "*(empty)*"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(model: type[BaseModel] = Settings) -> str:
    """One row per field: flag, environment variable, default, meaning (the field description).

    Raises ValueError naming any field without a description: the table is the documentation.
    """
    missing = [name for name, field in model.model_fields.items() if not field.description]
    if missing:
        raise ValueError(f"settings without a description: {', '.join(missing)}")
    lines = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        flag = f"`{flag_for(name)}`"
        if field.annotation is bool:
            flag = f"`{flag_for(name)}` / `--no-{flag_for(name)[2:]}`"
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        description = _cell(field.description or "")
        lines.append(f"| {flag} | `{env_for(name)}` | {render_default(default)} | {description} |")
    return "\n".join(lines) + "\n"


def render_block(model: type[BaseModel] = Settings) -> str:
    return (
        f"{BEGIN}\n"
        f"<!-- Generated from gateway/settings.py by `{REGENERATE}`; do not edit by hand. -->\n\n"
        f"{render_table(model)}"
        f"{END}"
    )


def replace_block(text: str, block: str) -> str:
    """`text` with the marked block replaced; ValueError unless both markers occur exactly once."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"expected exactly one {BEGIN} and one {END} marker")
    start, stop = text.index(BEGIN), text.index(END)
    if stop < start:
        raise ValueError(f"{END} comes before {BEGIN}")
    return text[:start] + block + text[stop + len(END) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.tools.settings_doc", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the block in the page")
    mode.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    parser.add_argument(
        "--file",
        "--readme",
        dest="target",
        type=Path,
        default=TARGET,
        help="the page holding the block (default: the checkout's docs/configuration.md)",
    )
    args = parser.parse_args(argv)
    block = render_block()
    if not (args.write or args.check):
        print(block)
        return 0
    try:
        current = args.target.read_text(encoding="utf-8")
        wanted = replace_block(current, block)
    except (OSError, ValueError) as exc:
        print(f"settings_doc: error: {args.target}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if current != wanted:
            print(f"{args.target}: configuration reference is stale; run `{REGENERATE}`")
            return 1
        return 0
    if current != wanted:
        args.target.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
