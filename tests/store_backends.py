"""The four backends every store test runs against (tests/stores/): memory, sqlite, file, redis
(a real redis-server, on a database of the test module's own, flushed first)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.stores import Store, open_store
from gateway.stores.grants import parse_grants

BACKENDS = ["memory", "sqlite", "file", "redis"]


@asynccontextmanager
async def a_backend(
    request: pytest.FixtureRequest, tmp_path: Path, grants_yaml: str, redis_db: int
) -> AsyncIterator[Store]:
    """The store of kind `request.param` holding the grants, closed on leaving: the file backend
    reads them from a file under `tmp_path`, the others load them."""
    kind = request.param
    if kind == "memory":
        store = open_store("memory://")
    elif kind == "sqlite":
        store = open_store(f"sqlite:///{tmp_path}/store.db", create=True)
    elif kind == "file":
        (tmp_path / "grants.yaml").write_text(grants_yaml)
        store = open_store(f"file://{tmp_path}/grants.yaml")
    else:
        base = request.getfixturevalue("redis_url").rpartition("/")[0]
        url = f"{base}/{redis_db}"
        client = aioredis.Redis.from_url(url)
        await client.flushdb()
        await client.aclose()
        store = open_store(url)
    if kind != "file":
        await store.load(parse_grants(grants_yaml, f"{kind} grants"))
    yield store
    await store.close()
