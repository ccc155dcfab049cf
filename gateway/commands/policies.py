"""`policies import PAGE [-o FILE]`: generate the route table from GitLab's generated page
(either format: see gateway/importer.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway import importer

__all__ = ["DEFAULT_OUTPUT", "register"]

DEFAULT_OUTPUT = Path("policies") / "routes.yaml"


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
        default=DEFAULT_OUTPUT,
        help=f"file to write (default: {DEFAULT_OUTPUT})",
    )
    imports.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    rows = importer.import_page(args.page, args.output)
    uncontrolled = sum(not row.controllable for row in rows)
    print(f"imported {len(rows)} routes ({uncontrolled} None) from {args.page} into {args.output}")
    return 0
