"""`check METHOD PATH`: which route a request would match, what it needs, whose resource it is.

The route part (`explain_route`) returns data and prints nothing, so later options (an offline
decision with `--token` and `--store`, through the same Gate code) can extend the report.
Exit codes: 0 matched, 1 no route or refused, 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from multidict import CIMultiDict

from gateway.commands.routes import TABLE_SETTINGS, load_table, route_dict
from gateway.core.decision import Decision, Reason
from gateway.core.gate import Gate
from gateway.core.request import RequestView
from gateway.errors import ConfigError
from gateway.routing.table import RouteTable
from gateway.routing.targets import Refusal, check_target
from gateway.routing.values import RouteMatch
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
        "Exit 0 matched, 1 no route or refused, 2 usage or configuration errors. "
        "With --token or --header, decide offline against --store: exit 0 allowed, 1 denied.",
    )
    parser.add_argument(
        "method", metavar="METHOD", help="HTTP method (case-sensitive: GET, PUT, ...)"
    )
    parser.add_argument("path", metavar="PATH", help="raw request-target, percent-encoded as sent")
    Settings.add_arguments(parser, only=TABLE_SETTINGS | DECISION_SETTINGS)
    parser.add_argument("--json", action="store_true", help="Print JSON instead of text.")
    add_decision_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    table = load_table(settings)
    report = explain_route(table, args.method, args.path)
    verdict = explain_decision(settings, args) if decision_requested(args) else None
    if args.json:
        document = report.to_dict(table)
        if verdict is not None:
            document["decision"] = decision_dict(verdict)
        print(json.dumps(document, indent=2))
    else:
        print(render_text(table, report))
        if verdict is not None:
            print(render_decision(verdict))
    if verdict is not None:
        return 0 if verdict.allowed else 1
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


# --------------------------------------------------------------------------- the decision
# `check METHOD PATH --token T --store URL`: the verdict offline, through the very
# `Gate.evaluate` the proxy runs (route, target, permissions needed and granted, verdict).
# Exit 0 allowed, 1 denied.

DECISION_SETTINGS = {"store", "store_timeout", "require_job_token", "git_http", "job_token_prefix"}


def add_decision_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        help="decide for this job token (sent as JOB-TOKEN; never printed, only its fingerprint)",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="add a request header, e.g. 'Authorization: Basic ...' (repeatable)",
    )


def decision_requested(args: argparse.Namespace) -> bool:
    return bool(args.token or args.header)


def _view(args: argparse.Namespace) -> RequestView:
    headers: CIMultiDict[str] = CIMultiDict()
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise ConfigError("--header must look like 'Name: value' (got a header without ':')")
        headers.add(name.strip(), value.strip())
    if args.token:
        headers.add("JOB-TOKEN", args.token)
    return RequestView(args.method, args.path, headers)


def explain_decision(settings: Settings, args: argparse.Namespace) -> Decision:
    """The gate's decision for the request the arguments describe (store I/O happens here).

    A store that does not exist is a ConfigError (exit 2), as for `serve`."""
    view = _view(args)

    async def run() -> Decision:
        gate = await Gate.open(settings)
        try:
            return await gate.evaluate(view)
        finally:
            await gate.close()

    return asyncio.run(run())


def decision_dict(verdict: Decision) -> dict[str, Any]:
    audit = verdict.audit
    return {
        "allowed": verdict.allowed,
        "reason": str(verdict.reason),
        "status": verdict.status,
        "message": verdict.message or None,
        "token": audit.fingerprint,
        "revoked": verdict.reason is Reason.TOKEN_REVOKED,
        "job_id": audit.job_id,
        "source_project": audit.source_project,
        "target": audit.target,
        "route": audit.route,
        "required": list(audit.required),
        "granted": list(audit.granted),
    }


def render_decision(verdict: Decision) -> str:
    audit = verdict.audit
    state = "allowed (forwarded)" if verdict.allowed else f"denied ({verdict.status})"
    lines = [f"  decision     {state}: {verdict.reason}"]
    if verdict.message:
        lines.append(f"  message      {verdict.message}")
    if audit.fingerprint:
        job = f"job {audit.job_id} of {audit.source_project}" if audit.job_id else "no job found"
        if verdict.reason is Reason.TOKEN_REVOKED:
            job = f"job {audit.job_id}, revoked" if audit.job_id else "revoked"
            job += " (lift with `store unrevoke`)"
        lines.append(f"  token        {audit.fingerprint}, {job}")
    if audit.target:
        lines.append(f"  accessed     {audit.target}")
    if audit.route:
        lines.append(f"  needs        {', '.join(audit.required) or '-'}")
    if audit.granted:
        lines.append(f"  granted      {', '.join(audit.granted)}")
    return "\n".join(lines)
