"""A store of every backend, loaded with the shared test grants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from job_grants import GRANTS_YAML, the_grants

from gateway.stores import Store, open_store


def redis_db(url: str, db: int) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


async def flush(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()


@pytest.fixture(params=["memory", "sqlite", "file", "redis"])
async def a_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each backend, holding `job_grants.GRANTS_YAML`."""
    kind = request.param
    if kind == "memory":
        store = open_store("memory://")
    elif kind == "sqlite":
        store = open_store(f"sqlite:///{tmp_path}/store.db")
    elif kind == "file":
        (tmp_path / "grants.yaml").write_text(GRANTS_YAML)
        store = open_store(f"file://{tmp_path}/grants.yaml")
    else:
        url = redis_db(request.getfixturevalue("redis_url"), 5)
        await flush(url)
        store = open_store(url)
    if kind != "file":
        await store.load(the_grants())
    yield store
    await store.close()
