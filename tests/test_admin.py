"""The admin listener: health, readiness with its reason, Prometheus metrics that move."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from fixtures.proxy import ScriptedGate, call
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway.ops import metrics
from gateway.ops.admin import create_admin_app


@pytest.fixture
async def an_admin() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(readiness: Any) -> str:
        runner = web.AppRunner(create_admin_app(readiness, metrics.collecting_registry(None)))
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return 0.0


async def test_health_answers_while_the_process_runs(an_admin):
    admin = await an_admin(ScriptedGate(is_ready=(False, "store down")).ready)

    answer = await call("GET", admin + "/-/health")

    assert answer.status == 200
    assert answer.json() == {"status": "ok"}


async def test_ready_says_ready_with_the_gates_detail(an_admin):
    admin = await an_admin(
        ScriptedGate(is_ready=(True, "150 routes, sqlite store reachable")).ready
    )

    answer = await call("GET", admin + "/-/ready")

    assert answer.status == 200
    assert answer.json() == {"status": "ready", "detail": "150 routes, sqlite store reachable"}


async def test_not_ready_is_a_503_saying_why(an_admin):
    admin = await an_admin(ScriptedGate(is_ready=(False, "token store unavailable: refused")).ready)

    answer = await call("GET", admin + "/-/ready")

    assert answer.status == 503
    assert answer.json() == {"status": "not ready", "detail": "token store unavailable: refused"}


async def test_a_failing_readiness_check_is_not_ready(an_admin):
    async def broken() -> tuple[bool, str]:
        raise ConnectionError("redis went away")

    admin = await an_admin(broken)

    answer = await call("GET", admin + "/-/ready")

    assert answer.status == 503
    assert "redis went away" in answer.json()["detail"]


async def test_metrics_parse_and_count_proxied_requests(an_admin, an_upstream, a_gateway):
    admin = await an_admin(ScriptedGate().ready)
    gateway = await a_gateway(an_upstream.url)
    before = (await call("GET", admin + "/metrics")).body.decode()

    await call("PUT", gateway.url + "/x", data=b"12345")
    await call("GET", URL(gateway.url + "/a/%2e%2e/b", encoded=True))

    answer = await call("GET", admin + "/metrics")
    after = answer.body.decode()
    assert answer.headers["Content-Type"].startswith("text/plain")

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("gateway_requests_total", reason="no_token", status="200") == 1
    assert moved("gateway_requests_total", reason="bad_target", status="400") == 1
    assert moved("gateway_bytes_total", direction="in") == 5
    assert moved("gateway_bytes_total", direction="out") > 0
    assert moved("gateway_decision_seconds_count") == 1
    assert moved("gateway_upstream_seconds_count") == 1
    assert sample(after, "gateway_in_flight_requests") == 0


async def test_the_proxy_port_forwards_admin_paths_like_any_other(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)

    await call("GET", gateway.url + "/-/health")
    await call("GET", gateway.url + "/metrics")

    assert [seen.raw_path for seen in an_upstream.received] == ["/-/health", "/metrics"]
