"""The image's commands, run for real outside Docker (no engine runs on these machines).

The Dockerfile's final-stage ENV, ENTRYPOINT, CMD, HEALTHCHECK and STOPSIGNAL, and the compose
files' commands, are read from the files themselves and run as subprocesses with the image's
paths mapped onto a temporary directory (/var/lib/jobtoken-gateway, /etc/jobtoken-gateway), the
venv onto this one and the baked-in /app/policies onto the checkout's. Only the ports change,
through the same GATEWAY_* variables a deployment would set. Requests go through the gateway
to the demo upstream over real sockets.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from image_runner import (
    APP_JOB_TOKEN,
    DENIED,
    GRANTED,
    GRANTS,
    IMAGE,
    Container,
    RunningGateway,
    free_port,
    grants_mount,
    replace_option,
    start_gateway,
    stop,
    value_of,
    wait_listening,
    with_port,
)

REPO = Path(__file__).resolve().parent.parent
SIDECAR = yaml.safe_load((REPO / "docker-compose.sidecar.yml").read_text())["services"]
STACK = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


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
