"""`suggest`: least-privilege allowlists from the gateway's own request log lines.

    python -m gateway suggest --from-log FILE... [--from-store URL] [--store URL]
                              [--format yaml|graphql|report]

`FILE` `-` is stdin; `--from-store` adds the aggregate `serve --observations N` keeps in Redis. Without `--store`: the suggested allowlists and the projects they name.
With `--store`: the store's content with the suggestion added (a complete file for `store load`),
the GraphQL to apply the same change on GitLab, or the report of additions and removal
candidates. Malformed log lines are counted and reported on stderr (and in the report).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from redis.exceptions import RedisError

from gateway.errors import ConfigError, StoreUnavailable
from gateway.settings import Settings
from gateway.stores import open_store
from gateway.stores.grants import Grants
from gateway.tools import formats
from gateway.tools.observations import Reading, read_sources, read_store
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
        default=[],
        help="gateway log files with JSON request lines (`-` for stdin)",
    )
    parser.add_argument(
        "--from-store",
        metavar="URL",
        help="also read the aggregate `serve --observations N` keeps in this redis:// store",
    )


def read_logs(args: argparse.Namespace, command: str) -> Reading:
    """The observations in `--from-log` and `--from-store`; ConfigError for a file or store that
    cannot be read. Malformed lines are announced on stderr (never silently skipped)."""
    if not args.logs and not args.from_store:
        raise ConfigError("give --from-log FILE... and/or --from-store URL")
    try:
        reading = read_sources(args.logs, sys.stdin)
    except OSError as exc:
        raise ConfigError(f"--from-log: {exc}") from None
    if args.from_store:
        reading = _read_store(args.from_store, reading)
    if reading.malformed:
        print(f"{command}: warning: {reading.summary()}", file=sys.stderr)
    if not reading.observations and reading.ignored:
        print(
            f"{command}: warning: no JSON request lines with a job-token decision "
            "(was the log written with --log-format json?)",
            file=sys.stderr,
        )
    return reading


def _read_store(url: str, reading: Reading) -> Reading:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"--from-store: the aggregate lives in a redis:// store, not {url!r}")
    try:
        return read_store(url, reading, timeout=Settings.model_fields["store_timeout"].default)
    except (OSError, RedisError) as exc:
        raise ConfigError(f"--from-store: {url}: {exc}") from None


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
        + ", ".join([*args.logs, *([args.from_store] if args.from_store else [])])
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
