"""The decision-endpoint recipes of deploy/ run against the real programs on 127.0.0.1.

client -> real proxy (nginx, Envoy, Traefik, Caddy; its configuration read from deploy/ with
only the ports replaced) -> the gateway's decision listener (`python -m gateway serve
--decision-port`), and for body carriers -> the gateway's proxy listener; both paths end at the
recording upstream of tests/fixtures/upstream.py (run in a thread here: the test bodies are
synchronous). Every probe returns what the client saw and what the upstream received.

The gateway's store holds the security suite's grants (tests/security/conftest.py GRANTS_YAML,
as a file store), so its target and credential classes can run through a recipe too. A
program that is missing skips its tests with the reason; in CI (CI=true) it fails instead
(scripts/system-deps.sh and the dev extra install them).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fixtures.upstream import Received, Upstream, _app
from ports import free_port
from security.conftest import GRANTS_YAML

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent
# The ports the recipes are written with, replaced by free ones in the tests.
PROXY_AT, DECISION_AT, INTERNAL_AT = 8080, 8082, 8181


def program(name: str, *candidates: str) -> str:
    """The program's path; skip (fail in CI) when it is not installed."""
    for candidate in (*candidates, shutil.which(name), str(VENV_BIN / name)):
        if candidate and Path(candidate).exists():
            return candidate
    message = f"{name} is not installed: the {name} recipe is not run"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI must have it: scripts/system-deps.sh, pip install -e '.[dev]')")
    pytest.skip(message)


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited {process.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class ThreadedUpstream:
    """tests/fixtures/upstream.py's recording app, served from its own loop in a thread."""

    def __init__(self) -> None:
        self.upstream = Upstream()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._runner = web.AppRunner(_app(self.upstream), access_log=None, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def received(self) -> list[Received]:
        return list(self.upstream.received)

    def clear(self) -> None:
        self.upstream.received.clear()


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    proxy_port: int
    decision_port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Backends:
    """The recording upstream, the gateway in front of it, and the ports a recipe points at."""

    upstream: ThreadedUpstream
    gateway: Gateway
    internal_port: int  # what the recipes call Workhorse / GitLab (127.0.0.1:8181)

    def ports(self, text: str) -> str:
        """A recipe's text with its ports replaced by the running ones."""
        for written, running in (
            (PROXY_AT, self.gateway.proxy_port),
            (DECISION_AT, self.gateway.decision_port),
            (INTERNAL_AT, self.internal_port),
        ):
            text = text.replace(f"127.0.0.1:{written}", f"127.0.0.1:{running}")
            text = text.replace(f"port_value: {written}}}", f"port_value: {running}}}")
        return text


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """One recording upstream and one gateway (proxy + decision listeners) for every recipe.

    The gateway's proxy listener forwards straight to the upstream (the recipes point it at an
    internal nginx server in front of Workhorse; here the upstream stands in for both)."""
    root = tmp_path_factory.mktemp("recipes")
    grants = root / "grants.yaml"
    grants.write_text(GRANTS_YAML)
    upstream = ThreadedUpstream()
    upstream.start()
    proxy_port, decision_port, admin_port = free_port(), free_port(), free_port()
    log = root / "gateway.log"
    command = [
        sys.executable, "-m", "gateway", "serve",
        "--port", str(proxy_port), "--decision-port", str(decision_port),
        "--admin-port", str(admin_port), "--upstream", f"http://127.0.0.1:{upstream.port}",
        "--store", f"file://{grants}", "--trusted-proxies", "127.0.0.1/32",
        "--decision-path-prefix", "/jobtoken-check", "--log-format", "json",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stderr=out, stdout=out)
    gateway = Gateway(process, proxy_port, decision_port, log)
    try:
        wait_listening(decision_port, process, "the gateway", log)
        wait_listening(proxy_port, process, "the gateway", log)
        yield Backends(upstream, gateway, upstream.port)
    finally:
        stop(process)
        upstream.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    received: list[Received]  # what the upstream got while this request was in flight

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-gateway-reason")

    def via_gateway_proxy(self) -> bool:
        """Did the request reach the upstream through the gateway's proxy listener (which
        sets its own X-Request-Id, 16 hex digits), rather than straight from the proxy after a
        decision? (Envoy sets a UUID one of its own.)"""
        (only,) = self.received
        return any(re.fullmatch("[0-9a-f]{16}", v) for v in only.header("X-Request-Id"))


@dataclass
class Front:
    """A running recipe: send requests to the proxy in front."""

    name: str
    port: int
    backends: Backends

    def send(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        self.backends.upstream.clear()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", "gitlab.example.com")
            for name, value in headers or []:
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            payload = response.read()
            found = {k.lower(): v for k, v in response.getheaders()}
            status = response.status
        finally:
            connection.close()
        return Answer(status, found, payload, self._settled())

    def raw(self, data: bytes) -> Answer:
        """Send raw bytes (one request, `Connection: close`); parse the first answer."""
        self.backends.upstream.clear()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        raw = b"".join(chunks)
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        found = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            found[name.strip().lower()] = value.strip()
        return Answer(status, found, body, self._settled())

    def _settled(self) -> list[Received]:
        # The upstream records before it answers: what it got is there once we have the answer.
        return self.backends.upstream.received


def start_program(
    command: list[str], port: int, root: Path, what: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = root / f"{what}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=root, stdout=out, stderr=out, env={**os.environ, **(env or {})}
        )
    try:
        wait_listening(port, process, what, log)
    except BaseException:
        stop(process)
        raise
    return process


def read_json(answer: Answer) -> Any:
    import json

    return json.loads(answer.body)
