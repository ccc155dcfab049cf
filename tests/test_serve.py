"""`python -m gateway serve` as a process: start-up refusals, drain on SIGTERM, reload on SIGHUP,
several workers on one port."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from fixtures.proxy import REPO, call, free_port
from prometheus_client.parser import text_string_to_metric_families


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "GATEWAY_STORE": "memory://", **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        ((), {}, "--upstream / GATEWAY_UPSTREAM"),
        (("--upstream", "ftp://files.example"), {}, "--upstream / GATEWAY_UPSTREAM"),
        (("--upstream", "http://up", "--port", "70000"), {}, "--port / GATEWAY_PORT"),
        (("--upstream", "http://up"), {"GATEWAY_ADMIN_PORT": "http"}, "GATEWAY_ADMIN_PORT"),
        (("--upstream", "http://up", "--workers", "0"), {}, "--workers / GATEWAY_WORKERS"),
        (("--upstream", "http://up", "--routes", "/nonexistent.yaml"), {}, "/nonexistent.yaml"),
        (("--upstream", "http://up"), {"AIOHTTP_NO_EXTENSIONS": "1"}, "C extensions"),
    ],
)
def test_bad_settings_stop_start_up_with_one_line(args, env, names):
    result = serve(*args, env=env)

    assert result.returncode == 2
    assert names in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_naming_the_setting(workers):
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # would share silently
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        result = serve("--upstream", "http://up", "--port", port, "--workers", workers)

    assert result.returncode == 2
    assert "--port / GATEWAY_PORT" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigterm_lets_in_flight_requests_finish(an_upstream, a_gateway_process):
    gateway = a_gateway_process("--upstream", an_upstream.url, "--grace-period", "10")
    in_flight = asyncio.create_task(call("GET", gateway.url + "/-up-/slow?delay=1"))
    await asyncio.sleep(0.4)

    gateway.signal(signal.SIGTERM)
    answer = await in_flight

    assert answer.status == 200
    assert answer.body == b"slow"
    assert await asyncio.to_thread(gateway.proc.wait, 15) == 0
    events = [e["event"] for e in gateway.logs()]
    assert events.index("draining") < events.index("stopped")


async def test_sighup_with_a_broken_route_file_keeps_serving(
    an_upstream, a_gateway_process, tmp_path: Path
):
    routes = tmp_path / "routes.yaml"
    shutil.copy(REPO / "policies" / "routes.yaml", routes)
    gateway = a_gateway_process("--upstream", an_upstream.url, "--routes", str(routes))
    routes.write_text("routes: [this is not a route table\n")

    gateway.signal(signal.SIGHUP)
    (failure,) = await asyncio.to_thread(gateway.wait_for_event, "reload_failed")

    assert "routes.yaml" in failure["error"]
    assert failure["level"] == "warning"
    allowed = await call("GET", gateway.url + "/api/v4/projects/1")
    denied = await call("GET", gateway.url + "/api/v4/users", headers={"JOB-TOKEN": "x"})
    assert allowed.status == 200  # still forwarding
    assert denied.headers["X-Gateway-Reason"] == "route_not_available"  # old table in force

    shutil.copy(REPO / "policies" / "routes.yaml", routes)
    gateway.signal(signal.SIGHUP)
    await asyncio.to_thread(gateway.wait_for_event, "reloaded")


def counter_total(text: str, name: str) -> float:
    return sum(
        found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == name
    )


@pytest.mark.slow
async def test_two_workers_share_the_port_and_the_metrics(an_upstream, a_gateway_process):
    gateway = a_gateway_process("--upstream", an_upstream.url, "--workers", "2")
    (started,) = gateway.events("workers_started")

    connector = aiohttp.TCPConnector(force_close=True)  # a new connection, a new hash
    async with aiohttp.ClientSession(connector=connector) as client:
        for _ in range(40):
            async with client.get(gateway.url + "/spread") as answer:
                assert answer.status == 200

    lines = await asyncio.to_thread(gateway.wait_for_event, "request", 40)
    assert {line["pid"] for line in lines} == set(started["pids"])
    assert {line["worker"] for line in lines} == {0, 1}
    metrics = (await call("GET", gateway.admin_url + "/metrics")).body.decode()
    assert counter_total(metrics, "gateway_requests_total") == 40

    gateway.signal(signal.SIGHUP)  # forwarded: every worker reloads, and the supervisor
    reloads = await asyncio.to_thread(gateway.wait_for_event, "reloaded", 3)
    assert len({line["pid"] for line in reloads}) == 3

    assert await asyncio.to_thread(gateway.stop) == 0
    assert not await asyncio.to_thread(Path(started["metrics_dir"]).exists)


@pytest.mark.slow
async def test_a_worker_that_dies_is_respawned(an_upstream, a_gateway_process):
    gateway = a_gateway_process("--upstream", an_upstream.url, "--workers", "2")
    (started,) = gateway.events("workers_started")

    os.kill(started["pids"][0], signal.SIGKILL)

    (died,) = await asyncio.to_thread(gateway.wait_for_event, "worker_died")
    (respawned,) = await asyncio.to_thread(gateway.wait_for_event, "worker_respawned", 1, 30)
    assert died["worker"] == 0
    assert died.get("signal") == "SIGKILL", died
    assert "code" not in died
    assert respawned["worker"] == 0
    assert respawned["pid"] not in started["pids"]
    assert gateway.proc.poll() is None  # still serving
    assert await asyncio.to_thread(gateway.stop) == 0
