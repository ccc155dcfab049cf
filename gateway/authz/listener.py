"""The decision listener's start/stop hook for `serve`, and `serve --port 0` (it alone).

`start_listener` binds `decision_host:decision_port` in a worker beside the proxy listener,
sharing that worker's gate (store, cache, route table, reload). The limits are the proxy
port's (`max_line_size`, `max_field_size`, `max_headers`, `client_header_timeout`,
`client_body_timeout`, `max_connections`); a check request's body (Envoy's
`with_request_body`) is bounded by `body_inspect_limit`, as an inspected body is on the proxy.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from gateway.authz.service import Decider, DecisionService
from gateway.errors import ConfigError
from gateway.ops import log, metrics
from gateway.ops.exchange import Recorder
from gateway.proxy import worker
from gateway.settings import Settings
from gateway.wire import WireServer

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
        return self.server.urls

    async def stop(self, grace: float) -> None:
        try:
            await self.server.stop(grace)
        finally:
            self._recorder.close()


async def start_listener(
    settings: Settings,
    gate: Decider,
    *,
    reuse_port: bool = False,
    output: log.Output | None = None,
) -> DecisionListener:
    """Bind the decision listener (request lines to `output`: see `Recorder`); a bind failure
    is a one-line ConfigError naming the setting."""
    assert settings.decision_port is not None
    recorder = Recorder(output=output)
    limits = worker.limits_for(settings, max_body=settings.body_inspect_limit)
    server = WireServer(DecisionService(settings, gate, recorder), limits)
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
    output: log.Output | None = None,
) -> int:
    """`serve --port 0 --decision-port P`: the decision and admin listeners, no proxy."""
    return await worker.run_listeners(
        settings,
        None,
        admin=admin,
        reuse_port=reuse_port,
        on_ready=on_ready,
        output=output,
        mode=settings.mode.value,
    )
