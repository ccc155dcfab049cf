"""The upstream check's negative cache (gateway/stores/upstream.py): bounded, with its own TTL,
and apart from the positive answers, against a real HTTP server answering GET /api/v4/job."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from gateway.core import tokens
from gateway.stores.upstream import UpstreamValidator

RUNNING = "glcbt-running-job"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def a_gitlab(aiohttp_server: Any) -> tuple[str, list[str]]:
    asked: list[str] = []

    async def job(request: web.Request) -> web.Response:
        token = request.headers.get("JOB-TOKEN", "")
        asked.append(token)
        if token == RUNNING:
            body = {
                "id": 9,
                "pipeline": {"project_id": 10},
                "web_url": f"http://{request.host}/acme/app/-/jobs/9",
            }
            return web.json_response(body)
        return web.json_response({"message": "401 Unauthorized"}, status=401)

    app = web.Application()
    app.router.add_get("/api/v4/job", job)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), asked


def a_validator(url: str, **options: Any) -> UpstreamValidator:
    options.setdefault("negative_ttl", 5.0)
    return UpstreamValidator(
        url, api_prefix="/api/v4", relative_url_root="", timeout=5, ttl=30, size=10, **options
    )


async def ask(validator: UpstreamValidator, value: str) -> object:
    return await validator.job(tokens.digest(value), value)


async def test_negative_answers_are_remembered_for_their_ttl(
    a_gitlab: tuple[str, list[str]],
) -> None:
    url, asked = a_gitlab
    validator = a_validator(url, negative_ttl=5.0)
    clock = Clock()
    validator._negative.clock = clock
    assert await ask(validator, "pat-one") is None
    assert await ask(validator, "pat-one") is None
    assert asked == ["pat-one"]
    clock.now += 5.1
    assert await ask(validator, "pat-one") is None
    assert asked == ["pat-one", "pat-one"]
    await validator.close()


async def test_the_negative_cache_is_bounded_and_spares_positive_answers(
    a_gitlab: tuple[str, list[str]],
) -> None:
    url, asked = a_gitlab
    validator = a_validator(url, negative_size=2)
    job = await ask(validator, RUNNING)
    assert job is not None
    for value in ("a", "b", "c"):  # three values: "a" is evicted
        assert await ask(validator, value) is None
    assert await ask(validator, "c") is None
    assert await ask(validator, "a") is None
    assert asked == [RUNNING, "a", "b", "c", "a"]
    assert await ask(validator, RUNNING) == job  # still cached: many negatives evict no positive
    assert asked.count(RUNNING) == 1
    validator.invalidate()
    assert await ask(validator, "c") is None
    assert asked[-1] == "c"
    await validator.close()
