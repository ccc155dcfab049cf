"""Process lifecycle of `serve`: start-up checks, listeners, signals, graceful drain.

serve(settings) -> exit code   (gateway.supervisor.serve)
  refuse to start (ConfigError, exit 2, one line) without aiohttp's C extensions, without
  --upstream, or with unusable listeners; then either
  - one process: proxy and admin listeners on one uvloop event loop, or
  - `--workers N`: a supervisor (gateway.supervisor) running the admin listener and N
    worker processes sharing the proxy port with SO_REUSEPORT.
Signals: SIGTERM/SIGINT stop accepting, drain in-flight requests for up to `grace_period`
seconds, then exit 0. SIGHUP re-reads the route table and store (`gate.reload()`); an
invalid one is refused, logged with the reason, and the previous state keeps serving.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web

from gateway import metrics
from gateway.admin import Readiness, create_admin_app
from gateway.app import GATE, GateService, create_app, dispatch_directly, runner_options
from gateway.errors import ConfigError
from gateway.settings import Engine, Settings

__all__ = [
    "check_extensions",
    "check_serving",
    "decision_only",
    "listen",
    "reload_gate",
    "run_worker",
    "start_admin",
    "wait_for_stop",
]

_log = structlog.get_logger("gateway.server")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# (module, attribute, module the class must come from): the C implementations.
_C_IMPLEMENTATIONS = (
    ("aiohttp.http_parser", "HttpRequestParser", "aiohttp._http_parser"),
    ("yarl._quoting", "_Quoter", "yarl._quoting_c"),
    ("multidict", "MultiDict", "multidict._multidict"),
)


def check_extensions() -> None:
    """Refuse to run on aiohttp's pure-Python HTTP parser (or yarl/multidict without C).

    SECURITY: the pure-Python parser is where most of aiohttp's request-smuggling CVEs lived
    (CVE-2023-47627, CVE-2024-23829, CVE-2024-52304, CVE-2025-53643); reference
    aiohttp-proxying.md §1.24-1.25.
    """
    helpers = importlib.import_module("aiohttp.helpers")
    if helpers.NO_EXTENSIONS:
        raise ConfigError(
            "aiohttp's C extensions are disabled (AIOHTTP_NO_EXTENSIONS is set); unset it: "
            "the pure-Python HTTP parser is not safe to run a gateway on"
        )
    for module, name, expected in _C_IMPLEMENTATIONS:
        found = getattr(importlib.import_module(module), name).__module__
        if found != expected:
            raise ConfigError(
                f"{module}.{name} is the pure-Python implementation ({found}), not {expected}; "
                "reinstall with `pip install --only-binary=:all: aiohttp yarl multidict` and "
                "unset *_NO_EXTENSIONS variables"
            )


def check_serving(settings: Settings) -> None:
    """The settings `serve` needs beyond field validation."""
    if decision_only(settings):
        return  # no proxy: --upstream only for upstream validation (Gate.open checks)
    if settings.upstream is None:
        raise ConfigError("--upstream / GATEWAY_UPSTREAM is required to serve")
    if settings.workers > 1 and settings.port == 0:
        raise ConfigError("--port / GATEWAY_PORT: workers share a fixed port; 0 needs --workers 1")
    same_host = settings.host == settings.admin_host
    if same_host and settings.port == settings.admin_port and settings.port != 0:
        raise ConfigError(
            f"--admin-port / GATEWAY_ADMIN_PORT: {settings.admin_port} is also the proxy port"
        )


async def run_worker(
    settings: Settings,
    *,
    admin: bool,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Serve the proxy (and, if `admin`, the admin listener) until a stop signal; drain; 0.
    With `--decision-port` the decision listener (gateway/authz) runs beside the proxy, or alone
    with `--port 0`."""
    if decision_only(settings):
        from gateway.authz.listener import run_alone

        return await run_alone(settings, admin=admin, reuse_port=reuse_port, on_ready=on_ready)
    if settings.engine is Engine.LEAN:
        from gateway.engine import run_lean_worker

        return await run_lean_worker(
            settings, admin=admin, reuse_port=reuse_port, on_ready=on_ready
        )
    draining = asyncio.Event()
    decision = None
    proxy = web.AppRunner(create_app(settings), **runner_options(settings))
    admin_runner: web.AppRunner | None = None
    try:
        await proxy.setup()  # opens the gate and the upstream session: ConfigError stops here
        dispatch_directly(proxy)
        gate = proxy.app[GATE]
        await listen(
            proxy,
            settings.host,
            settings.port,
            "--port",
            reuse_port=reuse_port,
            limit=settings.max_connections,
        )
        if settings.decision_port is not None:
            from gateway.authz.listener import start_listener

            decision = await start_listener(settings, gate, reuse_port=reuse_port)
        if admin:
            admin_runner = await start_admin(settings, _readiness(gate, draining))
        _log.info("listening", proxy=_addresses(proxy), upstream=settings.upstream)
        if on_ready is not None:
            on_ready()
        await wait_for_stop(lambda: reload_gate(gate))
        _log.info("draining", grace_period=settings.grace_period)
    finally:
        draining.set()  # readiness turns 503 while in-flight requests finish
        if decision is not None:
            await decision.stop(settings.grace_period)
        await proxy.cleanup()  # stops accepting, waits up to grace_period, then closes
        if admin_runner is not None:
            await admin_runner.cleanup()
    _log.info("stopped")
    return 0


def decision_only(settings: Settings) -> bool:
    """`--port 0 --decision-port P`: the decision listener runs without the proxy."""
    return settings.port == 0 and settings.decision_port is not None


def _readiness(gate: GateService, draining: asyncio.Event) -> Readiness:
    async def readiness() -> tuple[bool, str]:
        if draining.is_set():
            return False, "draining: shutting down"
        return await gate.ready()

    return readiness


class BoundedSite(web.TCPSite):
    """A TCPSite that answers connections beyond `limit` with 503 and closes them at once.

    aiohttp accepts connections without bound; each costs memory and a file descriptor, so a
    flood of idle connections could exhaust a worker. (`start` mirrors TCPSite.start with a
    counting protocol factory.)
    """

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, limit: int, reuse_port: bool
    ) -> None:
        super().__init__(runner, host, port, reuse_port=reuse_port or None)
        self._limit = limit

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            return server() if len(server.connections) < self._limit else _Overloaded()

        self._server = await asyncio.get_running_loop().create_server(
            protocol, self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


_OVERLOADED_BODY = b'{"message": "503 Service Unavailable"}'
_OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"X-Gateway-Reason: overloaded\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_OVERLOADED_BODY), _OVERLOADED_BODY)
)


class _Overloaded(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        metrics.CONNECTIONS_REFUSED.inc()
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_OVERLOADED)
        transport.close()


async def listen(
    runner: web.BaseRunner,
    host: str,
    port: int,
    flag: str,
    *,
    reuse_port: bool,
    limit: int | None = None,
) -> None:
    """Bind a listener (at most `limit` connections); a bind failure is a one-line ConfigError
    naming the setting."""
    site: web.TCPSite
    if limit is None:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    else:
        site = BoundedSite(runner, host, port, limit=limit, reuse_port=reuse_port)
    try:
        await site.start()
    except OSError as exc:
        env = "GATEWAY_" + flag.removeprefix("--").replace("-", "_").upper()
        raise ConfigError(
            f"{flag} / {env}: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


async def start_admin(
    settings: Settings, readiness: Readiness, multiproc_dir: str | None = None
) -> web.AppRunner:
    """Start the admin listener; the caller cleans the returned runner up."""
    app = create_admin_app(readiness, metrics.collecting_registry(multiproc_dir))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await listen(
            runner, settings.admin_host, settings.admin_port, "--admin-port", reuse_port=False
        )
    except BaseException:
        await runner.cleanup()
        raise
    _log.info("admin_listening", admin=_addresses(runner))
    return runner


async def wait_for_stop(
    on_hangup: Callable[[], Coroutine[Any, Any, object]], stop: asyncio.Event | None = None
) -> None:
    """Return on SIGTERM/SIGINT (or once `stop` is set); run `on_hangup()` on each SIGHUP."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    tasks: set[asyncio.Task[object]] = set()

    def hangup() -> None:
        task = loop.create_task(on_hangup())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        await stop.wait()
    finally:
        for sig in (*_STOP_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def reload_gate(gate: GateService) -> bool:
    """SIGHUP: re-read the route table and store; on failure keep serving the previous state."""
    try:
        await gate.reload()
    except ConfigError as exc:
        metrics.RELOADS.labels("failed").inc()
        _log.warning("reload_failed", error=str(exc), kept="previous route table and store")
        return False
    except Exception as exc:
        metrics.RELOADS.labels("failed").inc()
        error = f"{type(exc).__name__}: {exc}"
        _log.exception("reload_failed", error=error, kept="previous route table and store")
        return False
    metrics.RELOADS.labels("ok").inc()
    _log.info("reloaded")
    return True


def _addresses(runner: web.BaseRunner) -> list[str]:
    return [
        f"http://{a[0]}:{a[1]}" if "." in a[0] else f"http://[{a[0]}]:{a[1]}"
        for a in runner.addresses
    ]
