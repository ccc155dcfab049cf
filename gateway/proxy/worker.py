"""A worker's lifecycle around the listeners on `gateway.wire`: the lean proxy and the decision
listener (`gateway.proxy.server.run_worker` is the aiohttp engine's).

run_listeners(settings, start_proxy, admin=..., reuse_port=..., on_ready=..., **fields) -> 0
  opens the gate; starts the proxy listener (`start_proxy(gate)`, None: `serve --port 0`), the
  decision listener when `decision_port` is set, the admin listener when `admin`; logs
  `listening` (with `fields`); serves until SIGTERM/SIGINT (SIGHUP reloads the gate); then
  readiness turns 503 and both listeners drain within the one `grace_period`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import structlog

from gateway.ops import log, metrics
from gateway.settings import Settings
from gateway.wire import Limits

if TYPE_CHECKING:
    from gateway.core.gate import Gate

__all__ = ["Started", "limits_for", "run_listeners"]

_log = structlog.get_logger("gateway.proxy.worker")


class Started(Protocol):
    """A started listener."""

    @property
    def urls(self) -> list[str]: ...

    async def stop(self, grace: float) -> None: ...


def limits_for(settings: Settings, *, max_body: int) -> Limits:
    """A wire listener's limits: the proxy port's settings; `max_body` is what a connection
    may buffer (0: bodies are not buffered)."""
    return Limits(
        max_line_size=settings.max_line_size,
        max_field_size=settings.max_field_size,
        max_headers=settings.max_headers,
        max_body=max_body,
        header_timeout=settings.client_header_timeout,
        body_timeout=settings.client_body_timeout,
        max_connections=settings.max_connections,
    )


async def run_listeners(
    settings: Settings,
    start_proxy: Callable[[Gate], Awaitable[Started]] | None,
    *,
    admin: bool,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
    output: log.Output | None = None,
    **fields: object,
) -> int:
    """See the module docstring. A listener that cannot start raises ConfigError."""
    from gateway.authz.listener import start_listener
    from gateway.core.gate import Gate
    from gateway.proxy import server  # here: gateway.proxy.server imports this module lazily

    draining = asyncio.Event()
    gate = await Gate.open(settings)
    proxy: Started | None = None
    decision: Started | None = None
    admin_runner = None
    stopping = False
    try:
        if start_proxy is not None:
            proxy = await start_proxy(gate)
        metrics.init_labels(server.store_kind(settings.store))
        group: metrics.GroupMetrics | None = None
        if settings.decision_port is not None:
            decision = await start_listener(settings, gate, reuse_port=reuse_port, output=output)
        if admin:

            async def readiness() -> tuple[bool, str]:
                if draining.is_set():
                    return False, "draining: shutting down"
                return await gate.ready()

            registry = metrics.collecting_registry(None)
            group = server.group_metrics(settings, registry)
            admin_runner = await server.start_admin(settings, readiness, registry)
        _log.info(
            "listening",
            proxy=proxy.urls if proxy is not None else [],
            decision=decision.urls if decision is not None else None,
            **fields,
            config=server.effective_config(settings),
        )
        if on_ready is not None:
            on_ready()
        await server.wait_for_stop(lambda: server.reload_gate(gate, settings, group))
        stopping = True
        if proxy is None:  # (the proxy listener logs its own `draining`)
            _log.info("draining", grace_period=settings.grace_period)
    finally:
        draining.set()  # readiness turns 503 while in-flight requests finish
        stops = [decision.stop(settings.grace_period)] if decision is not None else []
        if proxy is not None:
            stops.append(proxy.stop(settings.grace_period if stopping else 0.0))
        await asyncio.gather(*stops)  # both listeners drain within the one grace period
        if admin_runner is not None:
            await admin_runner.cleanup()
        await gate.close()
    _log.info("stopped")
    return 0
