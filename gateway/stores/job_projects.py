"""Which project a job belongs to, asked of the upstream when the store does not hold the job.

Used for `GET /jobs/:id/artifacts`, the route every job downloads its dependencies' artifacts
with: GitLab authorizes the *dependency* job's project there (`authenticate_job_via_dependent_job!`
then `authorize_job_token_policies!(current_job.project)`, lib/api/ci/runner.rb,
lib/api/ci/helpers/runner.rb), so the gateway needs that project.

GitLab has no job-token route naming a job's project from its id alone. With an operator's
read token (setting `package_lookup_token`) the gateway asks
`GET /projects/<project id>/jobs/<job id>` (lib/api/ci/jobs.rb, `find_build!` looks the job up in
that project only): 200 = the job is in that project, 404 = it is not (or does not exist). The
gate asks about the token's own project, the common case of a dependency in the same pipeline;
a job found elsewhere stays unresolved (refused: never more permissive than GitLab).

A job never moves between projects, so answers are cached: positive ones for `ttl`, negative
ones for `negative_ttl`. Any other answer or a network fault raises `StoreUnavailable` (503).
"""

from __future__ import annotations

import aiohttp

from gateway.errors import StoreUnavailable
from gateway.stores.cache import MISS, Lru
from gateway.stores.upstream_http import UpstreamClient

__all__ = ["JobProjects"]

NEGATIVE_TTL = 5.0


class JobProjects(UpstreamClient):
    """Answers "is job J in project P?" from the upstream, with the operator's read token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        api_prefix: str,
        relative_url_root: str,
        timeout: float,
        ttl: float,
        size: int,
        negative_ttl: float = NEGATIVE_TTL,
    ) -> None:
        super().__init__(timeout)
        self.base = base_url.rstrip("/") + relative_url_root + api_prefix
        self._token = token  # sent as PRIVATE-TOKEN only; never logged
        self.ttl, self.negative_ttl = ttl, negative_ttl
        self._cache: Lru[tuple[int, int], bool] = Lru(size)  # (project id, job id)

    def invalidate(self) -> None:
        self._cache.clear()

    async def job_in_project(self, job_id: int, project_id: int) -> bool:
        """True when the upstream finds job `job_id` in project `project_id`."""
        key = (project_id, job_id)
        cached = self._cache.get(key)
        if cached is not MISS:
            return cached
        found = await self._ask(job_id, project_id)
        self._cache.put(key, found, self.ttl if found else self.negative_ttl)
        return found

    async def _ask(self, job_id: int, project_id: int) -> bool:
        url = f"{self.base}/projects/{project_id}/jobs/{job_id}"
        try:
            async with self._client().get(
                url, headers={"PRIVATE-TOKEN": self._token}, allow_redirects=False
            ) as resp:
                if resp.status == 200:
                    return True
                if resp.status == 404:
                    return False
                raise StoreUnavailable(f"job lookup: GET {url} answered {resp.status}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise StoreUnavailable(f"job lookup: {exc.__class__.__name__}") from None
