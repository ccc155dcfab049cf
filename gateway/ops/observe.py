"""A bounded, best-effort aggregate of job-token observations in Redis (`--observations N`).

Off by default. When on (N > 0, with a `redis://` store), every replica counts each decided
job-token request under its observation key (source and target project ids and labels, route,
required permissions, reason, verdict, dry-run) in a process-local dict, and a background task
adds the counts to Redis every `FLUSH_SECONDS`, so several replicas' traffic meets there for
`suggest --from-store` / `audit --from-store` (gateway/tools/observations.py reads it).

Contract, and why it stays off the hot path's latency:
- `Observer.add` is synchronous and O(1): one tuple and one dict update per request, no I/O.
- Bounded: at most N distinct keys in a process (a new key beyond is dropped and counted in
  `dropped`), and at most N fields in Redis (a Lua script adds a new field only while the hash
  holds fewer: `HLEN` is O(1)). Counts of known keys always add up.
- Best effort: a flush that fails or outlasts the store timeout loses that batch (one warning
  per failure, with the number of requests lost); requests never wait for it. A process that
  dies loses at most `FLUSH_SECONDS` of counts; a clean stop flushes once more.
- `first_seen` / `last_seen` are flush times (seconds apart from the requests), never tokens:
  keys carry no fingerprint, job id, path or query, only what `suggest` needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from gateway.core.decision import Decision
from gateway.errors import ConfigError
from gateway.settings import Settings

__all__ = ["COUNTS", "FIRST", "FLUSH_SECONDS", "LAST", "Observer", "RedisSink", "key_fields"]

log = logging.getLogger("gateway.observe")  # the name log filters know (before the packages)

FLUSH_SECONDS = 5.0
COUNTS = "jtg:observations"  # field: the key as a JSON array -> request count
FIRST = "jtg:observations:first"  # field -> ISO time of the flush that first added it
LAST = "jtg:observations:last"  # field -> ISO time of the last flush that added to it

# KEYS: counts, first, last. ARGV: limit, now, then field/count pairs.
_ADD = """
local limit = tonumber(ARGV[1])
local dropped = 0
for i = 3, #ARGV, 2 do
  local field, count = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('HEXISTS', KEYS[1], field) == 1 or redis.call('HLEN', KEYS[1]) < limit then
    redis.call('HINCRBY', KEYS[1], field, count)
    redis.call('HSETNX', KEYS[2], field, ARGV[2])
    redis.call('HSET', KEYS[3], field, ARGV[2])
  else
    dropped = dropped + count
  end
end
return dropped
"""

_Key = tuple[Any, ...]


def key_fields(key: str) -> dict[str, Any]:
    """A stored key back as log-line fields (what `gateway.tools.observations` reads)."""
    source_id, source, target_id, target, route, required, reason, denied, dry_run = json.loads(key)
    fields: dict[str, Any] = {
        "reason": reason,
        "decision": "deny" if denied else "allow",
        "fingerprint": "(aggregate)",
        "route": route,
        "required": required,
        "source_project_id": source_id,
        "source_project": source,
        "target_project_id": target_id,
        "target_project": target,
    }
    if dry_run:
        fields["would_deny"] = True
    return {k: v for k, v in fields.items() if v is not None}


class Observer:
    """The process-local counts (see the module docstring)."""

    __slots__ = ("_counts", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[_Key, int] = {}
        self.dropped = 0

    def add(self, decision: Decision, would_deny: bool) -> None:
        """Count one decided request (a no-op for one without a job token)."""
        audit = decision.audit
        if audit.fingerprint is None:
            return
        key = (
            audit.source_project_id,
            audit.source_project,
            audit.target_project_id,
            audit.target,
            audit.route,
            audit.required,
            decision.reason.value,
            not decision.allowed,
            would_deny,
        )
        counts = self._counts
        count = counts.get(key)
        if count is not None:
            counts[key] = count + 1
        elif len(counts) < self.limit:
            counts[key] = 1
        else:
            self.dropped += 1

    def take(self) -> dict[str, int]:
        """The counts so far, as stored fields, and start again."""
        counts, self._counts = self._counts, {}
        return {
            json.dumps([*key[:5], list(key[5]), *key[6:]], separators=(",", ":")): count
            for key, count in counts.items()
        }


class RedisSink:
    """Adds counts to the Redis hashes under the store timeout."""

    def __init__(self, url: str, *, limit: int, timeout: float) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"--observations needs a redis:// store (where replicas meet), not {url!r}"
            )
        import redis.asyncio as aioredis

        self._client: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        self._script = self._client.register_script(_ADD)
        self._limit = limit
        self._timeout = timeout

    async def add(self, fields: dict[str, int]) -> int:
        """Add `fields`; returns the requests dropped because the hash is full. Raises what
        the client raises (OSError, RedisError, TimeoutError)."""
        if not fields:
            return 0
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        args: list[Any] = [self._limit, now]
        for field, count in fields.items():
            args += [field, count]
        call = self._script(keys=[COUNTS, FIRST, LAST], args=args)
        return int(await asyncio.wait_for(call, self._timeout))

    async def close(self) -> None:
        await self._client.aclose()


async def flush(observer: Observer, sink: RedisSink) -> None:
    """Move the counts to Redis once; a failure loses them, with a warning (best effort)."""
    fields = observer.take()
    lost = sum(fields.values())
    try:
        dropped = await sink.add(fields)
    except (RedisError, OSError, TimeoutError) as exc:  # best effort: requests go on
        log.warning("observations not stored (%d requests lost): %r", lost, exc)
        return
    dropped += observer.dropped
    observer.dropped = 0
    if dropped:
        log.warning("observations full: %d requests not counted (raise --observations)", dropped)


async def run(observer: Observer, sink: RedisSink) -> None:
    """Flush every FLUSH_SECONDS until cancelled; then once more, and close the client."""
    try:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await flush(observer, sink)
    finally:
        try:
            await flush(observer, sink)  # logs and drops the store's own failures
        except Exception:  # anything else: say so, never lose the counts silently
            log.exception("observations not stored at shutdown")
        with contextlib.suppress(Exception):
            await sink.close()


def start(settings: Settings) -> tuple[Observer, asyncio.Task[None]] | None:
    """The observer and its flush task for `settings` (None when `observations` is 0).

    Raises ConfigError when observations are asked for without a Redis store."""
    limit = settings.observations
    if limit <= 0:
        return None
    sink = RedisSink(settings.store, limit=limit, timeout=settings.store_timeout)
    observer = Observer(limit)
    return observer, asyncio.get_running_loop().create_task(run(observer, sink))


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel the flush task and wait for its last flush."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
