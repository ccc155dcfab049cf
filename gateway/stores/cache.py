"""A bounded LRU + TTL cache in front of a token store, and the store's deadline.

The gate asks `peek_*` first: a dictionary lookup, no await, so a cached decision costs a few
microseconds. On a miss it awaits `fetch_*`, which asks the store under `timeout` seconds and
turns any failure into `StoreUnavailable` (the gate answers 503, fail closed).

Entries live at most `ttl` seconds, and a job never past its token's expiry. The whole cache
is dropped when the store's content changes: at once when the store pushes changes (Redis
pub/sub, in-process loads), and otherwise when the background watcher sees `generation()`
move (polled every `POLL_INTERVAL`), so a revocation from another process or replica takes
effect within about a second. Lookups that found nothing are cached too (negative entries),
which is safe because any load or revoke drops them.

Fail closed when that channel is lost: a cached answer is only as good as the last generation
poll that confirmed nothing changed. Each successful poll vouches for the cache for
`VOUCH_WINDOW` seconds from the moment it was sent (the next poll is due after `POLL_INTERVAL`);
a failed poll drops the cache at once, and past the window (a poll that hangs, a stalled
watcher) `peek_*` answer MISS, so the request asks the store, which is down: 503
store_unavailable, never an allow on an answer a replica cut off from Redis can no longer
vouch for (a token revoked through another replica meanwhile). The next successful poll
resumes the cache (dropping it first when the store was unreachable or its generation moved).
A cache that was never `start`ed has no channel to lose and answers for `ttl` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from gateway.errors import StoreUnavailable
from gateway.ops import metrics
from gateway.stores import Store
from gateway.stores.grants import Allowlist, Job, Project

__all__ = ["MISS", "POLL_INTERVAL", "VOUCH_WINDOW", "CachedStore", "Lru"]

POLL_INTERVAL = 0.5  # seconds between generation polls (a revocation is seen within ~1 s)
# How long one successful poll vouches for the cache: the next poll is due POLL_INTERVAL after
# this one answered, so one missed interval (plus a slow answer) means the channel is lost.
VOUCH_WINDOW = 2 * POLL_INTERVAL
T = TypeVar("T")
log = logging.getLogger(__name__)


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


MISS: Final = _Miss()


class Lru:
    """An LRU of at most `size` entries, each valid until its own deadline (monotonic)."""

    __slots__ = ("_data", "_size", "clock")

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._size = size
        self.clock = clock

    def get(self, key: Any) -> Any:
        item = self._data.get(key)
        if item is None:
            return MISS
        if item[0] <= self.clock():
            del self._data[key]
            return MISS
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: Any, value: Any, ttl: float) -> None:
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
        self._jobs = Lru(size)
        self._other = Lru(size)  # projects, jobs by id and allowlists
        self._generation: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.healthy = True
        self.last_error: str | None = None
        # The labelled lookup counters, each built on first use (`.labels()` costs ~0.7 us).
        self._lookups: dict[str, Any] = {}
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
        self._other.clear()
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

    # ---- jobs by token digest

    def peek_job(self, digest: str) -> Job | _Miss | None:
        if time.monotonic() >= self._vouched_until:  # the change feed is lost: fail closed
            metrics.CACHE_MISSES.inc()
            return MISS
        value = self._jobs.get(digest)
        if value is MISS:
            metrics.CACHE_MISSES.inc()
        else:
            metrics.CACHE_HITS.inc()
        return value  # type: ignore[no-any-return]

    async def fetch_job(self, digest: str) -> Job | None:
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

    # ---- projects, jobs by id, allowlists

    def peek(self, key: tuple[str, Any]) -> Any:
        if time.monotonic() >= self._vouched_until:  # the change feed is lost: fail closed
            return MISS
        return self._other.get(key)

    async def fetch(self, key: tuple[str, Any]) -> Any:
        kind, arg = key
        lookup: Awaitable[Job | Project | Allowlist | None]
        if kind == "project":
            lookup = self.store.project(arg)
        elif kind == "job_id":
            lookup = self.store.job_by_id(arg)
        else:
            lookup = self.store.allowlist(arg)
        epoch = self._epoch
        value = await self._ask(lookup)
        self._count("found" if value else "not_found")
        if epoch == self._epoch:
            self._other.put(key, value, self.ttl)
        return value

    async def ping(self) -> None:
        await self._ask(self.store.ping())
