"""An immutable in-memory index of a store's content, shared by the memory and file backends."""

from __future__ import annotations

from dataclasses import replace

from gateway.stores.grants import Allowlist, Grants, Job, Project, project_key

__all__ = ["Content", "tombstone"]


def tombstone(digest: str = "", job_id: int = 0) -> Job:
    """A revoked token the store has no job for: still answers "revoked", never "unknown"."""
    return Job(digest, job_id, Project(0, ""), None, revoked=True)


class Content:
    """Lookups over one `Grants` plus revocations; replace the whole object to change it."""

    __slots__ = (
        "_allowlists",
        "_by_digest",
        "_by_id",
        "_by_path",
        "_jobs",
        "grants",
        "revoked_digests",
        "revoked_job_ids",
    )

    def __init__(
        self,
        grants: Grants,
        revoked_digests: frozenset[str] = frozenset(),
        revoked_job_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.grants = grants
        self.revoked_digests = revoked_digests
        self.revoked_job_ids = revoked_job_ids
        self._by_id = {project.id: project for project in grants.projects}
        self._by_path = {project.key: project for project in grants.projects}
        self._by_digest = {job.digest: job for job in grants.jobs}
        self._jobs = {job.job_id: job for job in grants.jobs}
        self._allowlists = {allowlist.project_id: allowlist for allowlist in grants.allowlists}

    def _mark(self, job: Job) -> Job:
        if job.digest in self.revoked_digests or job.job_id in self.revoked_job_ids:
            return replace(job, revoked=True)
        return job

    def job(self, digest: str) -> Job | None:
        job = self._by_digest.get(digest)
        if job is not None:
            return self._mark(job)
        return tombstone(digest=digest) if digest in self.revoked_digests else None

    def job_by_id(self, job_id: int) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None:
            return self._mark(job)
        return tombstone(job_id=job_id) if job_id in self.revoked_job_ids else None

    def project(self, ref: str) -> Project | None:
        key = project_key(ref)
        if isinstance(key, int):
            return self._by_id.get(key)
        return None if key is None else self._by_path.get(key)

    def allowlist(self, project_id: int) -> Allowlist | None:
        return self._allowlists.get(project_id)

    def revoke(self, digest: str | None, job_id: int | None) -> tuple[Content, int]:
        """A new Content with the revocation applied, and how many known jobs it hit."""
        digests, ids = set(self.revoked_digests), set(self.revoked_job_ids)
        hits = 0
        if digest is not None:
            digests.add(digest)
            hits += digest in self._by_digest
        if job_id is not None:
            ids.add(job_id)
            hits += job_id in self._jobs
        return Content(self.grants, frozenset(digests), frozenset(ids)), hits

    def unrevoke(self, digest: str | None, job_id: int | None) -> tuple[Content, int]:
        """A new Content without these revocations, and how many were removed."""
        digests, ids = set(self.revoked_digests), set(self.revoked_job_ids)
        removed = 0
        if digest is not None and digest in digests:
            digests.discard(digest)
            removed += 1
        if job_id is not None and job_id in ids:
            ids.discard(job_id)
            removed += 1
        return Content(self.grants, frozenset(digests), frozenset(ids)), removed
