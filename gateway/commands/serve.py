"""`serve`: run the gateway in front of `--upstream` (every setting has a flag and a GATEWAY_* variable)."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.settings import Settings

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="Run the gateway: a streaming reverse proxy enforcing job-token permissions.",
        description="Run the gateway in front of --upstream. Each flag falls back to its "
        "GATEWAY_* environment variable, then to its default. SIGTERM drains, SIGHUP reloads.",
    )
    Settings.add_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # Imported here: the other sub-commands need neither aiohttp's server nor uvloop.
    from gateway.ops import supervisor

    return supervisor.serve(Settings.from_args(args))
