"""`audit`: who called what, from the gateway's own request log lines.

    python -m gateway audit --from-log FILE... [--from-store URL] [--format csv|json|report]

Per source project -> target project and route: request count, verdicts, reason codes, first
and last seen. `FILE` `-` is stdin; malformed lines are counted and reported on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.commands.suggest import add_log_arguments, read_logs
from gateway.tools import audit

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "audit",
        help="report who used what: job-token requests per source, target and route",
        description="Read the JSON request lines `serve` wrote and list, per source project, "
        "target project and route: requests, allowed, denied (and dry-run would-be denials), "
        "reason codes, first and last seen.",
    )
    add_log_arguments(parser)
    parser.add_argument(
        "--format",
        choices=("csv", "json", "report"),
        default="report",
        help="CSV (one row per source, target, route), JSON, or a readable report (default)",
    )
    parser.set_defaults(func=_audit)


def _audit(args: argparse.Namespace) -> int:
    reading = read_logs(args, "audit")
    rows = audit.audit(reading.observations)
    if args.format == "csv":
        sys.stdout.write(audit.csv_text(rows))
    elif args.format == "json":
        sys.stdout.write(audit.json_text(rows, reading))
    else:
        sys.stdout.write(audit.report(rows, reading))
    return 0
