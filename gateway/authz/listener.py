"""The decision listener's start/stop hook for `serve`, and `serve --port 0` (it alone).

`start_listener` binds `decision_host:decision_port` in a worker beside the proxy listener,
sharing that worker's gate (store, cache, route table, reload). The limits are the proxy
port's (`max_line_size`, `max_field_size`, `max_headers`, `client_header_timeout`,
`client_body_timeout`, `max_connections`); a check request's body (Envoy's
`with_request_body`) is bounded by `body_inspect_limit`, as an inspected body is on the proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gateway.authz.service import Decider, DecisionService
from gateway.errors import ConfigError
from gateway.ops import metrics
from gateway.ops.exchange import Recorder
from gateway.settings import Settings
from gateway.wire import Limits, WireServer

__all__ = ["DecisionListener", "run_alone", "start_listener"]

_log = structlog.get_logger("gateway.authz")


class DecisionListener:
    """A started decision listener; `stop` drains it."""

    def __init__(self, server: WireServer, recorder: Recorder) -> None:
        self.server = server
        self._recorder = recorder

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def urls(self) -> list[str]:
        return [
            f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
            for host, port in self.server.addresses
        ]

    async def stop(self, grace: float) -> None:
        try:
            await self.server.stop(grace)
        finally:
            self._recorder.close()


def limits_for(settings: Settings) -> Limits:
    return Limits(
        max_line_size=settings.max_line_size,
        max_field_size=settings.max_field_size,
        max_headers=settings.max_headers,
        max_body=settings.body_inspect_limit,
        header_timeout=settings.client_header_timeout,
        body_timeout=settings.client_body_timeout,
        max_connections=settings.max_connections,
    )


async def start_listener(
    settings: Settings, gate: Decider, *, reuse_port: bool = False
) -> DecisionListener:
    """Bind the decision listener; a bind failure is a one-line ConfigError naming the setting."""
    assert settings.decision_port is not None
    recorder = Recorder()
    server = WireServer(DecisionService(settings, gate, recorder), limits_for(settings))
    server.on_overload.append(metrics.CONNECTIONS_REFUSED.inc)
    host, port = settings.decision_host, settings.decision_port
    try:
        await server.start(host, port, reuse_port=reuse_port)
    except OSError as exc:
        recorder.close()
        raise ConfigError(
            f"--decision-port / GATEWAY_DECISION_PORT: cannot listen on {host}:{port}: "
            f"{exc.strerror or exc}"
        ) from None
    listener = DecisionListener(server, recorder)
    _log.info("decision_listening", decision=listener.urls)
    return listener


async def run_alone(
    settings: Settings,
    *,
    admin: bool,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """`serve --port 0 --decision-port P`: the decision and admin listeners, no proxy."""
    from gateway.core.gate import Gate
    from gateway.proxy import server  # here: gateway.proxy.server imports this module lazily too

    draining = asyncio.Event()
    gate = await Gate.open(settings)
    listener: DecisionListener | None = None
    admin_runner = None
    try:
        listener = await start_listener(settings, gate, reuse_port=reuse_port)
        metrics.init_labels(server.store_kind(settings.store))
        group: metrics.GroupMetrics | None = None
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
            proxy=[],
            decision=listener.urls,
            mode=settings.mode.value,
            config=server.effective_config(settings),
        )
        if on_ready is not None:
            on_ready()
        await server.wait_for_stop(lambda: server.reload_gate(gate, settings, group))
        _log.info("draining", grace_period=settings.grace_period)
    finally:
        draining.set()
        if listener is not None:
            await listener.stop(settings.grace_period)
        if admin_runner is not None:
            await admin_runner.cleanup()
        await gate.close()
    _log.info("stopped")
    return 0
