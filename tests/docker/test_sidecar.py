"""docker-compose.sidecar.yml under a real Docker engine: README "Sidecar: one gateway next to
one API server" run as written, then its SQLite store (on the `gateway-data` volume) outliving a
restart of the gateway container: a revocation made through `grants-init` is still in force."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .conftest import (
    APP_TOKEN,
    DENIED,
    GRANTED,
    TOOL_TOKEN,
    WORKER_TOKEN,
    Engine,
    Stack,
    health,
    http,
    inspect,
    readme_stack,
    run,
    wait_for,
)

# Builds and stacks take longer than the suite's 120 s default on a busy 2-core machine.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]
SECTION = "Sidecar: one gateway next to one API server"
PORTS = {8080: "PROXY_PORT", 9090: "ADMIN_PORT"}


@pytest.fixture(scope="module")
def sidecar(engine: Engine, gateway_image: str) -> Iterator[Stack]:
    with readme_stack(engine, SECTION, PORTS, defer="store revoke") as started:
        yield started


def status(stack: Stack, path: str, token: str) -> int:
    return http(stack.ports[8080], path, token)[0]


def test_the_sidecar_answers(sidecar: Stack) -> None:
    allowed, denied = sidecar.outputs
    assert json.loads(allowed)["raw_path"] == GRANTED
    assert "read_releases" in json.loads(denied)["message"]
    assert status(sidecar, GRANTED, TOOL_TOKEN) == 403
    assert status(sidecar, DENIED, WORKER_TOKEN) == 200
    # The app itself is not published: only the gateway's two ports are.
    app = sidecar.container("app")
    ports = inspect(app)["NetworkSettings"]["Ports"]
    assert {p for p, bound in ports.items() if bound} == {"8080/tcp", "9090/tcp"}


def test_the_sqlite_store_survives_a_restart_of_the_gateway(sidecar: Stack) -> None:
    (revoke,) = sidecar.deferred
    assert "run --rm grants-init store revoke" in revoke
    run(revoke, env=sidecar.env, timeout=120)
    wait_for("the revocation", lambda: status(sidecar, DENIED, WORKER_TOKEN) == 401, 10)
    gateway = sidecar.container("gateway")
    started = inspect(gateway)["State"]["StartedAt"]
    sidecar.compose("restart", "gateway", timeout=120)
    assert inspect(gateway)["State"]["StartedAt"] != started
    wait_for("healthy after the restart", lambda: health(gateway) == "healthy", 60)
    wait_for("serving after the restart", lambda: status(sidecar, GRANTED, APP_TOKEN) == 200, 30)
    # Same file, same content: the grants and the revocation both outlived the container.
    assert status(sidecar, DENIED, WORKER_TOKEN) == 401
    assert status(sidecar, DENIED, APP_TOKEN) == 403
