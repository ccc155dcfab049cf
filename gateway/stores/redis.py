"""`redis://host:port/db`: the store shared by several gateway replicas (redis-py asyncio).

Keys (prefix `jtg:`): `job:<digest>` and `jobid:<id>` -> job JSON, `project:<id>`,
`projectpath:<lower path>` -> project JSON, `allowlist:<project id>` -> allowlist JSON,
`revoked:digest:<digest>`, `revoked:job:<id>`, `generation`, `keys` (the content's key set).

A load replaces the content in one MULTI/EXEC transaction (readers see the old or the new
content, never a mix). Every write increments `generation` and publishes on `jtg:changes`:
replicas drop their caches on the message, and poll `generation` about once a second in case a
message was lost (a reconnect), so a revocation reaches every replica within a second.
Revocations are kept apart from the content and survive loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable
from gateway.stores import Listing
from gateway.stores.content import tombstone
from gateway.stores.grants import (
    Allowlist,
    AllowlistEntry,
    EntryKind,
    Grants,
    Job,
    Project,
    project_key,
)

__all__ = ["CHANNEL", "RedisStore"]

PREFIX = "jtg:"
CHANNEL = PREFIX + "changes"
GENERATION = PREFIX + "generation"
CONTENT_KEYS = PREFIX + "keys"
RETRY_SECONDS = 0.5
log = logging.getLogger(__name__)


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self.url = url
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        self._subscribers: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None

    async def _do(self, command: Any) -> Any:
        try:
            return await command
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis store: {exc.__class__.__name__}: {exc}") from exc

    # ---- TokenStore

    async def job(self, digest: str) -> Job | None:
        raw, revoked = await self._do(
            self._client.mget(f"{PREFIX}job:{digest}", f"{PREFIX}revoked:digest:{digest}")
        )
        if raw is None:
            return tombstone(digest=digest) if revoked else None
        job = _job(raw)
        if revoked or await self._do(self._client.exists(f"{PREFIX}revoked:job:{job.job_id}")):
            return _revoked(job)
        return job

    async def job_by_id(self, job_id: int) -> Job | None:
        raw, revoked = await self._do(
            self._client.mget(f"{PREFIX}jobid:{job_id}", f"{PREFIX}revoked:job:{job_id}")
        )
        if raw is None:
            return tombstone(job_id=job_id) if revoked else None
        job = _job(raw)
        if revoked or await self._do(self._client.exists(f"{PREFIX}revoked:digest:{job.digest}")):
            return _revoked(job)
        return job

    async def project(self, ref: str) -> Project | None:
        parsed = project_key(ref)
        if parsed is None:
            return None
        kind = "project" if isinstance(parsed, int) else "projectpath"
        key = f"{PREFIX}{kind}:{parsed}"
        raw = await self._do(self._client.get(key))
        return None if raw is None else _project(json.loads(raw))

    async def allowlist(self, project_id: int) -> Allowlist | None:
        raw = await self._do(self._client.get(f"{PREFIX}allowlist:{project_id}"))
        return None if raw is None else _allowlist(json.loads(raw))

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the server answers and this database holds a store.

        A database that was never loaded (a mistyped db number, a restarted server without
        persistence) answers every token "unknown": readiness must not call it reachable."""
        if not await self._do(self._client.exists(GENERATION)):
            raise StoreUnavailable(
                f"redis store: the database holds no token store (no {GENERATION} key: never "
                "loaded, or emptied); load one with `store load`"
            )

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._client.aclose()

    # ---- ChangeFeed

    async def generation(self) -> str:
        return str(await self._do(self._client.get(GENERATION)) or 0)

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._notify()  # (re)connected: anything may have changed meanwhile
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._notify()
            except (RedisError, OSError) as exc:
                log.debug("redis change feed lost: %s", exc.__class__.__name__)
            await asyncio.sleep(RETRY_SECONDS)

    def _notify(self) -> None:
        for callback in self._subscribers:
            callback()

    # ---- StoreAdmin

    async def load(self, grants: Grants) -> None:
        content = _serialize(grants)
        old = await self._do(self._client.smembers(CONTENT_KEYS))
        async with self._client.pipeline(transaction=True) as pipe:
            stale = [key for key in old if key not in content]
            if stale:
                pipe.delete(*stale)
            pipe.delete(CONTENT_KEYS)
            if content:
                pipe.mset(content)
                pipe.sadd(CONTENT_KEYS, *content)
            pipe.incr(GENERATION)
            pipe.publish(CHANNEL, "load")
            await self._do(pipe.execute())

    async def revoke(self, *, digest: str | None = None, job_id: int | None = None) -> int:
        hits = 0
        async with self._client.pipeline(transaction=True) as pipe:
            if digest is not None:
                pipe.set(f"{PREFIX}revoked:digest:{digest}", "1")
                pipe.exists(f"{PREFIX}job:{digest}")
            if job_id is not None:
                pipe.set(f"{PREFIX}revoked:job:{job_id}", "1")
                pipe.exists(f"{PREFIX}jobid:{job_id}")
            pipe.incr(GENERATION)
            pipe.publish(CHANNEL, "revoke")
            results = await self._do(pipe.execute())
        for value in results[1:-2:2]:
            hits += int(value)
        return hits

    async def unrevoke(self, *, digest: str | None = None, job_id: int | None = None) -> int:
        async with self._client.pipeline(transaction=True) as pipe:
            if digest is not None:
                pipe.delete(f"{PREFIX}revoked:digest:{digest}")
            if job_id is not None:
                pipe.delete(f"{PREFIX}revoked:job:{job_id}")
            pipe.incr(GENERATION)
            pipe.publish(CHANNEL, "unrevoke")
            results = await self._do(pipe.execute())
        return sum(int(value) for value in results[:-2])

    async def listing(self) -> Listing:
        keys = sorted(await self._do(self._client.smembers(CONTENT_KEYS)))
        values = await self._do(self._client.mget(keys)) if keys else []
        projects, jobs, allowlists = [], [], []
        for key, raw in zip(keys, values, strict=True):
            if raw is None:
                continue
            if key.startswith(f"{PREFIX}project:"):
                projects.append(_project(json.loads(raw)))
            elif key.startswith(f"{PREFIX}job:"):
                jobs.append(_job(raw))
            elif key.startswith(f"{PREFIX}allowlist:"):
                allowlists.append(_allowlist(json.loads(raw)))
        digests, job_ids = await self._revocations()
        jobs = [_revoked(j) if j.digest in digests or j.job_id in job_ids else j for j in jobs]
        by_id = {p.id: p for p in projects}  # a job's project with its visibility, as loaded
        jobs = [replace(j, project=by_id.get(j.project.id, j.project)) for j in jobs]
        return Listing(
            Grants(
                tuple(sorted(projects, key=lambda p: p.id)),
                tuple(sorted(jobs, key=lambda j: j.job_id)),
                tuple(sorted(allowlists, key=lambda a: a.project_id)),
            ),
            digests,
            job_ids,
        )

    async def _revocations(self) -> tuple[frozenset[str], frozenset[int]]:
        digests: set[str] = set()
        job_ids: set[int] = set()
        async for key in self._client.scan_iter(match=f"{PREFIX}revoked:*", count=1000):
            kind, _, value = key[len(PREFIX) + len("revoked:") :].partition(":")
            if kind == "digest":
                digests.add(value)
            elif kind == "job":
                job_ids.add(int(value))
        return frozenset(digests), frozenset(job_ids)


def _revoked(job: Job) -> Job:
    return Job(job.digest, job.job_id, job.project, job.expires_at, revoked=True)


def _serialize(grants: Grants) -> dict[str, str]:
    content: dict[str, str] = {}
    for project in grants.projects:
        encoded = json.dumps(project.describe())  # with its visibility and features
        content[f"{PREFIX}project:{project.id}"] = encoded
        content[f"{PREFIX}projectpath:{project.key}"] = encoded
    for job in grants.jobs:
        encoded = json.dumps(
            {
                "digest": job.digest,
                "job_id": job.job_id,
                "project": {"id": job.project.id, "path": job.project.path},
                "expires_at": job.expires_at,
            }
        )
        content[f"{PREFIX}job:{job.digest}"] = encoded
        content[f"{PREFIX}jobid:{job.job_id}"] = encoded
    for allowlist in grants.allowlists:
        entries = [
            {
                "kind": e.kind.value,
                "source": e.source,
                "source_id": e.source_id,
                "default_permissions": e.default_permissions,
                "policies": list(e.policies),
            }
            for e in allowlist.entries
        ]
        content[f"{PREFIX}allowlist:{allowlist.project_id}"] = json.dumps(
            {"project_id": allowlist.project_id, "enabled": allowlist.enabled, "entries": entries}
        )
    return content


def _project(data: dict[str, Any]) -> Project:
    return Project.from_description(data)  # records written before visibility read as private


def _job(raw: str) -> Job:
    data = json.loads(raw)
    return Job(data["digest"], int(data["job_id"]), _project(data["project"]), data["expires_at"])


def _allowlist(data: dict[str, Any]) -> Allowlist:
    entries = tuple(
        AllowlistEntry(
            EntryKind(e["kind"]),
            e["source"],
            e["source_id"],
            bool(e["default_permissions"]),
            tuple(e["policies"]),
        )
        for e in data["entries"]
    )
    return Allowlist(int(data["project_id"]), bool(data["enabled"]), entries)
