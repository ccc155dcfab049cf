"""Process lifecycle of `serve`: start-up checks, listeners, signals, graceful drain.

serve(settings) -> exit code   (gateway.ops.supervisor.serve)
  refuse to start (ConfigError, exit 2, one line) without aiohttp's C extensions, without
  --upstream, or with unusable listeners; then either
  - one process: proxy and admin listeners on one uvloop event loop, or
  - `--workers N`: a supervisor (gateway.ops.supervisor) running the admin listener and N
    worker processes sharing the proxy port with SO_REUSEPORT.
Signals: SIGTERM/SIGINT stop accepting and drain in-flight requests; the drain ends within
`grace_period` seconds in total (`drain`: requests still running are then answered 503
`drain_cut`, or cut), then exit 0. SIGHUP re-reads the route table and store (`gate.reload()`); an
invalid one is refused, logged with the reason, and the previous state keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import json
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import wire
from gateway.core.decision import gitlab_message
from gateway.errors import ConfigError
from gateway.ops import log, metrics
from gateway.ops.admin import Readiness, create_admin_app
from gateway.proxy.app import GateService, ProxyApp, runner_options
from gateway.settings import Engine, Settings

__all__ = [
    "Overloaded",
    "ProxyListener",
    "check_extensions",
    "check_serving",
    "decision_only",
    "effective_config",
    "group_metrics",
    "listen",
    "reload_gate",
    "routes_digest",
    "run_worker",
    "start_admin",
    "start_proxy",
    "store_kind",
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
    output: log.Output | None = None,
) -> int:
    """Serve the proxy (and, if `admin`, the admin listener) until a stop signal; drain; 0.
    With `--decision-port` the decision listener (gateway/authz) runs beside the proxy, or alone
    with `--port 0`. `output` (what `log.configure` returned) takes every request line."""
    if decision_only(settings):
        from gateway.authz.listener import run_alone

        return await run_alone(
            settings, admin=admin, reuse_port=reuse_port, on_ready=on_ready, output=output
        )
    if settings.engine is Engine.LEAN:
        from gateway.proxy.lean import run_lean_worker

        return await run_lean_worker(
            settings, admin=admin, reuse_port=reuse_port, on_ready=on_ready, output=output
        )
    draining = asyncio.Event()
    decision = None
    # Opens the gate and the upstream session (a ConfigError stops here), then listens.
    proxy = await start_proxy(
        settings, host=settings.host, port=settings.port, reuse_port=reuse_port, output=output
    )
    gate = proxy.app.gate
    admin_runner: web.AppRunner | None = None
    stopping = False
    try:
        metrics.init_labels(store_kind(settings.store))
        group: metrics.GroupMetrics | None = None
        if settings.decision_port is not None:
            from gateway.authz.listener import start_listener

            decision = await start_listener(settings, gate, reuse_port=reuse_port, output=output)
        if admin:
            registry = metrics.collecting_registry(None)
            group = group_metrics(settings, registry)
            admin_runner = await start_admin(settings, _readiness(gate, draining), registry)
        _log.info(
            "listening",
            proxy=_urls(proxy.addresses),
            decision=decision.urls if decision is not None else None,
            upstream=settings.upstream,
            mode=settings.mode.value,
            config=effective_config(settings),
        )
        if on_ready is not None:
            on_ready()
        await wait_for_stop(lambda: reload_gate(gate, settings, group))
        stopping = True
    finally:
        draining.set()  # readiness turns 503 while in-flight requests finish
        stops = [decision.stop(settings.grace_period)] if decision is not None else []
        # Both listeners drain within the one grace period; an error closes without a drain.
        stops.append(proxy.stop(settings.grace_period if stopping else None))
        await asyncio.gather(*stops)
        if admin_runner is not None:
            await admin_runner.cleanup()
    _log.info("stopped")
    return 0


def decision_only(settings: Settings) -> bool:
    """`--port 0 --decision-port P`: the decision listener runs without the proxy."""
    return settings.port == 0 and settings.decision_port is not None


def _cut_window(grace: float) -> float:
    """The end of the grace period kept for answering the requests cut by the drain."""
    return min(1.0, grace * 0.2)


def _shutdown_timeout(settings: Settings) -> float:
    """aiohttp's own shutdown waits this long for a handler, then as long again after
    cancelling it: after `drain`, only the cut requests' answers are left to write."""
    return max(_cut_window(settings.grace_period) / 4, 0.001)


def effective_config(settings: Settings) -> dict[str, Any]:
    """Every setting's value in force, as the start-up line and `/-/ready` show it: URLs
    without their password (a Redis store URL may carry one), paths absolute (a relative
    SQLite store too: sqlite:///gateway.db shows as sqlite:////<working directory>/gateway.db)."""
    config: dict[str, Any] = {}
    for name, value in settings.model_dump(mode="json").items():
        if isinstance(value, str) and "@" in value and "://" in value:
            value = redact_url(value)
        config[name] = value
    config["routes"] = str(Path(settings.routes).resolve())
    store = settings.store
    if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
        # sqlite:///gateway.db (the default) is relative to the working directory: show the
        # file actually in use.
        config["store"] = "sqlite:///" + str(Path(store[len("sqlite:///") :]).absolute())
    return config


def redact_url(url: str) -> str:
    """`scheme://user:***@host/...`: the password (or a lone secret user part) replaced."""
    parts = urlsplit(url)
    if parts.password is not None:
        return url.replace(f":{parts.password}@", ":***@", 1)
    if parts.username is not None:  # redis://secret@host: a password given without a user
        return url.replace(f"{parts.username}@", "***@", 1)
    return url


def _readiness(gate: GateService, draining: asyncio.Event) -> Readiness:
    async def readiness() -> tuple[bool, str]:
        if draining.is_set():
            return False, "draining: shutting down"
        return await gate.ready()

    return readiness


async def start_proxy(
    settings: Settings,
    *,
    gate: GateService | None = None,
    host: str,
    port: int,
    reuse_port: bool = False,
    output: log.Output | None = None,
) -> ProxyListener:
    """The aiohttp engine's proxy listener, serving on `host:port` (what `serve` runs, and the
    tests' in-process gateway). `gate` replaces `Gate.open(settings)` (its caller then owns it);
    `output` takes the request lines (None: the process's, `log.output()`).

    Raises ConfigError (one line naming the setting) when the resources cannot be built
    (`ProxyApp.open`) or the port cannot be bound; what was built by then is released."""
    app = await ProxyApp.open(settings, gate, output)
    listener = ProxyListener(app, settings)
    try:
        await listener.listen(host, port, reuse_port=reuse_port)
    except BaseException:
        await listener.stop(None)
        raise
    return listener


class ProxyListener:
    """`ProxyApp.handle` behind aiohttp's low-level `web.Server`, run by a `web.ServerRunner`, on
    one plain TCP socket (TLS ends in front of the gateway) whose protocol factory answers the
    connections beyond `max_connections` with 503 `overloaded` and closes them (`Overloaded`).

    aiohttp accepts connections without bound; each costs memory and a file descriptor, so a
    flood of idle connections could exhaust a worker. `stop` drains (SIGTERM) and closes.
    """

    BACKLOG = 128  # aiohttp's TCPSite default

    def __init__(self, app: ProxyApp, settings: Settings) -> None:
        self.app = app
        self.options = runner_options(settings)
        self.server = web.Server(app.handle, **self.options)
        self.runner = web.ServerRunner(self.server, shutdown_timeout=_shutdown_timeout(settings))
        self.limit = settings.max_connections
        self._socket: asyncio.Server | None = None

    def protocol(self) -> asyncio.BaseProtocol:
        """The protocol factory `loop.create_server` calls for each accepted connection: the
        `web.Server`'s own (it "serves a protocol factory role", aiohttp docs, "Low Level
        Server") while fewer than `limit` connections are open, `Overloaded` beyond."""
        if len(self.server.connections) < self.limit:
            return self.server()
        return Overloaded(self.limit)

    async def listen(self, host: str, port: int, *, reuse_port: bool) -> None:
        """Start the server and bind; a bind failure is a one-line ConfigError (`--port`)."""
        loop = asyncio.get_running_loop()
        # SECURITY: `web.Server` builds each connection's RequestHandler with these options, and
        # one it cannot take makes it drop them all with a warning (aiohttp/web_server.py
        # `Server.__call__`): the connections would run without the head limits and timeouts.
        # One handler built here first turns that into a refusal to start.
        own = inspect.signature(web.Server).parameters  # what web.Server keeps for itself
        passed = {k: v for k, v in self.options.items() if k not in own}
        try:
            web.RequestHandler(self.server, loop=loop, **passed)
        except TypeError as exc:
            raise ConfigError(
                f"aiohttp {aiohttp.__version__} does not take the proxy listener's options "
                f"(--engine aiohttp): {exc}"
            ) from None
        await self.runner.setup()
        try:
            self._socket = await loop.create_server(
                self.protocol, host, port, backlog=self.BACKLOG, reuse_port=reuse_port or None
            )
        except OSError as exc:
            raise _bind_error("--port", host, port, exc) from None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs listened on (the port chosen, for port 0)."""
        sockets = self._socket.sockets if self._socket is not None else ()
        return [sock.getsockname()[:2] for sock in sockets]

    async def stop(self, grace: float | None) -> None:
        """Drain within `grace` seconds (`drain`; None: no drain, after a failure), then close
        what is left (idle connections, cut requests) and release the `ProxyApp`."""
        try:
            if grace is not None:
                await self.drain(grace)
        finally:
            self._stop_accepting()
            try:
                await self.runner.cleanup()
            finally:
                await self.app.close()

    async def drain(self, grace: float) -> None:
        """SIGTERM: stop accepting, let in-flight requests finish, and end within `grace` s.

        Like nginx's graceful shutdown and Envoy's drain: the listener closes at once, idle
        keep-alive connections are closed, running requests get the grace period minus a cut
        window (min(1 s, 20%)), their bodies still read and streamed (an upload in progress
        goes on), and each answer closes its connection; those still running then are cut
        (`Proxy.cut`: 503 `drain_cut` when their response has not started). aiohttp's own
        shutdown (which alone would wait up to twice its timeout) then only has the cut
        requests' answers to write.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        proxy = self.app.proxy
        _log.info("draining", grace_period=grace, in_flight=proxy.in_flight)
        self._stop_accepting()
        proxy.begin_drain()  # busy connections close after their answer (force_close)
        # Close only the idle keep-alive connections. Not `Server.shutdown`, which closes every
        # connection (RequestHandler.close): a closing handler drops the data that still arrives
        # (`data_received` returns early), so an upload in progress would stall until the cut,
        # its body half received.
        busy = proxy.busy_transports()
        for connection in self.server.connections:
            if connection.transport not in busy:
                connection.close()
        window = _cut_window(grace)
        if not await proxy.wait_idle(grace - window):
            cut = proxy.cut()
            _log.warning("drain_cut", requests=cut, grace_period=grace)
            await proxy.wait_idle(window / 2)
        _log.info("drained", seconds=round(loop.time() - started, 3))

    def _stop_accepting(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


_OVERLOADED_BODY = json.dumps({"message": gitlab_message(503)}, separators=(",", ":")).encode()
_OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"X-Gateway-Reason: overloaded\r\nRetry-After: 1\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_OVERLOADED_BODY), _OVERLOADED_BODY)
)
OVERLOAD_LINGER = 2.0  # seconds a refused connection may keep sending before it is aborted
OVERLOAD_LOG_EVERY = 10.0  # at most one `connections_refused` line per this many seconds


class _RefusalLog:
    """One WARNING line per `OVERLOAD_LOG_EVERY` seconds with the count since the last one: a
    connection flood must not flood the log (the metric counts every refusal)."""

    def __init__(self) -> None:
        self._count = 0
        self._last = float("-inf")

    def note(self, limit: int) -> None:
        self._count += 1
        now = asyncio.get_running_loop().time()
        if now - self._last >= OVERLOAD_LOG_EVERY:
            _log.warning("connections_refused", count=self._count, max_connections=limit)
            self._count, self._last = 0, now


_refusals = _RefusalLog()


class Overloaded(wire.Overloaded):
    """A connection over `max_connections` (either engine): 503 `overloaded` at once, without
    reading the request, then a lingering close (`gateway.wire.Overloaded`); counted, and logged
    at most once per `OVERLOAD_LOG_EVERY` seconds."""

    def __init__(self, limit: int) -> None:
        super().__init__(_OVERLOADED, OVERLOAD_LINGER)
        self._limit = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        metrics.CONNECTIONS_REFUSED.inc()
        _refusals.note(self._limit)
        super().connection_made(transport)


async def listen(runner: web.BaseRunner, host: str, port: int, flag: str) -> None:
    """Bind a listener of `runner` (the admin's); a bind failure is a one-line ConfigError
    naming the setting."""
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        raise _bind_error(flag, host, port, exc) from None


def _bind_error(flag: str, host: str, port: int, exc: OSError) -> ConfigError:
    env = "GATEWAY_" + flag.removeprefix("--").replace("-", "_").upper()
    return ConfigError(f"{flag} / {env}: cannot listen on {host}:{port}: {exc.strerror or exc}")


async def start_admin(
    settings: Settings, readiness: Readiness, registry: CollectorRegistry
) -> web.AppRunner:
    """Start the admin listener serving `registry`; the caller cleans the runner up."""
    info = {"mode": settings.mode.value, "config": effective_config(settings)}
    app = create_admin_app(readiness, registry, info)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await listen(runner, settings.admin_host, settings.admin_port, "--admin-port")
    except BaseException:
        await runner.cleanup()
        raise
    _log.info("admin_listening", admin=_urls(runner.addresses))
    return runner


_GROUPS: dict[int, metrics.GroupMetrics] = {}


def group_metrics(settings: Settings, registry: CollectorRegistry) -> metrics.GroupMetrics:
    """The process group's metrics in `registry` (made once per registry: tests start several
    gateways in one process, and a registry refuses a name twice)."""
    group = _GROUPS.get(id(registry))
    if group is None:
        group = metrics.GroupMetrics(
            registry, mode=settings.mode.value, routes_sha256=routes_digest(settings)
        )
        _GROUPS[id(registry)] = group
    return group


def routes_digest(settings: Settings) -> str:
    """The route table file's SHA-256 (first 12 hex digits), as `gateway_build_info` shows it."""
    try:
        return hashlib.sha256(Path(settings.routes).read_bytes()).hexdigest()[:12]
    except OSError:
        return "unreadable"


def store_kind(url: str) -> str:
    """The store kind a URL names, as the `store` label of gateway_store_lookups_total."""
    scheme = urlsplit(url).scheme
    return "redis" if scheme in ("redis", "rediss", "unix") else scheme


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


async def reload_gate(
    gate: GateService, settings: Settings, group: metrics.GroupMetrics | None = None
) -> bool:
    """SIGHUP: re-read the route table and store; on failure keep serving the previous state.

    `group` (the process that owns the admin listener) counts the reload once per gateway;
    workers reload without counting."""
    try:
        await gate.reload()
    except ConfigError as exc:
        if group is not None:
            group.reloaded(False)
        _log.warning("reload_failed", error=str(exc), kept="previous route table and store")
        return False
    except Exception as exc:
        if group is not None:
            group.reloaded(False)
        error = f"{type(exc).__name__}: {exc}"
        _log.exception("reload_failed", error=error, kept="previous route table and store")
        return False
    if group is not None:
        group.reloaded(True, routes_digest(settings))
    _log.info("reloaded", mode=settings.mode.value)
    return True


def _urls(addresses: list[Any]) -> list[str]:
    """`http://host:port` for each (host, port, ...) socket address, IPv6 in brackets."""
    return [
        f"http://{a[0]}:{a[1]}" if "." in a[0] else f"http://[{a[0]}]:{a[1]}" for a in addresses
    ]
