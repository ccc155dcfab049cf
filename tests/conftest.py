"""Shared fixtures. Per-area fixtures live in `tests/fixtures/` and are registered below."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port

pytest_plugins: list[str] = ["fixtures.upstream", "fixtures.proxy", "fixtures.registry"]

REPO = Path(__file__).resolve().parent.parent
SEED_PAGE = REPO / "tests" / "fixtures" / "pages" / "000_bfd2f6b9226250fa.txt"
CURRENT_PAGE = REPO / "tests" / "fixtures" / "pages" / "current-skratsch-b3c84db4.md"


def _redis_unavailable(reason: str) -> None:
    # In CI the Redis tests must run: .ci/run installs redis-server, so its absence is a failure.
    if os.environ.get("CI") == "true":
        pytest.fail(f"redis is required in CI: {reason}")
    pytest.skip(reason)


class RedisServer:
    """A real redis-server on a free loopback port, owned by the test session."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server started for this session (kill/restart it to test outages)."""
    binary = shutil.which("redis-server")
    if binary is None:
        _redis_unavailable("redis-server is not installed (make system-deps installs it as root)")
        raise AssertionError("unreachable")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """URL of a real Redis: `REDIS_URL` when set, else the session's own redis-server."""
    if url := os.environ.get("REDIS_URL"):
        return url
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url
