"""`suggest`: least-privilege allowlists from the gateway's own request log lines.

    python -m gateway suggest --from-log FILE... [--store URL] [--format yaml|graphql|report]

`FILE` `-` is stdin. Without `--store`: the suggested allowlists and the projects they name.
With `--store`: the store's content with the suggestion added (a complete file for `store load`),
the GraphQL to apply the same change on GitLab, or the report of additions and removal
candidates. Malformed log lines are counted and reported on stderr (and in the report).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from gateway.errors import ConfigError, StoreUnavailable
from gateway.grants import Grants
from gateway.settings import Settings
from gateway.stores import open_store
from gateway.tools import formats
from gateway.tools.observations import Reading, read_sources
from gateway.tools.suggest import Plan, plan, suggest

__all__ = ["add_log_arguments", "read_logs", "register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "suggest",
        help="turn observed job-token traffic (request log lines) into least-privilege grants",
        description="Read the JSON request lines `serve` wrote (dry-run or enforce) and print, "
        "per target project, the smallest allowlist admitting every request denied only for "
        "want of a grant: project entries with default_permissions false and the policies the "
        "requests required. Requests refused for other reasons contribute nothing.",
    )
    add_log_arguments(parser)
    parser.add_argument(
        "--store",
        metavar="URL",
        help="compare with this store's grants: the YAML becomes its content plus the "
        "suggestion; the report lists additions and removal candidates",
    )
    parser.add_argument(
        "--format",
        choices=("yaml", "graphql", "report"),
        default="yaml",
        help="grants YAML for `store load` (default), GitLab GraphQL mutations, or a report",
    )
    parser.set_defaults(func=_suggest)


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-log",
        dest="logs",
        metavar="FILE",
        nargs="+",
        required=True,
        help="gateway log files with JSON request lines (`-` for stdin)",
    )


def read_logs(args: argparse.Namespace, command: str) -> Reading:
    """The observations in `--from-log`; ConfigError for a file that cannot be read. Malformed
    lines are announced on stderr (never silently skipped)."""
    try:
        reading = read_sources(args.logs, sys.stdin)
    except OSError as exc:
        raise ConfigError(f"--from-log: {exc}") from None
    if reading.malformed:
        print(f"{command}: warning: {reading.summary()}", file=sys.stderr)
    if not reading.observations and reading.ignored:
        print(
            f"{command}: warning: no JSON request lines with a job-token decision "
            "(was the log written with --log-format json?)",
            file=sys.stderr,
        )
    return reading


def _current(url: str) -> Grants:
    timeout = Settings.model_fields["store_timeout"].default

    async def run() -> Grants:
        store = open_store(url, timeout=timeout)
        try:
            return (await store.listing()).grants
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        raise ConfigError(f"--store: {exc}") from None


def _suggest(args: argparse.Namespace) -> int:
    reading = read_logs(args, "suggest")
    suggestion = suggest(reading.observations)
    result: Plan | None = plan(suggestion, _current(args.store)) if args.store else None
    header = (
        "Suggested by `python -m gateway suggest` from "
        + ", ".join(args.logs)
        + (f" against {args.store}" if args.store else "")
        + f".\nRead: {reading.summary()}."
    )
    if reading.first_seen:
        header += f"\nPeriod: {reading.first_seen} .. {reading.last_seen}."
    if args.format == "report":
        sys.stdout.write(formats.report(reading, suggestion, result, args.store))
    elif args.format == "graphql":
        sys.stdout.write(formats.graphql(suggestion, result, header=header))
    elif result is not None:
        sys.stdout.write(formats.yaml_text(result.merged, header=header, complete=True))
    else:
        sys.stdout.write(formats.yaml_text(suggestion.grants(), header=header, complete=False))
    return 0
