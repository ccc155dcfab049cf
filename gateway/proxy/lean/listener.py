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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from gateway.core.decision import Reason, refuse
from gateway.errors import ConfigError
from gateway.ops import log, observe
from gateway.ops.exchange import Recorder
from gateway.proxy import worker
from gateway.proxy.handler import Decider
from gateway.proxy.headers import HeaderPolicy
from gateway.proxy.lean.connection import ClientConnection, Handler
from gateway.proxy.lean.pipeline import LeanProxy, refusal_bytes
from gateway.settings import Settings
from gateway.wire import Limits, Listener
from gateway.wire.client import Pool

if TYPE_CHECKING:
    from gateway.core.gate import Gate

__all__ = ["LeanListener", "LeanServer", "run_lean_worker", "start_proxy"]

_log = structlog.get_logger("gateway.engine")
# The machinery's own refusals, with the aiohttp engine's statuses (its parser answers 400 to
# every head over a limit).
_MACHINE_REASONS = {408: Reason.CLIENT_TIMEOUT}


class LeanServer(Listener[ClientConnection]):
    """The listening socket and its connections (what `ClientConnection` needs)."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        super().__init__(limits)
        self.handler = handler

    def refusal(self, status: int, detail: str) -> bytes:
        """A refusal the machinery makes (malformed head, limits, timeouts); it closes."""
        status = 400 if status in (414, 431) else status
        reason = _MACHINE_REASONS.get(status, Reason.BAD_FRAMING)
        return refusal_bytes(refuse(reason, detail or None, status=status, close=True), None)

    def connection(self) -> ClientConnection:
        return ClientConnection(self)

    def overloaded(self) -> asyncio.BaseProtocol:
        from gateway.proxy.server import Overloaded  # the aiohttp engine's: one 503 `overloaded`

        return Overloaded(self.limits.max_connections)


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
        return self.server.urls

    async def stop(self, grace: float) -> None:
        """Drain (see `LeanServer.stop`), then close the upstream pool and the recorder."""
        started = self.server.loop.time()
        _log.info("draining", grace_period=grace, in_flight=self._proxy.in_flight)

        def cut() -> None:
            _log.warning("drain_cut", requests=self._proxy.cut(), grace_period=grace)

        try:
            await self.server.stop(grace, cut)
        finally:
            self._pool.close()
            self._recorder.close()
            if self._observing is not None:
                await observe.stop(self._observing[1])
        _log.info("drained", seconds=round(self.server.loop.time() - started, 3))


async def start_proxy(
    settings: Settings,
    gate: Decider,
    *,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
    output: log.Output | None = None,
) -> LeanListener:
    """Bind the lean proxy listener (request lines to `output`: see `Recorder`); a bind
    failure is a one-line ConfigError."""
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
    recorder = Recorder(observing[0] if observing else None, output=output)
    proxy = LeanProxy(
        settings, gate, HeaderPolicy(settings), recorder, pool, target.netloc or upstream_host
    )
    # bodies stream through the Task; never buffered by the connection
    server = LeanServer(proxy.handle, worker.limits_for(settings, max_body=0))
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
    output: log.Output | None = None,
) -> int:
    """`gateway.proxy.server.run_worker` on the lean engine (see the module docstring)."""

    async def start(gate: Gate) -> LeanListener:
        return await start_proxy(settings, gate, reuse_port=reuse_port, output=output)

    return await worker.run_listeners(
        settings,
        start,
        admin=admin,
        reuse_port=reuse_port,
        on_ready=on_ready,
        output=output,
        upstream=settings.upstream,
        mode=settings.mode.value,
        engine="lean",
    )
