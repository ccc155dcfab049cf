"""`routes`: print the compiled route table (or its overlapping templates) as text or JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.routes import Overlap, Route, RouteRule, RouteTable
from gateway.settings import Settings

__all__ = ["load_table", "overlap_dict", "register", "route_dict"]

TABLE_SETTINGS = {"routes", "routes_supplementary", "api_prefix", "relative_url_root"}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "routes",
        help="Print the compiled job-token route table.",
        description="Print every route of the table: method, GitLab path template, the "
        "policies it needs (None = not controllable), whose resource it touches, and whether "
        "only the token's own project may use it. Exit 2 if the table does not load.",
    )
    Settings.add_arguments(parser, only=TABLE_SETTINGS)
    parser.add_argument("--json", action="store_true", help="Print JSON instead of text.")
    parser.add_argument(
        "--overlaps",
        action="store_true",
        help="Print the pairs of templates some path matches both ways, and the route that wins.",
    )
    parser.set_defaults(func=_run)


def load_table(settings: Settings) -> RouteTable:
    """The route table the settings name, with the supplementary file as the gate loads it
    (raises PolicyFileError, i.e. exit 2)."""
    return RouteTable.load(
        settings.routes,
        api_prefix=settings.api_prefix,
        relative_url_root=settings.relative_url_root,
        supplementary=settings.routes_supplementary,
    )


def route_dict(table: RouteTable, route: Route) -> dict[str, Any]:
    return {
        "method": route.method,
        "path": route.path,
        "permissions": list(route.permissions),
        "controllable": route.controllable,
        "target": str(table.target_kind(route)),
        "own_project_only": route.own_project_only,
        "rule": str(route.rule),
        "body_file": route.body_file,
        "description": route.description,
    }


def overlap_dict(table: RouteTable, overlap: Overlap) -> dict[str, Any]:
    return {
        "first": overlap.first.name,
        "second": overlap.second.name,
        "witness": table.prefix + overlap.witness,
        "winner": overlap.winner.name if overlap.winner else None,
        "significant": overlap.significant,
    }


def _run(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    table = load_table(settings)
    if args.overlaps:
        overlaps = table.overlaps()
        if args.json:
            print(json.dumps({"overlaps": [overlap_dict(table, o) for o in overlaps]}, indent=2))
        else:
            print(_overlaps_text(table, overlaps))
        return 0
    if args.json:
        document: dict[str, Any] = {"prefix": table.prefix, "source": str(settings.routes)}
        document["routes"] = [route_dict(table, route) for route in table]
        print(json.dumps(document, indent=2))
    else:
        print(_table_text(table))
    return 0


def _table_text(table: RouteTable) -> str:
    lines = [
        f"{'METHOD':<7}{'PERMISSIONS':<42}{'TARGET':<11}{'SCOPE':<13}PATH (under {table.prefix})"
    ]
    for route in table:
        permissions = ", ".join(route.permissions) if route.controllable else "None"
        if route.rule is not RouteRule.PAGE:
            permissions = f"None ({route.rule})"  # a supplementary row, decided by its rule
        scope = "own-project" if route.own_project_only else "-"
        kind = table.target_kind(route)
        lines.append(f"{route.method:<7}{permissions:<42}{kind:<11}{scope:<13}{route.path}")
    page = [route for route in table if route.rule is RouteRule.PAGE]
    uncontrolled = sum(not route.controllable for route in page)
    lines.append(
        f"{len(page)} routes: {len(page) - uncontrolled} controllable, {uncontrolled} None"
    )
    if len(page) < len(table):
        lines.append(f"+ {len(table) - len(page)} supplementary routes")
    return "\n".join(lines)


def _overlaps_text(table: RouteTable, overlaps: list[Overlap]) -> str:
    significant = [o for o in overlaps if o.significant]
    lines = [f"{len(overlaps)} overlapping pairs, {len(significant)} with different authorization"]
    for title, group in (
        ("DIFFERENT AUTHORIZATION", significant),
        ("same authorization (for information)", [o for o in overlaps if not o.significant]),
    ):
        lines.append(f"\n{title}:")
        if not group:
            lines.append("  (none)")
        for overlap in group:
            winner = overlap.winner.name if overlap.winner else "no route"
            lines.append(f"  {overlap.first.name}\n  {overlap.second.name}")
            lines.append(f"    e.g. {table.prefix}{overlap.witness} -> {winner}")
    return "\n".join(lines)
