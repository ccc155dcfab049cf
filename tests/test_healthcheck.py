"""`python -m gateway.ops.healthcheck`, the image's HEALTHCHECK: against real sockets, as Docker runs it."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from image_runner import free_port

from gateway.ops import healthcheck
from gateway.settings import Settings, env_for

REPO = Path(__file__).resolve().parent.parent


class AdminStub(http.server.BaseHTTPRequestHandler):
    """A stand-in admin listener: /-/health answers `status`, everything else 404."""

    status = 200
    seen: list[str] = []  # noqa: RUF012 - shared on purpose: the test reads what was asked

    def do_GET(self) -> None:
        self.seen.append(self.path)
        code = self.status if self.path in ("/-/health", "/-/ready") else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class AdminListener:
    port: int
    handler: type[AdminStub]


@pytest.fixture
def an_admin_listener() -> Iterator[AdminListener]:
    handler = type("Handler", (AdminStub,), {"status": 200, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield AdminListener(server.server_address[1], handler)
    server.shutdown()
    server.server_close()


def probe_process(
    port: int | str, *args: str, host: str = "0.0.0.0"
) -> subprocess.CompletedProcess[str]:
    env = {"GATEWAY_ADMIN_HOST": host, "GATEWAY_ADMIN_PORT": str(port), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.ops.healthcheck", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_probe_follows_the_settings_names_and_defaults() -> None:
    assert env_for("admin_host") == healthcheck.ADMIN_HOST_ENV
    assert env_for("admin_port") == healthcheck.ADMIN_PORT_ENV
    assert Settings.model_fields["admin_host"].default == healthcheck.DEFAULT_ADMIN_HOST
    assert Settings.model_fields["admin_port"].default == healthcheck.DEFAULT_ADMIN_PORT


@pytest.mark.parametrize(
    ("bind", "connect"),
    [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "::1"), ("10.1.2.3", "10.1.2.3")],
)
def test_a_wildcard_bind_is_probed_on_loopback(bind: str, connect: str) -> None:
    target = healthcheck.target_from_env({"GATEWAY_ADMIN_HOST": bind, "GATEWAY_ADMIN_PORT": "9191"})
    assert (target.host, target.port, target.path) == (connect, 9191, "/-/health")


def test_healthy_listener_exits_zero(an_admin_listener: AdminListener) -> None:
    result = probe_process(an_admin_listener.port)
    assert result.returncode == 0, result.stderr
    assert an_admin_listener.handler.seen == ["/-/health"]


def test_unhealthy_listener_exits_one_and_says_why(
    an_admin_listener: AdminListener,
) -> None:
    an_admin_listener.handler.status = 503
    result = probe_process(an_admin_listener.port)
    assert result.returncode == 1
    assert "HTTP 503" in result.stderr


def test_another_admin_path_can_be_probed(an_admin_listener: AdminListener) -> None:
    result = probe_process(an_admin_listener.port, "--path", "/-/ready")
    assert result.returncode == 0, result.stderr
    assert an_admin_listener.handler.seen == ["/-/ready"]


def test_nothing_listening_exits_one() -> None:
    result = probe_process(free_port())
    assert result.returncode == 1
    assert "ConnectionRefusedError" in result.stderr


@pytest.mark.parametrize("port", ["http", "0", "70000", ""])
def test_bad_port_is_unhealthy_not_dockers_reserved_code(port: str) -> None:
    result = probe_process(port)
    assert result.returncode == 1  # Docker reserves exit code 2 for health checks
    assert "GATEWAY_ADMIN_PORT" in result.stderr


def test_bad_arguments_are_unhealthy_not_dockers_reserved_code() -> None:
    result = probe_process(9090, "--timeout", "soon")
    assert result.returncode == 1


def test_url_probes_another_service(an_admin_listener: AdminListener) -> None:
    port = an_admin_listener.port
    ok = probe_process(free_port(), "--url", f"http://127.0.0.1:{port}/-/health")
    assert ok.returncode == 0, ok.stderr
    missing = probe_process(free_port(), "--url", f"http://127.0.0.1:{port}/nope")
    assert missing.returncode == 1
    assert "HTTP 404" in missing.stderr


def test_probe_ignores_proxy_variables(an_admin_listener: AdminListener) -> None:
    # A container's HTTP_PROXY must not send the probe elsewhere (urllib would honour it).
    env = {
        "GATEWAY_ADMIN_PORT": str(an_admin_listener.port),
        "HTTP_PROXY": f"http://127.0.0.1:{free_port()}",
        "http_proxy": f"http://127.0.0.1:{free_port()}",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway.ops.healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_silent_listener_times_out() -> None:
    # Accepts the connection, never answers: the probe gives up after --timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        result = probe_process(listener.getsockname()[1], "--timeout", "0.3")
    assert result.returncode == 1
    assert "timed out" in result.stderr
