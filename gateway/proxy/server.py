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
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import wire
from gateway.errors import ConfigError
from gateway.ops import metrics
from gateway.ops.admin import Readiness, create_admin_app
from gateway.proxy.app import (
    GATE,
    PROXY,
    GateService,
    create_app,
    dispatch_directly,
    runner_options,
)
from gateway.settings import Engine, Settings

__all__ = [
    "Overloaded",
    "check_extensions",
    "check_serving",
    "decision_only",
    "drain",
    "effective_config",
    "group_metrics",
    "listen",
    "reload_gate",
    "routes_digest",
    "run_worker",
    "start_admin",
    "store_kind",
    "wait_for_stop",
]

_log = structlog.get_logger("gateway.proxy.server")
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
        from gateway.proxy.lean import run_lean_worker

        return await run_lean_worker(
            settings, admin=admin, reuse_port=reuse_port, on_ready=on_ready
        )
    draining = asyncio.Event()
    decision = None
    options = {**runner_options(settings), "shutdown_timeout": _shutdown_timeout(settings)}
    proxy = web.AppRunner(create_app(settings), **options)
    admin_runner: web.AppRunner | None = None
    stopping = False
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
        metrics.init_labels(store_kind(settings.store))
        group: metrics.GroupMetrics | None = None
        if settings.decision_port is not None:
            from gateway.authz.listener import start_listener

            decision = await start_listener(settings, gate, reuse_port=reuse_port)
        if admin:
            registry = metrics.collecting_registry(None)
            group = group_metrics(settings, registry)
            admin_runner = await start_admin(settings, _readiness(gate, draining), registry)
        _log.info(
            "listening",
            proxy=_addresses(proxy),
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
        if stopping:
            stops.append(drain(proxy, settings.grace_period))
        await asyncio.gather(*stops)  # both listeners drain within the one grace period
        await proxy.cleanup()  # closes what is left (idle connections, cut requests)
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


async def drain(runner: web.AppRunner, grace: float) -> None:
    """SIGTERM: stop accepting, let in-flight requests finish, and end within `grace` seconds.

    Like nginx's graceful shutdown and Envoy's drain: the listener closes at once, idle
    keep-alive connections are closed, running requests get the grace period minus a cut
    window (min(1 s, 20%)), their bodies still read and streamed (an upload in progress goes
    on), and each answer closes its connection; those still running then are cut (`Proxy.cut`:
    503 `drain_cut` when their response has not started). aiohttp's own shutdown (which alone
    would wait up to twice its timeout) then only has the cut requests' answers to write.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    proxy = runner.app[PROXY]
    _log.info("draining", grace_period=grace, in_flight=proxy.in_flight)
    for site in list(runner.sites):
        await site.stop()  # stop accepting new connections
    proxy.begin_drain()  # busy connections close after their answer (force_close)
    server = runner.server
    if server is not None:
        # Close only the idle keep-alive connections. Not `server.pre_shutdown()`, which closes
        # every connection (RequestHandler.close): a closing handler drops the data that still
        # arrives (`data_received` returns early), so an upload in progress would stall until
        # the cut, its body half received.
        busy = proxy.busy_transports()
        for connection in server.connections:
            if connection.transport not in busy:
                connection.close()
    window = _cut_window(grace)
    if not await proxy.wait_idle(grace - window):
        cut = proxy.cut()
        _log.warning("drain_cut", requests=cut, grace_period=grace)
        await proxy.wait_idle(window / 2)
    _log.info("drained", seconds=round(loop.time() - started, 3))


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


class BoundedSite(web.TCPSite):
    """A TCPSite that answers connections beyond `limit` with 503 `overloaded` and closes them
    (`Overloaded`).

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
            if len(server.connections) < self._limit:
                return server()
            return Overloaded(self._limit)

        self._server = await asyncio.get_running_loop().create_server(
            protocol, self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


_OVERLOADED_BODY = b'{"message":"503 Service Unavailable"}'
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
    settings: Settings, readiness: Readiness, registry: CollectorRegistry
) -> web.AppRunner:
    """Start the admin listener serving `registry`; the caller cleans the runner up."""
    info = {"mode": settings.mode.value, "config": effective_config(settings)}
    app = create_admin_app(readiness, registry, info)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
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


def _addresses(runner: web.BaseRunner) -> list[str]:
    return [
        f"http://{a[0]}:{a[1]}" if "." in a[0] else f"http://[{a[0]}]:{a[1]}"
        for a in runner.addresses
    ]
