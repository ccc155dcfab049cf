"""A small upstream for demos and tests: answers like a GitLab API would, and says what it got.

    GET /api/v4/job     GitLab's "current job" endpoint (lib/api/ci/jobs.rb): with a job token it
                        knows (JOB-TOKEN header, `job_token` parameter, or HTTP Basic with user
                        `gitlab-ci-token`), 200 and the job as `Entities::Ci::Job` shapes it
                        (a subset); otherwise 401 `{"message": "401 Unauthorized"}`.
    anything else       200 JSON describing the request exactly as received: method, raw_path
                        (raw target with query), headers as a list of [name, value] pairs,
                        body_length and body_sha256 (the body is hashed while streaming).

It never decompresses a request body: the length and digest are of the bytes on the wire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["JOBS", "DemoJob", "create_demo_app", "describe", "parse_job"]

_CI_USER = "gitlab-ci-token"  # GitLab: Gitlab::Auth::CI_JOB_USER


@dataclass(frozen=True, slots=True)
class DemoJob:
    """A running CI job the demo upstream recognises by its token."""

    id: int
    project_id: int
    project_path: str = "demo/project"
    username: str = "demo-user"
    status: str = "running"

    def as_gitlab(self, base_url: str) -> dict[str, Any]:
        """The job as GitLab's `GET /job` presents it (Entities::Ci::Job, abridged)."""
        web_url = f"{base_url}/{self.project_path}/-/jobs/{self.id}"
        return {
            "id": self.id,
            "status": self.status,
            "stage": "test",
            "name": "demo",
            "ref": "main",
            "tag": False,
            "allow_failure": False,
            "user": {"id": 1, "username": self.username},
            "pipeline": {
                "id": self.id * 10,
                "project_id": self.project_id,
                "ref": "main",
                "status": self.status,
            },
            "web_url": web_url,
            "project": {"ci_job_token_scope_enabled": True},
        }


JOBS: web.AppKey[Mapping[str, DemoJob]] = web.AppKey("jobs")


def parse_job(spec: str) -> tuple[str, DemoJob]:
    """`TOKEN=JOB_ID:PROJECT_ID[:PROJECT_PATH]` -> (token, job); ValueError when malformed."""
    token, eq, rest = spec.partition("=")
    parts = rest.split(":", 2)
    if not token or not eq or len(parts) < 2:
        raise ValueError(f"expected TOKEN=JOB_ID:PROJECT_ID[:PROJECT_PATH], got {spec!r}")
    path = parts[2] if len(parts) == 3 else "demo/project"
    return token, DemoJob(id=int(parts[0]), project_id=int(parts[1]), project_path=path)


def create_demo_app(jobs: Mapping[str, DemoJob] | None = None) -> web.Application:
    """The demo upstream; `jobs` maps job tokens to the jobs `GET /api/v4/job` reports."""
    app = web.Application()
    app[JOBS] = dict(jobs or {})
    app.router.add_get("/api/v4/job", _current_job)
    app.router.add_route("*", "/{tail:.*}", _describe)
    return app


async def _current_job(request: web.Request) -> web.Response:
    job = request.app[JOBS].get(_job_token(request) or "")
    if job is None:
        return web.json_response({"message": "401 Unauthorized"}, status=401)
    base_url = f"{request.scheme}://{request.host}"
    return web.json_response(job.as_gitlab(base_url))


def _job_token(request: web.Request) -> str | None:
    """The job token, from the carriers GitLab's `find_job_from_job_token` reads."""
    if token := request.headers.get("JOB-TOKEN"):
        return token
    if token := request.query.get("job_token"):
        return token
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password if user == _CI_USER else None
    return None


async def describe(request: web.Request) -> dict[str, Any]:
    """What the request looked like on the wire (consumes the body, hashing as it streams)."""
    digest = hashlib.sha256()
    length = 0
    while chunk := await request.content.readany():
        digest.update(chunk)
        length += len(chunk)
    return {
        "method": request.method,
        "raw_path": request.raw_path,
        "headers": [[name, value] for name, value in request.headers.items()],
        "body_length": length,
        "body_sha256": digest.hexdigest(),
    }


async def _describe(request: web.Request) -> web.Response:
    return web.json_response(await describe(request))
