"""docker-compose.yml under a real Docker engine: two gateway replicas sharing Redis, the loader
and the demo upstream, started by README "Several replicas with Redis"; then what a platform
team relies on: both replicas decide alike, a revocation through one reaches both within a
second, a killed replica comes back while the other serves, a Redis outage fails closed (503)
and heals by itself."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from gateway.settings import Settings
from gateway.stores.cache import VOUCH_WINDOW

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
SECTION = "Several replicas with Redis"
PORTS = {8080: "PROXY_PORT_1", 9090: "ADMIN_PORT_1", 8180: "PROXY_PORT_2", 9190: "ADMIN_PORT_2"}
REPLICAS = {"gateway-1": 8080, "gateway-2": 8180}
CALLS = [(GRANTED, APP_TOKEN), (DENIED, APP_TOKEN), (GRANTED, TOOL_TOKEN), (DENIED, WORKER_TOKEN)]


@pytest.fixture(scope="module")
def stack(engine: Engine, gateway_image: str) -> Iterator[Stack]:
    with readme_stack(engine, SECTION, PORTS, defer="store revoke") as started:
        yield started


def proxy(stack: Stack, replica: str) -> int:
    return stack.ports[REPLICAS[replica]]


def status(stack: Stack, replica: str, path: str, token: str) -> int:
    return http(proxy(stack, replica), path, token)[0]


def test_the_readmes_calls_are_allowed_and_denied(stack: Stack) -> None:
    allowed, denied = stack.outputs
    assert json.loads(allowed)["raw_path"] == GRANTED
    assert "read_releases" in json.loads(denied)["message"]


@pytest.mark.parametrize("replica", sorted(REPLICAS))
def test_both_replicas_decide_alike(stack: Stack, replica: str) -> None:
    code, body = http(proxy(stack, replica), GRANTED, APP_TOKEN)
    assert code == 200
    assert json.loads(body)["raw_path"] == GRANTED, "forwarded to the demo upstream"
    assert status(stack, replica, DENIED, APP_TOKEN) == 403  # lacks read_releases
    assert status(stack, replica, GRANTED, TOOL_TOKEN) == 403  # not in the allowlist
    assert status(stack, replica, DENIED, WORKER_TOKEN) == 200  # read_releases via its group
    assert status(stack, replica, GRANTED, "glcbt-not-a-known-job") == 401


def test_a_revocation_through_one_replica_reaches_both_within_a_second(stack: Stack) -> None:
    (revoke,) = stack.deferred
    assert "exec -T gateway-1 " in revoke
    for replica in REPLICAS:
        assert status(stack, replica, DENIED, WORKER_TOKEN) == 200
    run(revoke, env=stack.env, timeout=60)
    revoked_at = time.monotonic()
    for replica in REPLICAS:
        wait_for(
            f"{replica} sees the revocation",
            lambda r=replica: status(stack, r, DENIED, WORKER_TOKEN) == 401,
            timeout=5,
            every=0.02,
        )
    seen_after = time.monotonic() - revoked_at
    assert seen_after < 1.0, f"both replicas answered 401 only after {seen_after:.2f} s"
    # Permanent: other grants are untouched.
    for replica in REPLICAS:
        assert status(stack, replica, GRANTED, APP_TOKEN) == 200


def test_a_killed_replica_comes_back_while_the_other_serves(stack: Stack) -> None:
    victim = stack.container("gateway-1")
    restarts = int(inspect(victim)["RestartCount"])
    pid = int(inspect(victim)["State"]["Pid"])
    try:
        os.kill(pid, signal.SIGKILL)  # a crash, as the engine's own host sees it
    except PermissionError:
        if os.environ.get("CI") == "true":
            pytest.fail("killing the container's process needs root; CI runs as root")
        pytest.skip("killing the container's process needs root on this host")
    served = 0

    def back() -> bool:
        nonlocal served
        # Every poll: the surviving replica answers as before.
        assert status(stack, "gateway-2", GRANTED, APP_TOKEN) == 200
        assert status(stack, "gateway-2", DENIED, APP_TOKEN) == 403
        served += 1
        return health(victim) == "healthy" and int(inspect(victim)["RestartCount"]) > restarts

    wait_for("gateway-1 restarted and healthy", back, timeout=90, every=0.5)
    assert served > 0
    assert inspect(victim)["State"]["Pid"] != pid
    # Its published port can take a moment longer than the health check to answer again.
    wait_for(
        "gateway-1 answering on its port",
        lambda: status(stack, "gateway-1", GRANTED, APP_TOKEN) == 200,
        timeout=30,
    )
    assert status(stack, "gateway-1", DENIED, APP_TOKEN) == 403


def test_a_redis_outage_fails_closed_and_heals(stack: Stack) -> None:
    before = {
        (replica, path, token): status(stack, replica, path, token)
        for replica in REPLICAS
        for path, token in CALLS
    }
    denied_before = {key for key, code in before.items() if code != 200}
    assert before[("gateway-1", GRANTED, APP_TOKEN)] == 200
    seen: dict[tuple[str, str, str], set[int]] = {key: set() for key in before}

    def probe_all() -> dict[tuple[str, str, str], int]:
        codes = {key: status(stack, *key) for key in before}
        for key, code in codes.items():
            seen[key].add(code)
        return codes

    stack.compose("stop", "redis", timeout=60)
    try:
        # A token no replica has cached: its lookup needs Redis, so at once 503, never 401.
        for replica in REPLICAS:
            unseen = f"glcbt-unseen-{uuid.uuid4().hex}"
            wait_for(
                f"{replica}: 503 for an uncached token",
                lambda r=replica, t=unseen: status(stack, r, GRANTED, t) == 503,
                timeout=5,
            )
        # Cached resolutions stop answering once the generation poll can no longer vouch for
        # them (VOUCH_WINDOW, or a poll failing within --store-timeout), not after
        # GATEWAY_CACHE_TTL: then 503 for all, a revocation elsewhere is never missed.
        within = VOUCH_WINDOW + float(Settings.model_fields["store_timeout"].default) + 10
        try:
            wait_for(
                "503 on both replicas while Redis is down",
                lambda: all(probe_all()[(r, GRANTED, APP_TOKEN)] == 503 for r in REPLICAS),
                timeout=within,
                every=0.5,
            )
        except AssertionError as failure:
            raise AssertionError(f"{failure}; seen: {seen}") from None
        probe_all()
    finally:
        stack.compose("start", "redis", timeout=60)
    wait_for(
        "both replicas answer as before Redis stopped",
        lambda: probe_all() == before,
        timeout=60,
        every=0.5,
    )
    # Fail-closed throughout: what was refused before was never allowed meanwhile.
    for key in denied_before:
        assert 200 not in seen[key], (key, seen[key])
    for replica in REPLICAS:
        assert 503 in seen[(replica, GRANTED, APP_TOKEN)]
