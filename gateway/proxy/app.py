"""`create_app(settings)`: the proxy application and its app-lifetime resources.

Resources live in cleanup contexts under typed keys: the Gate (route table + token store), the
one upstream `ClientSession`, and the `Proxy` handler built from both. Every path and method
goes to the same handler (one catch-all route); nothing on the proxy port is special-cased.
`runner_options(settings)` are the server options every listener of the proxy must use;
`dispatch_directly(runner)` (what `serve` does) skips the router on the way to that handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

import aiohttp
from aiohttp import web

from gateway.core import tokens
from gateway.core.decision import Decision
from gateway.core.gate import Gate
from gateway.core.request import RequestView
from gateway.errors import ConfigError
from gateway.ops import observe
from gateway.ops.exchange import Recorder
from gateway.proxy import forward
from gateway.proxy.handler import Proxy
from gateway.proxy.headers import HeaderPolicy
from gateway.settings import Settings

__all__ = [
    "GATE",
    "PROXY",
    "SESSION",
    "GateService",
    "create_app",
    "dispatch_directly",
    "runner_options",
]


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


GATE = web.AppKey("gate", GateService)
SESSION = web.AppKey("session", aiohttp.ClientSession)
PROXY = web.AppKey("proxy", Proxy)

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def runner_options(settings: Settings) -> dict[str, Any]:
    """`AppRunner` options of the proxy listener (reference aiohttp-proxying.md §1, §6)."""
    return {
        "access_log": None,  # the proxy writes its own request line
        "auto_decompress": False,  # a gzip upload must reach the upstream still gzipped (§1.10)
        "handler_cancellation": True,  # a client that goes away cancels the upstream call (§1.22)
        # How long aiohttp's own shutdown waits for handlers at cleanup. Not the drain:
        # `serve` (server.run_worker) replaces it with a sliver of the cut window and drains
        # first itself (server.drain: --grace-period in all, then the cut); an embedding
        # runner (tests) that is cleaned up without a drain waits up to this long, twice.
        "shutdown_timeout": settings.grace_period,
        # aiohttp's keep-alive timer runs from connect (and from each response) until a complete
        # request head arrives: the slowloris guard. Its default is 3630 s.
        "keepalive_timeout": settings.client_header_timeout,
        "max_line_size": settings.max_line_size,
        "max_field_size": settings.max_field_size,
        "max_headers": settings.max_headers,
    }


def create_app(settings: Settings, *, gate: GateService | None = None) -> web.Application:
    """The proxy application. `gate` replaces `Gate.open(settings)` (the caller then owns it)."""
    if settings.upstream is None:
        raise ConfigError("--upstream / GATEWAY_UPSTREAM is required to serve")
    app = web.Application(middlewares=[_unmatched_targets])
    app.cleanup_ctx.append(_gate_context(settings, gate))
    app.cleanup_ctx.append(_session_context(settings))
    app.cleanup_ctx.append(_proxy_context(settings))
    app.router.add_route("*", "/{tail:.*}", _handle, expect_handler=_expect)
    return app


def dispatch_directly(runner: web.AppRunner) -> None:
    """Make the started runner's server call the proxy itself (before any site listens).

    Every request goes to the one catch-all handler anyway; the application's router (which
    walks the path's prefixes), middleware chain and match info cost ~6-9 us per request, about
    5% of a proxied request. `Expect` is dispatched as `Application._handle` does.
    """
    proxy = runner.app[PROXY]
    server = runner.server
    if server is None:
        raise RuntimeError("dispatch_directly needs a runner that is set up")

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        ours = cast(web.Request, request)  # the app's request factory still makes them
        if request.headers.get("Expect"):
            await proxy.expect(ours)
            await request.writer.drain()
        return await proxy.handle(ours)

    server.request_handler = handle


@web.middleware
async def _unmatched_targets(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Targets the catch-all cannot match (`OPTIONS *`, authority-form) still get the gateway's
    own refusal and log line, not aiohttp's bare 404."""
    if request.match_info.http_exception is None:
        return await handler(request)
    return await request.app[PROXY].handle(request)


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


async def _expect(request: web.Request) -> None:
    await request.app[PROXY].expect(request)


def _gate_context(settings: Settings, injected: GateService | None) -> CleanupContext:
    async def context(app: web.Application) -> AsyncIterator[None]:
        if injected is not None:
            app[GATE] = injected
            yield
            return
        gate = await Gate.open(settings)
        app[GATE] = gate
        try:
            yield
        finally:
            await gate.close()

    return context


def _session_context(settings: Settings) -> CleanupContext:
    async def context(app: web.Application) -> AsyncIterator[None]:
        session = forward.open_session(settings)
        app[SESSION] = session
        try:
            yield
        finally:
            await session.close()

    return context


def _proxy_context(settings: Settings) -> CleanupContext:
    async def context(app: web.Application) -> AsyncIterator[None]:
        headers = HeaderPolicy(settings)
        forwarder = forward.ClientForwarder(settings, app[SESSION], headers)
        observing = observe.start(settings)  # None unless --observations (issue 14)
        recorder = Recorder(observing[0] if observing else None)
        app[PROXY] = Proxy(settings, app[GATE], forwarder, headers, recorder)
        try:
            yield
        finally:
            recorder.close()
            if observing is not None:
                await observe.stop(observing[1])

    return context
