"""A lookup racing a revocation must not write its stale answer back into the cache."""

from __future__ import annotations

import asyncio
import hashlib

from job_grants import APP, the_grants

from gateway.stores.cache import MISS, CachedStore
from gateway.stores.grants import Job
from gateway.stores.memory import MemoryStore


class SlowStore(MemoryStore):
    """A real memory store whose job lookups wait until the test lets them answer."""

    def __init__(self) -> None:
        super().__init__(the_grants())
        self.release = asyncio.Event()

    async def job(self, digest: str) -> Job | None:
        answer = await super().job(digest)  # read before the revocation lands
        await self.release.wait()
        return answer


async def test_a_fetch_that_straddles_an_invalidation_is_not_cached() -> None:
    store = SlowStore()
    cache = CachedStore(store, size=100, ttl=300, timeout=5)
    digest = hashlib.sha256(APP.encode()).hexdigest()
    fetching = asyncio.create_task(cache.fetch_job(digest))
    await asyncio.sleep(0)  # the lookup has started and read the job
    cache.invalidate()  # a revocation pushed meanwhile
    store.release.set()
    assert (await fetching) is not None  # this request saw the pre-revocation answer...
    assert cache.peek_job(digest) is MISS  # ...but the next one asks the store again


async def test_a_fetch_without_an_invalidation_is_cached() -> None:
    store = SlowStore()
    store.release.set()
    cache = CachedStore(store, size=100, ttl=300, timeout=5)
    digest = hashlib.sha256(APP.encode()).hexdigest()
    job = await cache.fetch_job(digest)
    assert job is not None
    assert cache.peek_job(digest) == job
