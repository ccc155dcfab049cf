"""`policies import PAGE [-o FILE]`: generate the route table from GitLab's generated page
(either format: see gateway/tools/importer.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.errors import PolicyFileError
from gateway.tools import importer
from gateway.tools.importer import PageFormat

__all__ = ["DEFAULT_OUTPUTS", "register"]

# Where each format's table lives by default: the files `--routes seed|current` name
# (gateway.settings.SHIPPED_TABLES), relative to the working directory (the checkout).
DEFAULT_OUTPUTS = {
    PageFormat.SEED: Path("policies") / "routes.yaml",
    PageFormat.CURRENT: Path("policies") / "routes-current.yaml",
}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "policies", help="Manage policy data files (import GitLab's route table)."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imports: argparse.ArgumentParser = actions.add_parser(
        "import",
        help="Generate the route table from GitLab's page 'Fine-grained permissions for CI/CD "
        "job tokens'.",
        description="Parse GitLab's generated page (doc/ci/jobs/fine_grained_permissions.md) "
        "and write the route table as YAML. Both formats of the page are read (detected from "
        "the table headers): the seed's single `Permissions | Permission Names | Path | "
        "Description` table, and the current per-category `Permission | API endpoint | "
        "Permission name | Scope` tables with the 'Unavailable API endpoints' table (imported "
        "as `None` rows). A malformed page stops with its line number (exit 2) and leaves the "
        "previous file untouched.",
    )
    imports.add_argument("page", metavar="PAGE", type=Path, help="the page (Markdown)")
    imports.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help=f"file to write (default: {DEFAULT_OUTPUTS[PageFormat.SEED]} for a page in the "
        f"seed's format, {DEFAULT_OUTPUTS[PageFormat.CURRENT]} for the current format)",
    )
    imports.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    output: Path = args.output or DEFAULT_OUTPUTS[_page_format(args.page)]
    rows = importer.import_page(args.page, output)
    uncontrolled = sum(not row.controllable for row in rows)
    print(f"imported {len(rows)} routes ({uncontrolled} None) from {args.page} into {output}")
    return 0


def _page_format(page: Path) -> PageFormat:
    """The page's format (the seed's when no table header is found: the import then reports
    the missing table with its line)."""
    try:
        text = page.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"{page}: cannot read page: {exc}") from None
    return importer.detect_format(text) or PageFormat.SEED
