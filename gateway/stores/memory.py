"""`memory://`: an in-process store for tests and the `check` command. Not shared, not durable."""

from __future__ import annotations

from collections.abc import Callable

from gateway.stores import Listing
from gateway.stores.content import Content
from gateway.stores.grants import Allowlist, Grants, Job, Project

__all__ = ["MemoryStore"]


class MemoryStore:
    kind = "memory"

    def __init__(self, grants: Grants | None = None) -> None:
        self._content = Content(grants or Grants())
        self._generation = 0
        self._subscribers: list[Callable[[], None]] = []

    async def job(self, digest: str) -> Job | None:
        return self._content.job(digest)

    async def job_by_id(self, job_id: int) -> Job | None:
        return self._content.job_by_id(job_id)

    async def project(self, ref: str) -> Project | None:
        return self._content.project(ref)

    async def allowlist(self, project_id: int) -> Allowlist | None:
        return self._content.allowlist(project_id)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def generation(self) -> str:
        return str(self._generation)

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    async def load(self, grants: Grants) -> None:
        content = self._content
        self._changed(Content(grants, content.revoked_digests, content.revoked_job_ids))

    async def revoke(self, *, digest: str | None = None, job_id: int | None = None) -> int:
        content, hits = self._content.revoke(digest, job_id)
        self._changed(content)
        return hits

    async def unrevoke(self, *, digest: str | None = None, job_id: int | None = None) -> int:
        content, removed = self._content.unrevoke(digest, job_id)
        self._changed(content)
        return removed

    async def listing(self) -> Listing:
        content = self._content
        return Listing(content.grants, content.revoked_digests, content.revoked_job_ids)

    def _changed(self, content: Content) -> None:
        self._content = content
        self._generation += 1
        for callback in self._subscribers:
            callback()
