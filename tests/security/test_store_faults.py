"""Token-store faults: Redis killed and restarted, SQLite locked or unreadable.

While the store cannot answer, a request with a job token gets 503 store_unavailable within
`store_timeout` (never a forward, never a hang); a request the gateway can decide without the
store (a bad target, no token) is decided as always; a cached denial stays a denial; and once
the store is back, verdicts are right again without a restart.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import RedisServer

from gateway.stores import open_store

from .conftest import (
    ALLOWED,
    APP,
    DENIED,
    Attack,
    a_sqlite_store,
    assert_forwarded,
    assert_refused,
    the_grants,
)

FAST = {"store_timeout": 0.5}  # a dead store must cost a client half a second, not minutes


async def eventually(attack: Attack, target: str, status: int, seconds: float = 10) -> None:
    """Retry until `target` (with APP's token) gets `status`."""
    deadline = time.monotonic() + seconds
    while True:
        answer = await attack.send("GET", target, token=APP)
        if answer.status == status or time.monotonic() > deadline:
            assert answer.status == status, answer.describe()
            return
        await asyncio.sleep(0.2)


async def assert_store_outage(attack: Attack) -> None:
    started = time.monotonic()
    allowed = await attack.send("GET", ALLOWED, token=APP)
    denied = await attack.send("GET", DENIED, token=APP)

    assert time.monotonic() - started < 4, "a dead store held the client"
    assert_refused(allowed, 503, "store_unavailable")
    assert denied.status in (403, 503), denied.describe()  # never allowed
    assert denied.forwarded == []
    assert_refused(await attack.send("GET", ALLOWED + "/../x", token=APP), 400, "bad_target")
    assert_forwarded(await attack.send("GET", "/-/no-token"), "/-/no-token")


def swap_in(fresh: Path, path: Path) -> None:
    """What `store load` into a new file, then `mv` over the old one, does."""
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    fresh.replace(path)


@pytest.fixture
def a_private_redis(tmp_path: Path):
    """Our own redis-server (not the session's): this test kills it."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis is required in CI: redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = RedisServer(binary, tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.redis
async def test_redis_killed_then_restarted(a_guarded_gateway, a_private_redis):
    store = open_store(a_private_redis.url, timeout=0.5)
    await store.load(the_grants())
    guarded = await a_guarded_gateway(store=store, cache_ttl=0, **FAST)
    attack = guarded.attack
    await eventually(attack, ALLOWED, 200)
    await eventually(attack, DENIED, 403)

    a_private_redis.stop()
    await assert_store_outage(attack)

    a_private_redis.start()  # same port, empty: load the grants again
    loader = open_store(a_private_redis.url, timeout=2)
    await loader.load(the_grants())
    await loader.close()
    await eventually(attack, ALLOWED, 200)
    await eventually(attack, DENIED, 403)


@pytest.mark.redis
async def test_a_cached_denial_survives_a_redis_outage_as_a_denial(
    a_guarded_gateway, a_private_redis
):
    store = open_store(a_private_redis.url, timeout=0.5)
    await store.load(the_grants())
    guarded = await a_guarded_gateway(store=store, cache_ttl=60, **FAST)
    attack = guarded.attack
    await eventually(attack, DENIED, 403)

    a_private_redis.stop()
    for _ in range(3):
        answer = await attack.send("GET", DENIED, token=APP)

        assert answer.status in (403, 503), answer.describe()
        assert answer.forwarded == []


async def test_a_sqlite_write_lock_does_not_stop_reads(a_guarded_gateway, tmp_path):
    # WAL mode: a `store load` or `store revoke` in progress holds the write lock; readers keep
    # answering from the last committed state.
    path = tmp_path / "store.db"
    guarded = await a_guarded_gateway(store=await a_sqlite_store(path), cache_ttl=0, **FAST)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM jobs")  # uncommitted: must stay invisible
    try:
        assert_forwarded(await guarded.attack.send("GET", ALLOWED, token=APP), ALLOWED)
        assert_refused(await guarded.attack.send("GET", DENIED, token=APP), 403, None)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_an_exclusively_locked_sqlite_store_is_503_then_recovers(a_guarded_gateway, tmp_path):
    path = tmp_path / "store.db"
    await (await a_sqlite_store(path)).close()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    store = open_store(f"sqlite:///{path}", timeout=0.5)
    guarded = await a_guarded_gateway(store=store, cache_ttl=0, **FAST)
    try:
        await assert_store_outage(guarded.attack)
    finally:
        locker.execute("COMMIT")
        locker.close()

    await eventually(guarded.attack, ALLOWED, 200)
    await eventually(guarded.attack, DENIED, 403)


async def test_an_unreadable_sqlite_store_is_503_then_recovers(a_guarded_gateway, tmp_path):
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not a database, " * 100)
    store = open_store(f"sqlite:///{path}", timeout=0.5)
    guarded = await a_guarded_gateway(store=store, cache_ttl=0, **FAST)

    await assert_store_outage(guarded.attack)

    fresh = tmp_path / "fresh.db"
    await (await a_sqlite_store(fresh)).close()
    swap_in(fresh, path)
    await eventually(guarded.attack, ALLOWED, 200)
    await eventually(guarded.attack, DENIED, 403)
