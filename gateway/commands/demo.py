"""`demo-upstream`: run the demo upstream (gateway.tools.demo), a stand-in for a GitLab API."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.errors import ConfigError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo-upstream",
        help="Run a small upstream that answers like a GitLab API (for demos and tests).",
        description="Answers GET /api/v4/job for the job tokens given with --job, and describes "
        "any other request as JSON (method, raw path, headers, body length and SHA-256).",
    )
    parser.add_argument("--port", type=int, default=8081, help="Port to listen on (8081).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (127.0.0.1).")
    parser.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="TOKEN=JOB_ID:PROJECT_ID[:PROJECT_PATH]",
        help="A job token GET /api/v4/job knows (repeatable).",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway.tools.demo import create_demo_app, parse_job

    try:
        jobs = dict(parse_job(spec) for spec in args.job)
    except ValueError as exc:
        raise ConfigError(f"--job: {exc}") from None
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: {args.port} is not a TCP port")
    try:
        web.run_app(
            create_demo_app(jobs),
            host=args.host,
            port=args.port,
            access_log=None,
            auto_decompress=False,
            handler_cancellation=True,
            print=lambda line: print(line, file=sys.stderr),
        )
    except OSError as exc:
        raise ConfigError(
            f"--port: cannot listen on {args.host}:{args.port}: {exc.strerror}"
        ) from None
    return 0
