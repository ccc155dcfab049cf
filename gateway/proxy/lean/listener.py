"""The lean proxy listener and `serve --engine lean`'s worker lifecycle.

`start_proxy(settings, gate)` binds the proxy port with `ClientConnection`s, an upstream
`Pool` and a `LeanProxy`; `run_lean_worker` is `gateway.proxy.server.run_worker` for this engine:
the same gate (store, cache, route table, SIGHUP reload), the decision listener beside it when
configured, the admin listener, and on SIGTERM a drain of up to `grace_period` seconds.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import structlog

from gateway.core.decision import Reason, refuse
from gateway.errors import ConfigError
from gateway.ops import metrics, observe
from gateway.ops.exchange import Recorder
from gateway.proxy.handler import Decider
from gateway.proxy.headers import HeaderPolicy
from gateway.proxy.lean.connection import ClientConnection, Handler
from gateway.proxy.lean.pipeline import LeanProxy, refusal_bytes
from gateway.settings import Settings
from gateway.wire import Limits
from gateway.wire.client import Pool

__all__ = ["LeanListener", "LeanServer", "run_lean_worker", "start_proxy"]

_log = structlog.get_logger("gateway.proxy.lean")
# The machinery's own refusals, with the aiohttp engine's statuses (its parser answers 400 to
# every head over a limit).
_MACHINE_REASONS = {408: Reason.CLIENT_TIMEOUT}


class LeanServer:
    """The listening socket and its connections (what `ClientConnection` needs)."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        self.handler = handler
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        self.idle = asyncio.Event()
        self._server: asyncio.Server | None = None

    def refusal(self, status: int, detail: str) -> bytes:
        """A refusal the machinery makes (malformed head, limits, timeouts); it closes."""
        status = 400 if status in (414, 431) else status
        reason = _MACHINE_REASONS.get(status, Reason.BAD_FRAMING)
        return refusal_bytes(refuse(reason, detail or None, status=status, close=True), None)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        assert self._server is not None
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def start(self, host: str, port: int, *, reuse_port: bool) -> None:
        from gateway.proxy.server import _Overloaded  # the aiohttp engine's: one 503 `overloaded`

        limit = self.limits.max_connections

        def protocol() -> asyncio.BaseProtocol:
            if len(self.connections) < limit:
                return ClientConnection(self)
            return _Overloaded(limit)

        self._server = await self.loop.create_server(
            protocol, host, port, reuse_port=reuse_port or None, backlog=1024
        )

    async def stop(self, grace: float, cut: Callable[[], int] | None = None) -> None:
        """Stop accepting and end within `grace` seconds (`gateway.proxy.server.drain`'s rule):
        idle connections close now, busy ones after their answer; requests still running
        when the grace period minus a cut window (min(1 s, 20%)) has passed are `cut`, and
        whatever is left at the end is aborted."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.drain_connection()
        window = min(1.0, grace * 0.2)
        if not await self._wait_idle(grace - window) and cut is not None:
            _log.warning("drain_cut", requests=cut(), grace_period=grace)
            await self._wait_idle(window / 2)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _wait_idle(self, within: float) -> bool:
        if self.connections and within > 0:
            self.idle.clear()
            try:
                async with asyncio.timeout(within):
                    while self.connections:
                        await self.idle.wait()
                        self.idle.clear()
            except TimeoutError:
                pass
        return not self.connections


class LeanListener:
    """A started lean proxy listener; `stop` drains it and closes the upstream pool."""

    def __init__(
        self,
        server: LeanServer,
        proxy: LeanProxy,
        pool: Pool,
        recorder: Recorder,
        observing: tuple[Any, Any] | None = None,
    ) -> None:
        self.server = server
        self._proxy = proxy
        self._pool = pool
        self._recorder = recorder
        self._observing = observing

    @property
    def port(self) -> int:
        return int(self.server.addresses[0][1])

    @property
    def urls(self) -> list[str]:
        return [
            f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
            for host, port in self.server.addresses
        ]

    async def stop(self, grace: float) -> None:
        """Drain (see `LeanServer.stop`), then close the upstream pool and the recorder."""
        started = self.server.loop.time()
        _log.info("draining", grace_period=grace, in_flight=self._proxy.in_flight)
        try:
            await self.server.stop(grace, self._proxy.cut)
        finally:
            self._pool.close()
            self._recorder.close()
            if self._observing is not None:
                await observe.stop(self._observing[1])
        _log.info("drained", seconds=round(self.server.loop.time() - started, 3))


def limits_for(settings: Settings) -> Limits:
    return Limits(
        max_line_size=settings.max_line_size,
        max_field_size=settings.max_field_size,
        max_headers=settings.max_headers,
        max_body=0,  # bodies stream through the Task; never buffered by the connection
        header_timeout=settings.client_header_timeout,
        body_timeout=settings.client_body_timeout,
        max_connections=settings.max_connections,
    )


async def start_proxy(
    settings: Settings,
    gate: Decider,
    *,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
) -> LeanListener:
    """Bind the lean proxy listener; a bind failure is a one-line ConfigError."""
    if settings.upstream is None:
        raise ConfigError("--upstream / GATEWAY_UPSTREAM is required to serve")
    target = urlsplit(settings.upstream)
    upstream_host = target.hostname or "localhost"
    tls = ssl.create_default_context() if target.scheme == "https" else None
    upstream_port = target.port or (443 if tls is not None else 80)
    pool = Pool(
        upstream_host,
        upstream_port,
        limit=settings.pool_limit,
        idle_timeout=settings.keepalive_timeout,
        connect_timeout=settings.connect_timeout,
        tls=tls,
    )
    observing = observe.start(settings)  # None unless --observations (issue 14)
    recorder = Recorder(observing[0] if observing else None)
    proxy = LeanProxy(
        settings, gate, HeaderPolicy(settings), recorder, pool, target.netloc or upstream_host
    )
    server = LeanServer(proxy.handle, limits_for(settings))
    bind_host = settings.host if host is None else host
    bind_port = settings.port if port is None else port
    try:
        await server.start(bind_host, bind_port, reuse_port=reuse_port)
    except OSError as exc:
        pool.close()
        recorder.close()
        if observing is not None:
            await observe.stop(observing[1])
        raise ConfigError(
            f"--port / GATEWAY_PORT: cannot listen on {bind_host}:{bind_port}: "
            f"{exc.strerror or exc}"
        ) from None
    return LeanListener(server, proxy, pool, recorder, observing)


async def run_lean_worker(
    settings: Settings,
    *,
    admin: bool,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """`gateway.proxy.server.run_worker` on the lean engine (see the module docstring)."""
    from gateway.core.gate import Gate
    from gateway.proxy import server  # here: gateway.proxy.server calls this function lazily

    draining = asyncio.Event()
    gate = await Gate.open(settings)
    listener: LeanListener | None = None
    decision = None
    admin_runner = None
    stopping = False
    try:
        listener = await start_proxy(settings, gate, reuse_port=reuse_port)
        metrics.init_labels(server.store_kind(settings.store))
        group: metrics.GroupMetrics | None = None
        if settings.decision_port is not None:
            from gateway.authz.listener import start_listener

            decision = await start_listener(settings, gate, reuse_port=reuse_port)
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
            proxy=listener.urls,
            decision=decision.urls if decision is not None else None,
            upstream=settings.upstream,
            mode=settings.mode.value,
            engine="lean",
            config=server.effective_config(settings),
        )
        if on_ready is not None:
            on_ready()
        await server.wait_for_stop(lambda: server.reload_gate(gate, settings, group))
        stopping = True
    finally:
        draining.set()  # readiness turns 503 while in-flight requests finish
        stops = [decision.stop(settings.grace_period)] if decision is not None else []
        if listener is not None:
            grace = settings.grace_period if stopping else 0.0
            stops.append(listener.stop(grace))
        await asyncio.gather(*stops)  # both listeners drain within the one grace period
        if admin_runner is not None:
            await admin_runner.cleanup()
        await gate.close()
    _log.info("stopped")
    return 0
