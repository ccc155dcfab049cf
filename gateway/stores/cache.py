"""A bounded LRU + TTL cache in front of a token store, and the store's deadline.

The gate asks a typed peek first, one per fact: `peek_job(digest)`, `peek_project(ref)`,
`peek_job_by_id(job_id)`, `peek_allowlist(project_id)`. A peek is a dictionary lookup, no await,
so a cached decision costs a few microseconds. It answers the value, None for a cached "the store
has no such thing" (a negative entry), or `MISS` (the one member of the `CacheMiss` enum, which
mypy narrows with `is`). Only on `MISS` does the gate await the matching `fetch_*`, which asks
the store under `timeout` seconds and turns any failure into `StoreUnavailable` (the gate
answers 503, fail closed):

    job = cache.peek_job(digest)
    if job is MISS:
        job = await cache.fetch_job(digest)   # Job | None from here on

Entries live at most `ttl` seconds, and a job never past its token's expiry. Each kind of fact
has its own LRU of at most `size` entries (so project lookups by name cannot push allowlists
out). The whole cache is dropped when the store's content changes: at once when the store
pushes changes (Redis pub/sub, in-process loads), and otherwise when the background watcher
sees `generation()` move (polled every `POLL_INTERVAL`), so a revocation from another process
or replica takes effect within about a second. Lookups that found nothing are cached too
(negative entries), which is safe because any load or revoke drops them.

Fail closed when that channel is lost: a cached answer is only as good as the last generation
poll that confirmed nothing changed. Each successful poll vouches for the cache for
`VOUCH_WINDOW` seconds from the moment it was sent (the next poll is due after `POLL_INTERVAL`);
a failed poll drops the cache at once, and past the window (a poll that hangs, a stalled
watcher) every `peek_*` answers MISS, so the request asks the store, which is down: 503
store_unavailable, never an allow on an answer a replica cut off from Redis can no longer
vouch for (a token revoked through another replica meanwhile). The next successful poll
resumes the cache (dropping it first when the store was unreachable or its generation moved).
A cache that was never `start`ed has no channel to lose and answers for `ttl` alone.

`Lru` (with `MISS`) is also the bounded cache of the upstream lookups (gateway/stores/
upstream.py, packages.py, job_projects.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Final, Generic, TypeVar

from prometheus_client import Counter

from gateway.errors import StoreUnavailable
from gateway.ops import metrics
from gateway.stores import Store
from gateway.stores.grants import Allowlist, Job, Project

__all__ = ["MISS", "POLL_INTERVAL", "VOUCH_WINDOW", "CacheMiss", "CachedStore", "Lru"]

POLL_INTERVAL = 0.5  # seconds between generation polls (a revocation is seen within ~1 s)
# How long one successful poll vouches for the cache: the next poll is due POLL_INTERVAL after
# this one answered, so one missed interval (plus a slow answer) means the channel is lost.
VOUCH_WINDOW = 2 * POLL_INTERVAL
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
log = logging.getLogger(__name__)


class CacheMiss(enum.Enum):
    """The cache holds no answer: ask the store. An Enum of one member, so that after
    `if value is MISS: ...` mypy knows the value is the cached type (or None)."""

    MISS = "MISS"

    def __repr__(self) -> str:
        return "MISS"


MISS: Final = CacheMiss.MISS


class Lru(Generic[K, V]):
    """An LRU of at most `size` entries, each valid until its own deadline (monotonic)."""

    __slots__ = ("_data", "_size", "clock")

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._size = size
        self.clock = clock

    def get(self, key: K) -> V | CacheMiss:
        """The live value for `key`, else MISS (an expired entry is dropped)."""
        item = self._data.get(key)
        if item is None:
            return MISS
        if item[0] <= self.clock():
            del self._data[key]
            return MISS
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        if self._size <= 0 or ttl <= 0:
            return
        self._data[key] = (self.clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class CachedStore:
    """The store as the gate sees it: cached, bounded in time, failing closed."""

    def __init__(
        self,
        store: Store,
        *,
        size: int,
        ttl: float,
        timeout: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.timeout = timeout
        self.wall = wall
        self._jobs: Lru[str, Job | None] = Lru(size)  # by token digest
        self._jobs_by_id: Lru[int, Job | None] = Lru(size)
        self._projects: Lru[str, Project | None] = Lru(size)  # by lower-cased id or full path
        self._allowlists: Lru[int, Allowlist | None] = Lru(size)  # by project id
        self._generation: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.healthy = True
        self.last_error: str | None = None
        # The labelled lookup counters, each built on first use (`.labels()` costs ~0.7 us).
        self._lookups: dict[str, Counter] = {}
        self._epoch = 0
        # Monotonic time until which cached entries may answer (see the module docstring):
        # unbounded until `start` gives the cache a change channel to depend on.
        self._vouched_until = math.inf
        self._feed_lost = False  # a poll failed and none has succeeded since (logged once)

    # ---- lifecycle

    def start(self) -> None:
        """Subscribe to the store's pushes and start the generation watcher (needs a loop)."""
        self.store.subscribe(self.invalidate)
        self._vouched_until = -math.inf  # until the first poll answers
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self.store.close()

    def invalidate(self) -> None:
        self._jobs.clear()
        self._jobs_by_id.clear()
        self._projects.clear()
        self._allowlists.clear()
        # A lookup that started before this call must not write its (possibly revoked) answer
        # back into the fresh cache: fetches compare the epoch they started in.
        self._epoch += 1

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            with contextlib.suppress(StoreUnavailable):
                await self.poll()

    async def poll(self) -> None:
        """Compare the store's generation with the last one seen; drop the cache if it moved.

        On success the cache may answer for `VOUCH_WINDOW` seconds from when the poll was sent;
        on failure (StoreUnavailable, raised) it is dropped and answers nothing until a poll
        succeeds again."""
        sent = time.monotonic()
        try:
            generation = await self._ask(self.store.generation())
        except StoreUnavailable:
            if not self._feed_lost:
                log.warning("token store change feed lost: cached resolutions are not used")
            self._feed_lost = True
            self._vouched_until = -math.inf
            self.invalidate()
            raise
        if generation != self._generation:
            if self._generation is not None:
                log.debug("token store changed: cache dropped")
            self._generation = generation
            self.invalidate()
        if self._feed_lost:
            log.info("token store change feed back: cache resumed")
            self._feed_lost = False
        self._vouched_until = sent + VOUCH_WINDOW

    async def _ask(self, lookup: Awaitable[T]) -> T:
        kind = self.store.kind
        try:
            async with asyncio.timeout(self.timeout):
                result = await lookup
        except StoreUnavailable as exc:
            self._failed(str(exc))
            raise
        except TimeoutError:
            self._failed(f"{kind} store did not answer within {self.timeout:g}s")
            raise StoreUnavailable(self.last_error) from None
        except Exception as exc:  # a backend bug must fail closed too, never forward
            self._failed(f"{kind} store failed: {exc.__class__.__name__}")
            raise StoreUnavailable(self.last_error) from exc
        if not self.healthy:
            self.invalidate()  # back from an outage: start from fresh answers
        self.healthy, self.last_error = True, None
        return result

    def _count(self, result: str) -> None:
        counter = self._lookups.get(result)
        if counter is None:
            counter = self._lookups[result] = metrics.STORE_LOOKUPS.labels(self.store.kind, result)
        counter.inc()

    def _failed(self, why: str) -> None:
        self._count("error")
        self.healthy, self.last_error = False, why

    # ---- the peeks (no await) and the fetches (the store, under the deadline)

    def peek_job(self, digest: str) -> Job | CacheMiss | None:
        """The job whose token has this digest, None (cached: no such token), or MISS."""
        if time.monotonic() >= self._vouched_until:  # the change feed is lost: fail closed
            metrics.CACHE_MISSES.inc()
            return MISS
        value = self._jobs.get(digest)
        if value is MISS:
            metrics.CACHE_MISSES.inc()
        else:
            metrics.CACHE_HITS.inc()
        return value

    def peek_job_by_id(self, job_id: int) -> Job | CacheMiss | None:
        if time.monotonic() >= self._vouched_until:
            return MISS
        return self._jobs_by_id.get(job_id)

    def peek_project(self, ref: str) -> Project | CacheMiss | None:
        """`ref` as `fetch_project` takes it: a numeric id or a full path, lower-cased."""
        if time.monotonic() >= self._vouched_until:
            return MISS
        return self._projects.get(ref)

    def peek_allowlist(self, project_id: int) -> Allowlist | CacheMiss | None:
        if time.monotonic() >= self._vouched_until:
            return MISS
        return self._allowlists.get(project_id)

    async def fetch_job(self, digest: str) -> Job | None:
        """The store's answer (then cached, never past the job's expiry); raises
        StoreUnavailable. So do the other `fetch_*`."""
        epoch = self._epoch
        job = await self._ask(self.store.job(digest))
        self._count("found" if job else "not_found")
        if epoch == self._epoch:
            self.remember_job(digest, job)
        return job

    def remember_job(self, digest: str, job: Job | None) -> None:
        ttl = self.ttl
        if job is not None and job.expires_at is not None:
            ttl = min(ttl, job.expires_at - self.wall())
        self._jobs.put(digest, job, ttl)

    async def fetch_job_by_id(self, job_id: int) -> Job | None:
        return await self._fetch(self.store.job_by_id(job_id), self._jobs_by_id, job_id)

    async def fetch_project(self, ref: str) -> Project | None:
        return await self._fetch(self.store.project(ref), self._projects, ref)

    async def fetch_allowlist(self, project_id: int) -> Allowlist | None:
        return await self._fetch(self.store.allowlist(project_id), self._allowlists, project_id)

    async def _fetch(self, lookup: Awaitable[V], into: Lru[K, V], key: K) -> V:
        epoch = self._epoch
        value = await self._ask(lookup)
        self._count("found" if value else "not_found")
        # A lookup that straddled an invalidation answers this request but is not kept.
        if epoch == self._epoch:
            into.put(key, value, self.ttl)
        return value

    async def ping(self) -> None:
        await self._ask(self.store.ping())
