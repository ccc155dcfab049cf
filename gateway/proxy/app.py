"""The aiohttp engine's proxy: its app-lifetime resources and the handler its server calls.

`ProxyApp.open(settings, gate=None)` builds, in this order, the Gate (route table + token
store; a `gate` given instead stays its caller's), the one upstream `ClientSession` and the
`Proxy` handler over both; `close()` releases them in the reverse order.
`ProxyApp.handle` is the handler of aiohttp's low-level `web.Server` (aiohttp docs, "Low Level
Server"): every method and target goes to the `Proxy`; there is no router, so nothing on the
proxy port is special-cased. `runner_options(settings)` are that `web.Server`'s options (the
listener, `gateway.proxy.server.ProxyListener`, builds it).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from gateway.core import tokens
from gateway.core.decision import Decision
from gateway.core.gate import Gate
from gateway.core.request import RequestView
from gateway.errors import ConfigError
from gateway.ops import log, observe
from gateway.ops.exchange import Recorder
from gateway.proxy import forward
from gateway.proxy.handler import Proxy
from gateway.proxy.headers import HeaderPolicy
from gateway.settings import Settings

__all__ = ["GateService", "ProxyApp", "runner_options"]


class GateService(Protocol):
    """The Gate contract (gateway/core/gate.py) as the proxy, admin and server use it."""

    @property
    def tokens(self) -> tokens.Reader: ...
    def needs_body(self, view: RequestView) -> bool: ...
    async def evaluate(self, view: RequestView) -> Decision: ...
    def evaluate_now(self, view: RequestView) -> Decision | None: ...
    async def ready(self) -> tuple[bool, str]: ...
    async def reload(self) -> None: ...
    async def close(self) -> None: ...


def runner_options(settings: Settings) -> dict[str, Any]:
    """The proxy's `web.Server` options: its own (`handler_cancellation`) and those it passes to
    every connection's protocol (reference aiohttp-proxying.md §1, §6). aiohttp's shutdown
    timeout is the runner's (`gateway.proxy.server`)."""
    return {
        "access_log": None,  # the proxy writes its own request line
        "auto_decompress": False,  # a gzip upload must reach the upstream still gzipped (§1.10)
        "handler_cancellation": True,  # a client that goes away cancels the upstream call (§1.22)
        # aiohttp's keep-alive timer runs from connect (and from each response) until a complete
        # request head arrives: the slowloris guard. Its default is 3630 s.
        "keepalive_timeout": settings.client_header_timeout,
        "max_line_size": settings.max_line_size,
        "max_field_size": settings.max_field_size,
        "max_headers": settings.max_headers,
    }


class ProxyApp:
    """The gate, the upstream session and the `Proxy` of one proxy listener, and their owner."""

    def __init__(
        self,
        gate: GateService,
        session: aiohttp.ClientSession,
        proxy: Proxy,
        resources: AsyncExitStack,
    ) -> None:
        self.gate = gate
        self.session = session
        self.proxy = proxy
        self._resources = resources

    @classmethod
    async def open(
        cls,
        settings: Settings,
        gate: GateService | None = None,
        output: log.Output | None = None,
    ) -> ProxyApp:
        """Build the proxy's resources (request lines to `output`: see `Recorder`). Raises
        ConfigError without `--upstream`, or when the route table, the store or `--observations`
        cannot be used (`Gate.open`, `observe`); what was built by then is released."""
        if settings.upstream is None:
            raise ConfigError("--upstream / GATEWAY_UPSTREAM is required to serve")
        resources = AsyncExitStack()
        try:
            if gate is None:
                gate = await Gate.open(settings)
                resources.push_async_callback(gate.close)
            session = forward.open_session(settings)
            resources.push_async_callback(session.close)
            headers = HeaderPolicy(settings)
            forwarder = forward.ClientForwarder(settings, session, headers)
            observing = observe.start(settings)  # None unless --observations (issue 14)
            if observing is not None:
                resources.push_async_callback(observe.stop, observing[1])
            recorder = Recorder(observing[0] if observing else None, output=output)
            resources.callback(recorder.close)
            proxy = Proxy(settings, gate, forwarder, headers, recorder)
        except BaseException:
            await resources.aclose()
            raise
        return cls(gate, session, proxy, resources)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The `web.Server` handler: a request with `Expect` goes through `Proxy.expect` first,
        its `100 Continue` (if any) flushed, as aiohttp's router does for a route's
        `expect_handler`; then `Proxy.handle`, given `expect`'s verdict directly."""
        expected = None
        if request.headers.get("Expect"):
            expected = await self.proxy.expect(request)
            await request.writer.drain()
        return await self.proxy.handle(request, expected)

    async def close(self) -> None:
        """Release the recorder, the observer, the session and the gate (if it is ours)."""
        await self._resources.aclose()
