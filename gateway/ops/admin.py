"""The admin listener (its own host and port, never the proxy's): health, readiness, metrics.

    GET /-/health   200 {"status": "ok"} while the process serves at all
    GET /-/ready    200 {"status": "ready", "detail": ..., "mode": ..., "config": {...}} when the
                    route table is loaded and the store answers (`gate.ready()`) and, with
                    several workers, all of them run; 503 {"status": "not ready", ...}
                    otherwise. `mode` (enforce|dry-run) and `config` (the effective settings,
                    passwords redacted) are the `info` given to `create_admin_app`.
    GET /metrics    Prometheus text format (every worker's values when there are several)

With `--workers N` it runs once, in the supervisor, and aggregates the workers' metrics through
prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["INFO", "READINESS", "REGISTRY", "Readiness", "create_admin_app"]

Readiness = Callable[[], Awaitable[tuple[bool, str]]]

READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
REGISTRY = web.AppKey("registry", CollectorRegistry)
INFO: web.AppKey[dict[str, Any]] = web.AppKey("info")


def create_admin_app(
    readiness: Readiness, registry: CollectorRegistry, info: dict[str, Any] | None = None
) -> web.Application:
    """The admin application; `readiness()` says whether the proxy can serve, and why not;
    `info` (JSON values) is added to every `/-/ready` answer."""
    app = web.Application()
    app[READINESS] = readiness
    app[REGISTRY] = registry
    app[INFO] = info or {}
    app.router.add_get("/-/health", _health)
    app.router.add_get("/-/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    return app


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    try:
        ready, detail = await request.app[READINESS]()
    except Exception as exc:  # a readiness probe answers; it never crashes
        ready, detail = False, f"readiness check failed: {type(exc).__name__}: {exc}"
    info = request.app[INFO]
    if ready:
        return web.json_response({"status": "ready", "detail": detail, **info})
    return web.json_response({"status": "not ready", "detail": detail, **info}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    # Collecting reads every worker's files in multiprocess mode: keep it off the event loop.
    body = await asyncio.to_thread(generate_latest, request.app[REGISTRY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
