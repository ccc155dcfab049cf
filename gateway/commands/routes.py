"""`routes`: print the compiled route table (or its overlapping templates, or what differs
between two tables) as text or JSON."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import PolicyFileError
from gateway.routing.file import read_routes
from gateway.routing.overlaps import Overlap
from gateway.routing.table import RouteTable
from gateway.routing.values import Route, RouteRule
from gateway.settings import SHIPPED_TABLES, Settings, shipped_table

__all__ = [
    "TableDiff",
    "diff_routes",
    "load_table",
    "overlap_dict",
    "register",
    "resolve_table",
    "route_dict",
]

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
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--overlaps",
        action="store_true",
        help="Print the pairs of templates some path matches both ways, and the route that wins.",
    )
    what.add_argument(
        "--diff",
        nargs=2,
        metavar=("A", "B"),
        help="Compare two route tables (shipped names "
        + ", ".join(SHIPPED_TABLES)
        + ", or files): routes added in B, removed from A, and changed permissions.",
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
    if args.diff:
        return _diff(args.diff[0], args.diff[1], as_json=args.json)
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


def resolve_table(value: str) -> Path:
    """A shipped table's name (`seed`, `current`) or a route file's path. Raises
    PolicyFileError (exit 2) for neither."""
    if value in SHIPPED_TABLES:
        return shipped_table(value)
    path = Path(value)
    if not path.is_file():
        names = ", ".join(SHIPPED_TABLES)
        raise PolicyFileError(f"{value}: no such route file (and not a shipped table: {names})")
    return path


@dataclass(frozen=True, slots=True)
class TableDiff:
    """Routes keyed by (method, path): only in B, only in A, and in both with other policies."""

    added: list[Route]
    removed: list[Route]
    changed: list[tuple[Route, Route]]  # (in A, in B)
    unchanged: int


def diff_routes(before: list[Route], after: list[Route]) -> TableDiff:
    """What changes from `before` to `after`. A change is a different permission set or a
    different `controllable` (a policy-gated route becoming `None` or back); descriptions and
    row order are ignored. Lists are sorted by path then method, so the output is stable."""
    old = {(route.method, route.path): route for route in before}
    new = {(route.method, route.path): route for route in after}

    def order(key: tuple[str, str]) -> tuple[str, str]:
        return (key[1], key[0])

    added = [new[key] for key in sorted(new.keys() - old.keys(), key=order)]
    removed = [old[key] for key in sorted(old.keys() - new.keys(), key=order)]
    changed = [
        (old[key], new[key])
        for key in sorted(old.keys() & new.keys(), key=order)
        if _grant(old[key]) != _grant(new[key])
    ]
    unchanged = len(old.keys() & new.keys()) - len(changed)
    return TableDiff(added, removed, changed, unchanged)


def _grant(route: Route) -> tuple[bool, frozenset[str]]:
    return (route.controllable, frozenset(route.permissions))


def _policies(route: Route) -> str:
    return ", ".join(route.permissions) if route.controllable else "None"


def _diff(first: str, second: str, *, as_json: bool) -> int:
    paths = resolve_table(first), resolve_table(second)
    # Each table must also compile (no conflicting templates): same check as loading it to serve.
    before, after = (RouteTable.compile(read_routes(path), source=str(path)) for path in paths)
    diff = diff_routes(list(before), list(after))
    if as_json:
        document = {
            "a": {"table": first, "file": str(paths[0]), "routes": len(before)},
            "b": {"table": second, "file": str(paths[1]), "routes": len(after)},
            "added": [_entry(route) for route in diff.added],
            "removed": [_entry(route) for route in diff.removed],
            "changed": [
                {
                    "method": b.method,
                    "path": b.path,
                    "before": _entry(a)["permissions"],
                    "after": _entry(b)["permissions"],
                }
                for a, b in diff.changed
            ],
            "unchanged": diff.unchanged,
        }
        print(json.dumps(document, indent=2))
        return 0
    lines = [
        f"--- {first}: {_shown(paths[0])} ({len(before)} routes)",
        f"+++ {second}: {_shown(paths[1])} ({len(after)} routes)",
    ]
    for title, sign, routes in (
        ("added", "+", diff.added),
        ("removed", "-", diff.removed),
    ):
        lines.append(f"\n{title} ({len(routes)}):")
        lines.extend(
            f"  {sign} {route.method:<7}{route.path}  [{_policies(route)}]" for route in routes
        )
        if not routes:
            lines.append("  (none)")
    lines.append(f"\nchanged permissions ({len(diff.changed)}):")
    lines.extend(
        f"  ~ {b.method:<7}{b.path}  [{_policies(a)}] -> [{_policies(b)}]" for a, b in diff.changed
    )
    if not diff.changed:
        lines.append("  (none)")
    lines.append(
        f"\n{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed, "
        f"{diff.unchanged} unchanged"
    )
    print("\n".join(lines))
    return 0


def _entry(route: Route) -> dict[str, Any]:
    permissions: list[str] | None = list(route.permissions) if route.controllable else None
    return {"method": route.method, "path": route.path, "permissions": permissions}


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is under it (shorter, and the same
    output on every checkout), else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
