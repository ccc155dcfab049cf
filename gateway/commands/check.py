"""`check METHOD PATH`: which route a request would match, what it needs, whose resource it is.

The route part (`explain_route`) returns data and prints nothing, so later options (an offline
decision with `--token` and `--store`, through the same Gate code) can extend the report.
Exit codes: 0 matched, 1 no route or refused, 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.commands.routes import TABLE_SETTINGS, load_table, route_dict
from gateway.routes import Refusal, RouteMatch, RouteTable, check_target
from gateway.settings import Settings

__all__ = ["Outcome", "RouteReport", "explain_route", "register"]


class Outcome(StrEnum):
    MATCHED = "matched"
    REFUSED = "refused"  # an ambiguous request-target: refused before any route lookup
    NO_ROUTE = "no_route"  # an API path no job-token route matches
    NOT_API = "not_api"  # outside relative URL root + API prefix


@dataclass(frozen=True, slots=True)
class RouteReport:
    method: str
    target: str
    outcome: Outcome
    match: RouteMatch | None = None
    refusal: Refusal | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome is Outcome.MATCHED else 1

    def to_dict(self, table: RouteTable) -> dict[str, Any]:
        found, refusal = self.match, self.refusal
        return {
            "request": {"method": self.method, "target": self.target},
            "result": str(self.outcome),
            "route": route_dict(table, found.route) if found else None,
            "params": dict(found.params) if found else None,
            "target": {"kind": str(found.target.kind), "ref": found.target.ref} if found else None,
            "refusal": {"reason": str(refusal.reason), "detail": refusal.detail}
            if refusal
            else None,
        }


def explain_route(table: RouteTable, method: str, raw_target: str) -> RouteReport:
    """What the route table says about a request; never raises for any input."""
    result = table.match(method, raw_target)
    if isinstance(result, Refusal):
        return RouteReport(method, raw_target, Outcome.REFUSED, refusal=result)
    if isinstance(result, RouteMatch):
        return RouteReport(method, raw_target, Outcome.MATCHED, match=result)
    outcome = Outcome.NO_ROUTE if table.in_api(raw_target) else Outcome.NOT_API
    return RouteReport(method, raw_target, outcome)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="Explain which route a request matches and what a job token needs for it.",
        description="Match METHOD and PATH (the raw request-target, e.g. "
        "'/api/v4/projects/group%%2Fproject/releases?x=1') against the route table. "
        "Exit 0 matched, 1 no route or refused, 2 usage or configuration errors.",
    )
    parser.add_argument(
        "method", metavar="METHOD", help="HTTP method (case-sensitive: GET, PUT, ...)"
    )
    parser.add_argument("path", metavar="PATH", help="raw request-target, percent-encoded as sent")
    Settings.add_arguments(parser, only=TABLE_SETTINGS)
    parser.add_argument("--json", action="store_true", help="Print JSON instead of text.")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    table = load_table(Settings.from_args(args))
    report = explain_route(table, args.method, args.path)
    if args.json:
        print(json.dumps(report.to_dict(table), indent=2))
    else:
        print(render_text(table, report))
    return report.exit_code


def render_text(table: RouteTable, report: RouteReport) -> str:
    lines = [f"{report.method} {report.target}", f"  result       {report.outcome}"]
    if report.refusal is not None:
        lines.append(f"  reason       {report.refusal.reason}: {report.refusal.detail}")
        if check_target(report.target) is not None:
            lines.append("               (refused for every request, with or without a token)")
    elif report.match is not None:
        lines.extend(_match_lines(report.match))
    elif report.outcome is Outcome.NO_ROUTE:
        lines.append(
            "  detail       an API path no job-token route matches: job tokens are refused"
        )
    else:
        lines.append(f"  detail       not under {table.prefix or '/'}: not an API request")
    return "\n".join(lines)


def _match_lines(found: RouteMatch) -> list[str]:
    route = found.route
    needs = ", ".join(route.permissions) if route.controllable else "None"
    if not route.controllable:
        needs += " (job tokens allowed; fine-grained permissions cannot restrict it)"
    lines = [
        f"  route        {route.name}  ({route.description})",
        f"  permissions  {needs}",
        f"  target       {found.target.kind}"
        + (f" {found.target.ref}" if found.target.ref else ""),
    ]
    if route.own_project_only:
        lines.append("  scope        the token's own project only (job_token_scope: :project)")
    params = ", ".join(f"{name}={value}" for name, value in found.params.items())
    lines.append(f"  params       {params or '-'}")
    return lines
