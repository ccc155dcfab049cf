"""The cache's typed peeks: the value, None for a cached "not found", or MISS (then fetch)."""

from __future__ import annotations

import hashlib

import pytest
from job_grants import APP, the_grants

from gateway.stores.cache import MISS, CachedStore, CacheMiss, Lru
from gateway.stores.memory import MemoryStore


def a_cache() -> CachedStore:
    return CachedStore(MemoryStore(the_grants()), size=100, ttl=300, timeout=5)


async def test_each_fact_is_a_miss_until_fetched_then_the_stores_answer() -> None:
    cache = a_cache()
    digest = hashlib.sha256(APP.encode()).hexdigest()
    assert cache.peek_job(digest) is MISS
    job = await cache.fetch_job(digest)
    assert job is not None
    assert cache.peek_job(digest) == job
    assert cache.peek_job_by_id(5001) is MISS
    assert await cache.fetch_job_by_id(5001) == cache.peek_job_by_id(5001) == job
    assert cache.peek_project("acme/platform/deployer") is MISS
    project = await cache.fetch_project("acme/platform/deployer")
    assert project is not None
    assert cache.peek_project("acme/platform/deployer") == project
    assert cache.peek_allowlist(project.id) is MISS
    allowlist = await cache.fetch_allowlist(project.id)
    assert allowlist is not None
    assert cache.peek_allowlist(project.id) == allowlist


async def test_not_found_is_cached_as_none_apart_from_a_miss() -> None:
    cache = a_cache()
    assert await cache.fetch_job("0" * 64) is None
    assert cache.peek_job("0" * 64) is None
    assert await cache.fetch_project("no/such") is None
    assert cache.peek_project("no/such") is None
    assert await cache.fetch_allowlist(10) is None  # acme/app has no allowlist
    assert cache.peek_allowlist(10) is None


async def test_every_peek_fails_closed_once_the_change_feed_stops_vouching() -> None:
    cache = a_cache()
    digest = hashlib.sha256(APP.encode()).hexdigest()
    await cache.fetch_job(digest)
    await cache.fetch_job_by_id(5001)
    await cache.fetch_project("10")
    await cache.fetch_allowlist(20)
    cache.start()  # a change feed to depend on, not polled yet: nothing is vouched for
    try:
        assert cache.peek_job(digest) is MISS
        assert cache.peek_job_by_id(5001) is MISS
        assert cache.peek_project("10") is MISS
        assert cache.peek_allowlist(20) is MISS
    finally:
        await cache.close()


@pytest.mark.parametrize("ttl", [0, -1])
def test_an_lru_keeps_nothing_without_a_lifetime(ttl: float) -> None:
    lru: Lru[str, int] = Lru(10)
    lru.put("a", 1, ttl)
    assert lru.get("a") is CacheMiss.MISS


def test_an_lru_evicts_the_least_recently_used_and_expires_by_its_clock() -> None:
    now = [0.0]
    lru: Lru[str, int] = Lru(2, clock=lambda: now[0])
    lru.put("a", 1, 10)
    lru.put("b", 2, 10)
    assert lru.get("a") == 1  # "b" is now the least recently used
    lru.put("c", 3, 10)
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (1, MISS, 3)
    now[0] = 10.0
    assert lru.get("a") is MISS
    assert len(lru) == 1
