"""The image's commands, run for real outside Docker (no engine runs on these machines).

The Dockerfile's final-stage ENV, ENTRYPOINT, CMD, HEALTHCHECK and STOPSIGNAL, and the compose
files' commands, are read from the files themselves and run as subprocesses with the image's
paths mapped onto a temporary directory (/var/lib/jobtoken-gateway, /etc/jobtoken-gateway), the
venv onto this one and the baked-in /app/policies onto the checkout's. Only the ports change,
through the same GATEWAY_* variables a deployment would set. Requests go through the gateway
to the demo upstream over real sockets.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from conftest import free_port
from dockerfile_model import Dockerfile

REPO = Path(__file__).resolve().parent.parent
IMAGE = Dockerfile.parse(REPO / "Dockerfile").final
SIDECAR = yaml.safe_load((REPO / "docker-compose.sidecar.yml").read_text())["services"]
STACK = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
GRANTS = REPO / "policies" / "grants.example.yaml"
# From policies/grants.example.yaml: acme/app's job may read deployments of project 20
# (acme/platform/deployer) but not its releases.
APP_JOB_TOKEN = "glcbt-demo-app-job"
GRANTED = "/api/v4/projects/20/deployments"
DENIED = "/api/v4/projects/20/releases"
START_TIMEOUT = 20.0


def value_of(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def replace_option(argv: list[str], name: str, value: str) -> list[str]:
    index = argv.index(name)
    return [*argv[: index + 1], value, *argv[index + 2 :]]


def grants_mount(service: dict[str, Any]) -> str:
    """Where the service mounts policies/grants.example.yaml."""
    (target,) = [
        v.split(":")[1]
        for v in service["volumes"]
        if v.startswith("./policies/grants.example.yaml:")
    ]
    return target


def with_port(url: str, port: int, host: str = "127.0.0.1") -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


@dataclass
class Container:
    """The image's filesystem, mapped: image path -> path on this machine."""

    root: Path
    mapping: dict[str, str] = field(init=False)
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        state, etc = self.root / "var-lib-jobtoken-gateway", self.root / "etc-jobtoken-gateway"
        state.mkdir(parents=True)
        etc.mkdir(parents=True)
        self.mapping = {
            "/opt/venv/bin": str(Path(sys.executable).parent),
            "/app/policies": str(REPO / "policies"),
            "/var/lib/jobtoken-gateway": str(state),
            "/etc/jobtoken-gateway": str(etc),
        }

    def translate(self, value: str) -> str:
        for image_path in sorted(self.mapping, key=len, reverse=True):
            value = value.replace(image_path, self.mapping[image_path])
        return value

    def argv(self, command: list[str]) -> list[str]:
        return [self.translate(word) for word in command]

    def env(self, **overrides: str) -> dict[str, str]:
        """Exactly the image's environment (nothing inherited from the test run) + overrides."""
        env = {k: self.translate(v) for k, v in IMAGE.env.items()}
        env.update(overrides)
        return env

    @property
    def workdir(self) -> Path:
        return Path(self.translate(IMAGE.last("WORKDIR").args))

    def mount(self, source: Path, target: str) -> None:
        shutil.copyfile(source, self.translate(target))

    def run(self, command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command),
            env=self.env(**env),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self, name: str, command: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        self.logs.append(log)
        out: IO[bytes] = log.open("wb")
        try:
            return subprocess.Popen(
                self.argv(command),
                env=self.env(**env),
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            out.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on {port} after {START_TIMEOUT}s:\n{log.read_text()}")


@dataclass
class RunningGateway:
    container: Container
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    @property
    def port(self) -> int:
        return int(self.env["GATEWAY_PORT"])

    @property
    def admin_port(self) -> int:
        return int(self.env["GATEWAY_ADMIN_PORT"])

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, in the container's environment."""
        return self.container.run(IMAGE.healthcheck.command, **self.env)

    def get(self, path: str, port: int | None = None, **headers: str) -> tuple[int, Any, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body.decode()
        return response.status, response.headers, parsed


def start_gateway(container: Container, name: str, **env: str) -> RunningGateway:
    """ENTRYPOINT + CMD, with the image's env plus `env`; healthy per the image's HEALTHCHECK."""
    env = {"GATEWAY_PORT": str(free_port()), "GATEWAY_ADMIN_PORT": str(free_port()), **env}
    process = container.start(name, [*IMAGE.entrypoint, *IMAGE.cmd], **env)
    gateway = RunningGateway(container, process, env, container.logs[-1])
    deadline = time.monotonic() + START_TIMEOUT
    while gateway.healthcheck().returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"{name} did not become healthy:\n{gateway.log.read_text()}")
        time.sleep(0.1)
    return gateway


# --- the sidecar: SQLite store loaded by the init command, one gateway ----------------------------


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Container:
    return Container(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def demo_upstream(container: Container) -> Iterator[int]:
    """The sidecar compose file's `app` (demo upstream) on a free loopback port."""
    port = free_port()
    command = replace_option(SIDECAR["app"]["command"], "--port", str(port))
    process = container.start("demo-upstream", [*IMAGE.entrypoint, *command])
    try:
        wait_listening(port, process, container.logs[-1])
        yield port
    finally:
        stop(process)


@pytest.fixture(scope="module")
def sidecar(container: Container, demo_upstream: int) -> Iterator[RunningGateway]:
    """grants-init, then the gateway, as docker-compose.sidecar.yml runs them."""
    init = SIDECAR["grants-init"]
    container.mount(GRANTS, grants_mount(init))
    loaded = container.run([*IMAGE.entrypoint, *init["command"]])
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded" in loaded.stdout
    upstream = with_port(SIDECAR["gateway"]["environment"]["GATEWAY_UPSTREAM"], demo_upstream)
    gateway = start_gateway(container, "sidecar", GATEWAY_UPSTREAM=upstream)
    yield gateway
    stop(gateway.process)


def test_demo_upstream_passes_its_compose_healthcheck(
    container: Container, demo_upstream: int
) -> None:
    test = SIDECAR["app"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    command = replace_option(test[1:], "--url", with_port(value_of(test, "--url"), demo_upstream))
    assert container.run(command).returncode == 0


def test_healthcheck_passes_while_serving(sidecar: RunningGateway) -> None:
    result = sidecar.healthcheck()
    assert result.returncode == 0, result.stderr


def test_a_granted_request_reaches_the_upstream(sidecar: RunningGateway) -> None:
    status, _, body = sidecar.get(GRANTED, **{"JOB-TOKEN": APP_JOB_TOKEN})
    assert status == 200
    assert body["raw_path"] == GRANTED  # the demo upstream's echo: it was forwarded
    headers = dict(body["headers"])
    assert headers["JOB-TOKEN"] == APP_JOB_TOKEN
    assert headers["X-Forwarded-For"] == "127.0.0.1"


def test_a_denied_request_gets_gitlabs_403_from_the_gateway(sidecar: RunningGateway) -> None:
    status, headers, body = sidecar.get(DENIED, **{"JOB-TOKEN": APP_JOB_TOKEN})
    assert status == 403
    assert headers["Content-Type"].startswith("application/json")
    assert "read_releases" in body["message"]
    assert "raw_path" not in body  # answered by the gateway, never forwarded


def test_an_unknown_token_is_refused(sidecar: RunningGateway) -> None:
    status, _, body = sidecar.get(GRANTED, **{"JOB-TOKEN": "glcbt-nobody-knows-me"})
    assert status == 401
    assert body == {"message": "401 Unauthorized"}


def test_admin_listener_reports_ready_and_metrics(sidecar: RunningGateway) -> None:
    status, _, body = sidecar.get("/-/ready", port=sidecar.admin_port)
    assert status == 200
    assert body["status"] == "ready"
    status, _, text = sidecar.get("/metrics", port=sidecar.admin_port)
    assert status == 200
    assert "gateway_requests_total" in text


def test_logs_are_json_lines_without_raw_tokens(sidecar: RunningGateway) -> None:
    sidecar.get(GRANTED, **{"JOB-TOKEN": APP_JOB_TOKEN})
    deadline = time.monotonic() + 5
    while GRANTED not in sidecar.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in sidecar.log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # GATEWAY_LOG_FORMAT=json: every line
    assert any(r.get("path") == GRANTED and r.get("status") == 200 for r in records)
    assert APP_JOB_TOKEN not in sidecar.log.read_text()


def test_store_is_the_sqlite_file_on_the_state_volume(
    container: Container, sidecar: RunningGateway
) -> None:
    database = Path(container.translate(IMAGE.env["GATEWAY_STORE"].removeprefix("sqlite:///")))
    assert database.is_file()
    assert database.parent == Path(container.translate(IMAGE.volumes[0]))


def test_stop_signal_drains_exits_cleanly_and_healthcheck_then_fails(
    container: Container, demo_upstream: int
) -> None:
    gateway = start_gateway(
        container, "stopping", GATEWAY_UPSTREAM=f"http://127.0.0.1:{demo_upstream}"
    )
    try:
        stop_signal = signal.Signals[IMAGE.last("STOPSIGNAL").args]
        os.kill(gateway.process.pid, stop_signal)
        assert gateway.process.wait(timeout=15) == 0, gateway.log.read_text()
        assert "draining" in gateway.log.read_text()
        result = gateway.healthcheck()
        assert result.returncode == 1
        assert "unhealthy" in result.stderr
    finally:
        stop(gateway.process)


def test_image_refuses_to_serve_without_an_upstream(container: Container) -> None:
    # The image sets no GATEWAY_UPSTREAM on purpose: `docker run` without one is a clear error.
    assert "GATEWAY_UPSTREAM" not in IMAGE.env
    env = {"GATEWAY_PORT": str(free_port()), "GATEWAY_ADMIN_PORT": str(free_port())}
    result = container.run([*IMAGE.entrypoint, *IMAGE.cmd], **env)
    assert result.returncode == 2
    assert "GATEWAY_UPSTREAM" in result.stderr


# --- several replicas: one Redis store, as docker-compose.yml runs them -----------------------------


@pytest.fixture
def a_redis_store(redis_url: str) -> Iterator[str]:
    """A database of the session's Redis of its own, emptied afterwards (revocations persist)."""
    import redis

    url = with_db(redis_url, 11)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def with_db(url: str, db: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


@pytest.mark.redis
def test_replicas_share_grants_and_revocations_through_redis(
    container: Container, demo_upstream: int, a_redis_store: str
) -> None:
    loader = STACK["grants-loader"]
    compose_store = value_of(loader["command"], "--store")
    assert urlsplit(compose_store).scheme == "redis"
    load = replace_option(loader["command"], "--store", a_redis_store)
    container.mount(GRANTS, grants_mount(loader))
    loaded = container.run([*IMAGE.entrypoint, *load])
    assert loaded.returncode == 0, loaded.stderr

    replicas = []
    try:
        for name in ("gateway-1", "gateway-2"):
            environment = STACK[name]["environment"]
            assert environment["GATEWAY_STORE"] == compose_store
            replicas.append(
                start_gateway(
                    container,
                    name,
                    GATEWAY_STORE=a_redis_store,
                    GATEWAY_UPSTREAM=f"http://127.0.0.1:{demo_upstream}",
                )
            )
        for replica in replicas:
            assert replica.get(GRANTED, **{"JOB-TOKEN": APP_JOB_TOKEN})[0] == 200
        revoke = ["store", "revoke", "--store", a_redis_store, "--token", APP_JOB_TOKEN]
        assert container.run([*IMAGE.entrypoint, *revoke]).returncode == 0
        for replica in replicas:
            deadline = time.monotonic() + 5  # the store promises "within a second"
            while replica.get(GRANTED, **{"JOB-TOKEN": APP_JOB_TOKEN})[0] != 401:
                assert time.monotonic() < deadline, f"{replica.log.name} still accepts the token"
                time.sleep(0.1)
    finally:
        for replica in replicas:
            stop(replica.process)
