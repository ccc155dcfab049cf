"""A replica cut off from its Redis store fails closed within about a poll interval: its cache
answers only while the generation poll vouches for it, not for the whole GATEWAY_CACHE_TTL, so
a token revoked through another replica meanwhile is never allowed on a stale cached answer.
Real `serve` processes, a real redis-server of the test's own (stopped, hung, restarted)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.proxy import Answer, call
from job_grants import APP, write_grants

from gateway.stores.cache import VOUCH_WINDOW

API = "/api/v4"
GRANTED = f"{API}/projects/10/releases"  # APP's own project
# The cache's usual cadence (VOUCH_WINDOW) plus a lookup that fails at once (refused
# connection), with room for a loaded machine; the old behaviour took GATEWAY_CACHE_TTL (30 s).
PROMPTLY = VOUCH_WINDOW + 3.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def own_redis(redis_server: Any, tmp_path: Path) -> Iterator[Any]:
    """A redis-server of this test's own (conftest's RedisServer), to stop and start freely."""
    server = type(redis_server)(redis_server.binary, tmp_path / "redis")
    server.workdir.mkdir()
    server.start()
    yield server
    if server.proc is not None:
        os.kill(server.proc.pid, signal.SIGCONT)  # harmless if it was not stopped
    server.stop()


def load(url: str, tmp_path: Path) -> None:
    loaded = cli("store", "load", str(write_grants(tmp_path / "grants.yaml")), "--store", url)
    assert loaded.returncode == 0, loaded.stderr


async def granted(gateway: Any) -> Answer:
    return await call("GET", gateway.url + GRANTED, headers={"JOB-TOKEN": APP})


async def first_answer(gateway: Any, wanted: Callable[[int], bool], within: float) -> Answer:
    """The first answer to the granted call whose status is `wanted`, asked every 0.1 s."""
    deadline = time.monotonic() + within
    for _ in range(int(within * 100)):
        answer = await granted(gateway)
        if wanted(answer.status) or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.1)
    return answer


def a_replica(a_gateway_process: Any, upstream: str, redis_url: str, *args: str) -> Any:
    # GATEWAY_CACHE_TTL stays at its default (30 s): the promise must not depend on lowering it.
    return a_gateway_process("--upstream", upstream, *args, env={"GATEWAY_STORE": redis_url})


async def test_a_cached_token_is_refused_promptly_when_redis_goes_away(
    own_redis: Any, an_upstream: Any, a_gateway_process: Any, tmp_path: Path
) -> None:
    created = cli(
        "store", "load", str(write_grants(tmp_path / "grants.yaml")), "--store", own_redis.url,
        "--create",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    gateway = a_replica(a_gateway_process, an_upstream.url, own_redis.url)
    assert (await granted(gateway)).status == 200  # resolved once: now cached for 30 s

    await asyncio.to_thread(own_redis.stop)
    stopped = time.monotonic()
    statuses: list[int] = []
    while time.monotonic() - stopped < PROMPTLY:
        statuses.append((await granted(gateway)).status)
        if statuses[-1] == 503:
            break
        await asyncio.sleep(0.05)
    # Before: 200 from the cache for GATEWAY_CACHE_TTL (30 s) after Redis went away.
    assert statuses[-1] == 503, statuses
    refused = await granted(gateway)
    assert refused.status == 503
    assert refused.headers["X-Gateway-Reason"] == "store_unavailable"
    await asyncio.sleep(VOUCH_WINDOW)  # and it stays refused: no cached answer comes back
    assert (await granted(gateway)).status == 503
    assert any(
        "change feed lost" in str(line.get("message", line.get("event", "")))
        for line in gateway.logs()
    ), gateway.log_text()

    # Meanwhile the token was revoked through another replica; Redis comes back with it (here an
    # empty server loaded again, as an operator would after losing it): refused, not the old allow.
    await asyncio.to_thread(own_redis.start)
    load(own_redis.url, tmp_path)
    revoked = cli("store", "revoke", "--store", own_redis.url, "--token", APP)
    assert revoked.returncode == 0, revoked.stderr
    answer = await first_answer(gateway, lambda status: status != 503, within=10)
    assert answer.status == 401  # GitLab's answer to a revoked token is an unknown one's
    # The line is written after the answer: wait for the 401's own line.
    deadline = time.monotonic() + 5
    while not [e for e in gateway.events("request") if e.get("status") == 401]:
        assert time.monotonic() < deadline, gateway.log_text()
        await asyncio.sleep(0.05)
    last = [e for e in gateway.events("request") if e.get("status") == 401][-1]
    assert last["reason"] == "token_revoked"
    allowed = [line for line in gateway.events("request") if line["status"] == 200]
    assert len(allowed) == 1 + statuses.count(200)  # only before Redis went away


async def test_a_hung_redis_stops_the_cache_before_the_poll_times_out(
    own_redis: Any, an_upstream: Any, a_gateway_process: Any, tmp_path: Path
) -> None:
    created = cli(
        "store", "load", str(write_grants(tmp_path / "grants.yaml")), "--store", own_redis.url,
        "--create",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    # The poll (and the lookup) wait up to --store-timeout for a hung server: the cache must stop
    # answering after VOUCH_WINDOW without a confirmed poll, not when the poll finally fails.
    gateway = a_replica(a_gateway_process, an_upstream.url, own_redis.url, "--store-timeout", "4")
    assert (await granted(gateway)).status == 200
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(VOUCH_WINDOW + 0.5)
        answer = await granted(gateway)  # before: 200 from the cache, for up to 30 s
        assert answer.status == 503
        assert answer.headers["X-Gateway-Reason"] == "store_unavailable"
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    # The channel is back: the cache resumes by itself, and the token is allowed again.
    answer = await first_answer(gateway, lambda status: status == 200, within=15)
    assert answer.status == 200
