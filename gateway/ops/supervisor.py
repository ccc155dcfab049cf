"""`serve`: one process, or a supervisor with N workers sharing the proxy port.

With `--workers N` the supervisor
- checks the proxy port is free (a socket bound with SO_REUSEPORT by someone else would
  otherwise silently share our traffic), creates a fresh PROMETHEUS_MULTIPROC_DIR and removes it
  at exit, and spawns N fresh interpreters (spawn, not fork: prometheus-client picks its value
  storage at import time, and a fork would also copy the parent's event loop);
- waits until every worker listens (a worker's start-up error is reported as the one line,
  exit 2), then runs the admin listener, aggregating every worker's metrics;
- forwards SIGHUP to the workers (each reloads its own gate) and reloads its own gate (readiness);
- on SIGTERM/SIGINT stops the workers (each drains for `grace_period`), killing any still alive
  after that plus a margin;
- respawns a worker that dies on its own (as nginx's master and gunicorn's arbiter do), after a
  backoff doubling from `RESPAWN_FIRST_DELAY` up to `RESPAWN_MAX_DELAY` with each death in the
  last `RESPAWN_WINDOW` seconds, counted in `gateway_worker_restarts_total`. Only when deaths
  keep coming (more than `RESPAWN_LIMIT` within `RESPAWN_WINDOW`, a replacement failing to start
  included) does it stop the others and exit 1, for the service manager (Docker, systemd,
  Kubernetes) to restart the whole unit.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess

import structlog
import uvloop

from gateway.core.gate import Gate
from gateway.errors import ConfigError
from gateway.ops import log, metrics
from gateway.ops.admin import Readiness
from gateway.proxy import server
from gateway.settings import Settings, env_for

__all__ = ["Supervisor", "serve"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
START_TIMEOUT = 60.0
KILL_MARGIN = 5.0
RESPAWN_LIMIT = 5  # deaths tolerated within RESPAWN_WINDOW; one more and the supervisor exits 1
RESPAWN_WINDOW = 60.0
RESPAWN_FIRST_DELAY = 0.1
RESPAWN_MAX_DELAY = 5.0

_log = structlog.get_logger("gateway.supervisor")


def serve(settings: Settings) -> int:
    """Run `serve` until SIGTERM/SIGINT; the process exit code (ConfigError: caller prints it)."""
    server.check_extensions()
    server.check_serving(settings)
    output = log.configure(settings)
    try:
        if settings.workers > 1:
            return Supervisor(settings).run()
        return uvloop.run(server.run_worker(settings, admin=True, output=output))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


def worker_main(settings: Settings, index: int, conn: Connection) -> None:
    """Entry point of a spawned worker: serve, report readiness or the start-up error."""
    output = log.configure(settings, worker=index)
    code = 0

    def ready() -> None:
        conn.send(("ready", os.getpid()))

    try:
        code = uvloop.run(
            server.run_worker(settings, admin=False, reuse_port=True, on_ready=ready, output=output)
        )
    except ConfigError as exc:
        conn.send(("error", str(exc)))
        code = 2
    except KeyboardInterrupt:
        code = 130
    finally:
        conn.close()
    sys.exit(code)


class Worker:
    """One spawned worker process and the pipe it reports its start-up on."""

    def __init__(self, settings: Settings, index: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.index = index
        self.conn, child_conn = context.Pipe(duplex=False)
        self.process: SpawnProcess = context.Process(
            target=worker_main, args=(settings, index, child_conn), name=f"gateway-worker-{index}"
        )
        self.process.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def wait_started(self, timeout: float) -> str | None:
        """None once the worker listens; else why it did not start (blocking: run in a thread)."""
        try:
            if not self.conn.poll(timeout):
                return f"worker {self.index} did not start within {timeout:.0f}s"
            kind, detail = self.conn.recv()
        except EOFError:
            self.process.join(5)
            return f"worker {self.index} exited during start-up (code {self.process.exitcode})"
        return None if kind == "ready" else str(detail)

    def signal(self, signum: int) -> None:
        if self.process.is_alive():
            os.kill(self.pid, signum)


class Supervisor:
    """Runs N workers and the admin listener; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers: list[Worker] = []
        self.stop = asyncio.Event()
        self.failed = False
        self.group: metrics.GroupMetrics | None = None
        self.metrics_dir = ""
        self._deaths: collections.deque[float] = collections.deque()
        self._respawns: set[asyncio.Task[None]] = set()

    def _processes(self) -> list[tuple[str, int]]:
        """(worker label, pid) of the supervisor and every live worker, for process metrics."""
        found = [("supervisor", os.getpid())]
        found += [(str(w.index), w.pid) for w in self.workers if w.process.is_alive()]
        return found

    def run(self) -> int:
        _check_port_free(self.settings.host, self.settings.port)
        if self.settings.decision_port:  # the workers share it with SO_REUSEPORT too
            _check_port_free(
                self.settings.decision_host, self.settings.decision_port, "--decision-port"
            )
        metrics_dir = tempfile.mkdtemp(prefix="jobtoken-gateway-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the workers at spawn
        try:
            return uvloop.run(self._main(metrics_dir))
        finally:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)

    async def _main(self, metrics_dir: str) -> int:
        self.metrics_dir = metrics_dir
        self.workers = [Worker(self.settings, i) for i in range(self.settings.workers)]
        try:
            await self._await_started(metrics_dir)
            gate = await Gate.open(self.settings)
            try:
                registry = metrics.collecting_registry(metrics_dir)
                registry.register(metrics.WorkerProcessCollector(self._processes))
                self.group = server.group_metrics(self.settings, registry)
                admin = await server.start_admin(self.settings, self._readiness(gate), registry)
                try:
                    await self._supervise(gate)
                    await self._stop_workers(metrics_dir)
                finally:
                    await admin.cleanup()
            finally:
                await gate.close()
        finally:
            await self._stop_workers(metrics_dir)
        return 1 if self.failed else 0

    async def _await_started(self, metrics_dir: str) -> None:
        waits = [asyncio.to_thread(w.wait_started, START_TIMEOUT) for w in self.workers]
        problems = [problem for problem in await asyncio.gather(*waits) if problem]
        if problems:
            raise ConfigError(problems[0])
        pids = [w.pid for w in self.workers]
        _log.info("workers_started", pids=pids, metrics_dir=metrics_dir)

    def _readiness(self, gate: Gate) -> Readiness:
        async def readiness() -> tuple[bool, str]:
            if self.stop.is_set():
                return False, "draining: shutting down"
            down = [w.index for w in self.workers if not w.process.is_alive()]
            if down:
                return False, f"workers not running: {down}"
            return await gate.ready()

        return readiness

    async def _supervise(self, gate: Gate) -> None:
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            loop.add_reader(worker.process.sentinel, self._worker_exited, worker)
        try:
            await server.wait_for_stop(lambda: self._hangup(gate), self.stop)
        finally:
            self.stop.set()
            for worker in self.workers:
                loop.remove_reader(worker.process.sentinel)
            for task in list(self._respawns):
                task.cancel()
            await asyncio.gather(*self._respawns, return_exceptions=True)

    def _worker_exited(self, worker: Worker) -> None:
        asyncio.get_running_loop().remove_reader(worker.process.sentinel)
        if self.stop.is_set():
            return
        worker.process.join(1)  # the pipe closes just before the process can be reaped
        _log.error("worker_died", worker=worker.index, pid=worker.pid, **exit_fields(worker))
        metrics.mark_worker_dead(worker.pid, self.metrics_dir)
        task = asyncio.get_running_loop().create_task(self._respawn(worker.index))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, index: int) -> None:
        """Start a new worker `index` after a backoff; give up (exit 1) when deaths keep coming."""
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            now = loop.time()
            self._deaths.append(now)
            while self._deaths and self._deaths[0] < now - RESPAWN_WINDOW:
                self._deaths.popleft()
            if len(self._deaths) > RESPAWN_LIMIT:
                _log.error(
                    "workers_failing",
                    deaths=len(self._deaths),
                    within_seconds=RESPAWN_WINDOW,
                    action="stopping the gateway (exit 1)",
                )
                self.failed = True
                self.stop.set()
                return
            delay = min(RESPAWN_FIRST_DELAY * 2 ** (len(self._deaths) - 1), RESPAWN_MAX_DELAY)
            try:
                await asyncio.wait_for(self.stop.wait(), delay)
                return  # stopping: no respawn
            except TimeoutError:
                pass
            worker = Worker(self.settings, index)
            self.workers[index] = worker
            problem = await asyncio.to_thread(worker.wait_started, START_TIMEOUT)
            if problem is None:
                if self.group is not None:
                    self.group.worker_restarts.inc()
                _log.warning("worker_respawned", worker=index, pid=worker.pid, after_seconds=delay)
                loop.add_reader(worker.process.sentinel, self._worker_exited, worker)
                return
            _log.error("worker_respawn_failed", worker=index, error=problem)
            if worker.process.is_alive():
                worker.process.kill()
            await asyncio.to_thread(worker.process.join, 5)
            if worker.process.pid is not None:
                metrics.mark_worker_dead(worker.pid, self.metrics_dir)

    async def _hangup(self, gate: Gate) -> bool:
        for worker in self.workers:
            worker.signal(signal.SIGHUP)
        return await server.reload_gate(gate, self.settings, self.group)

    async def _stop_workers(self, metrics_dir: str) -> None:
        self.stop.set()
        alive = [w for w in self.workers if w.process.is_alive()]
        for worker in alive:
            worker.signal(signal.SIGTERM)
        deadline = self.settings.grace_period + KILL_MARGIN
        await asyncio.gather(*(asyncio.to_thread(w.process.join, deadline) for w in alive))
        for worker in self.workers:
            if worker.process.is_alive():
                _log.warning("worker_killed", worker=worker.index, after_seconds=deadline)
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, 5)
            if worker.process.pid is not None:
                metrics.mark_worker_dead(worker.pid, metrics_dir)


def exit_fields(worker: Worker) -> dict[str, object]:
    """How a worker ended: `code` for an exit, `signal` (its name) when a signal killed it."""
    code = worker.process.exitcode
    if code is not None and code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": -code}
    return {"code": code}


def _check_port_free(host: str, port: int, flag: str = "--port") -> None:
    """Bind without SO_REUSEPORT: fails if anyone (even an SO_REUSEPORT holder) has the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            env = env_for(flag.removeprefix("--").replace("-", "_"))
            raise ConfigError(f"{flag} / {env}: cannot listen on {host}:{port}: {reason}") from None
