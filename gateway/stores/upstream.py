"""Optional upstream validation: ask GitLab which job a token the store does not know belongs to.

`GET /api/v4/job` with the token in `JOB-TOKEN` (lib/api/ci/jobs.rb, `job_token_allowed: true`,
no policies) answers 200 with `API::Entities::Ci::Job` while the job is running, 401 otherwise.
The job id is `id`; the project id is `pipeline.project_id` (`Entities::Ci::PipelineBasic`);
the project's full path comes from `web_url`, which is
`project_job_url(job.project, job)` = `<instance URL>/<full path>/-/jobs/<id>`
(lib/api/entities/ci/job_basic.rb). The allowlists still come from the store.

Answers are cached by token digest: positive ones for `ttl` in one LRU, "not a job token" answers
(401, 403, 404) for `negative_ttl` in another, bounded by `negative_size`: the gate also asks
about values that may be another credential (a personal access token as Bearer, say), and those
must neither evict the positive answers nor send one request upstream per request. Any other
answer or a network fault raises `StoreUnavailable` (503, fail closed), and is not cached.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from gateway.errors import StoreUnavailable
from gateway.stores.cache import MISS, Lru
from gateway.stores.grants import Job, Project
from gateway.stores.upstream_http import UpstreamClient

__all__ = ["UpstreamValidator"]

NEGATIVE_TTL = 5.0


class UpstreamValidator(UpstreamClient):
    def __init__(
        self,
        base_url: str,
        *,
        api_prefix: str,
        relative_url_root: str,
        timeout: float,
        ttl: float,
        size: int,
        negative_ttl: float = NEGATIVE_TTL,
        negative_size: int | None = None,
    ) -> None:
        super().__init__(timeout)
        self.url = base_url.rstrip("/") + relative_url_root + api_prefix + "/job"
        self.root = relative_url_root
        self.ttl, self.negative_ttl = ttl, negative_ttl
        self._cache: Lru[str, Job] = Lru(size)
        self._negative: Lru[str, bool] = Lru(size if negative_size is None else negative_size)

    def invalidate(self) -> None:
        self._cache.clear()
        self._negative.clear()

    async def job(self, digest: str, secret: str) -> Job | None:
        """The running job `secret` (whose digest is `digest`) is the token of, or None when
        the upstream says it is no job token (now). Raises StoreUnavailable."""
        cached = self._cache.get(digest)
        if cached is not MISS:
            return cached
        if self._negative.get(digest) is not MISS:
            return None
        job = await self._ask(digest, secret)
        if job is None:
            self._negative.put(digest, True, self.negative_ttl)
        else:
            self._cache.put(digest, job, self.ttl)
        return job

    async def _ask(self, digest: str, secret: str) -> Job | None:
        try:
            async with self._client().get(
                self.url, headers={"JOB-TOKEN": secret}, allow_redirects=False
            ) as resp:
                if resp.status in (401, 403, 404):
                    return None
                if resp.status != 200:
                    raise StoreUnavailable(
                        f"upstream validation: GET {self.url} answered {resp.status}"
                    )
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise StoreUnavailable(f"upstream validation: {exc.__class__.__name__}") from None
        return self._parse(digest, body)

    def _parse(self, digest: str, body: Any) -> Job:
        try:
            job_id = int(body["id"])
            project_id = int(body["pipeline"]["project_id"])
            path = urlsplit(str(body["web_url"])).path
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreUnavailable(
                f"upstream validation: unexpected /job answer ({exc.__class__.__name__})"
            ) from None
        suffix = f"/-/jobs/{job_id}"
        if self.root and path.startswith(self.root + "/"):
            path = path[len(self.root) :]
        if not path.endswith(suffix):
            raise StoreUnavailable("upstream validation: web_url does not name the job's project")
        full_path = unquote(path[: -len(suffix)].strip("/"))
        return Job(digest, job_id, Project(project_id, full_path), None)
