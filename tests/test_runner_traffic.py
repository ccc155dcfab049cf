"""Runner traffic through the real gateway to a GitLab-like upstream (tests/fixtures/gitlab_like.py):
a whole job's sequence, a later job downloading its artifacts as a dependency, and a job token
acting on another job, refused as GitLab refuses it (lib/api/ci/runner.rb, authenticate_job!)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from fixtures.gitlab_like import READ_TOKEN, RUNNER_TOKEN, GitLabLike, JobRecord, a_gitlab
from fixtures.proxy import call

__all__ = ["a_gitlab"]  # the fixture, imported for pytest

API = "/api/v4"
BUILD = "glcbt-build-job"
TEST = "glcbt-test-job"
OTHER = "glcbt-other-project-job"
ARTIFACT = b"PK\x03\x04 a zip archive of build/ " * 64


def the_pipeline(gitlab: GitLabLike) -> None:
    gitlab.add(JobRecord(101, BUILD, 10, "acme/app"))
    gitlab.add(JobRecord(102, TEST, 10, "acme/app", dependencies=[101]))
    gitlab.add(JobRecord(201, OTHER, 12, "other/tool"), queued=False)


async def a_runner_gateway(a_gateway: Any, gitlab: GitLabLike) -> str:
    gateway = await a_gateway(
        gitlab.url,
        store="memory://",  # the store knows no job: every job is validated upstream
        upstream_validation=True,
        package_lookup_token=READ_TOKEN,
    )
    return f"{gateway.url}{API}"


def artifacts_form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("artifact_format", "zip")
    form.add_field("artifact_type", "archive")
    form.add_field("file", ARTIFACT, filename="artifacts.zip", content_type="application/zip")
    return form


async def test_a_whole_pipeline_of_runner_requests_goes_through(
    a_gateway: Any, a_gitlab: GitLabLike
) -> None:
    the_pipeline(a_gitlab)
    api = await a_runner_gateway(a_gateway, a_gitlab)

    # The runner asks for a job with its own token (not a job token): forwarded.
    got = await call("POST", f"{api}/jobs/request", json={"token": RUNNER_TOKEN})
    assert got.status == 201, got.body
    assert got.json()["id"] == 101
    assert got.json()["token"] == BUILD

    # The job's own token on its own job: update, trace, artifacts.
    got = await call("PUT", f"{api}/jobs/101", json={"token": BUILD, "state": "running"})
    assert got.status == 200, got.body
    trace = {"JOB-TOKEN": BUILD, "Content-Range": "0-10", "Content-Type": "text/plain"}
    got = await call("PATCH", f"{api}/jobs/101/trace", data=b"$ make all\n", headers=trace)
    assert got.status == 202, got.body
    assert a_gitlab.jobs[101].trace == b"$ make all\n"
    got = await call("POST", f"{api}/jobs/101/artifacts/authorize", headers={"JOB-TOKEN": BUILD})
    assert got.status == 200, got.body
    got = await call(
        "POST", f"{api}/jobs/101/artifacts", data=artifacts_form(), headers={"JOB-TOKEN": BUILD}
    )
    assert got.status == 201, got.body
    assert a_gitlab.jobs[101].artifact == ARTIFACT
    got = await call("PUT", f"{api}/jobs/101", json={"token": BUILD, "state": "success"})
    assert got.status == 200, got.body

    # A later job of the pipeline downloads them as a dependency, with its own token. The store
    # does not hold job 101 (nor does the upstream validate a finished job's token): the gateway
    # asks which project job 101 is in, finds the token's own project, and lets it through.
    got = await call("POST", f"{api}/jobs/request", json={"token": RUNNER_TOKEN})
    assert got.status == 201
    assert got.json()["id"] == 102
    got = await call("GET", f"{api}/jobs/101/artifacts", headers={"JOB-TOKEN": TEST})
    assert got.status == 200, got.body
    assert got.body == ARTIFACT
    assert "GET /api/v4/projects/10/jobs/101" in a_gitlab.paths()
    # The same download with the token as the job_token parameter.
    got = await call("GET", f"{api}/jobs/101/artifacts?job_token={TEST}")
    assert got.status == 200
    assert got.body == ARTIFACT


async def test_a_job_token_acting_on_another_job_is_refused_as_gitlab_refuses_it(
    a_gateway: Any, a_gitlab: GitLabLike
) -> None:
    the_pipeline(a_gitlab)
    api = await a_runner_gateway(a_gateway, a_gitlab)
    for _ in range(2):  # both jobs running
        assert (
            await call("POST", f"{api}/jobs/request", json={"token": RUNNER_TOKEN})
        ).status == 201
    before = list(a_gitlab.received)
    refused: list[tuple[str, str, dict[str, Any]]] = [
        ("PUT", "/jobs/101", {"json": {"token": TEST, "state": "failed"}}),
        (
            "PATCH",
            "/jobs/101/trace",
            {"data": b"x", "headers": {"JOB-TOKEN": TEST, "Content-Range": "0-1"}},
        ),
        ("POST", "/jobs/101/artifacts/authorize", {"headers": {"JOB-TOKEN": TEST}}),
        ("POST", "/jobs/101/artifacts", {"data": artifacts_form(), "headers": {"JOB-TOKEN": TEST}}),
    ]
    for method, path, kwargs in refused:
        got = await call(method, f"{api}{path}", **kwargs)
        # authenticate_job!: `forbidden! unless job.valid_token?(job_token)` -> 403 Forbidden
        assert got.status == 403, (path, got.body)
        assert got.json()["message"] == "403 Forbidden"
        assert got.headers["X-Gateway-Reason"] == "job_token_mismatch"
    # Nothing reached the upstream but the validation of the acting token.
    assert [p for p in a_gitlab.paths()[len(before) :] if "/jobs/101" in p] == []
    assert a_gitlab.jobs[101].state == "running"
    assert a_gitlab.jobs[101].artifact is None


async def test_a_job_token_in_a_carrier_the_runner_api_does_not_read_is_refused(
    a_gateway: Any, a_gitlab: GitLabLike
) -> None:
    # `job_token` is `params[:token] || env['HTTP_JOB_TOKEN']` (lib/api/ci/helpers/runner.rb):
    # GitLab would find no token in `job_token=` and answer 403; so does the gateway.
    the_pipeline(a_gitlab)
    api = await a_runner_gateway(a_gateway, a_gitlab)
    await call("POST", f"{api}/jobs/request", json={"token": RUNNER_TOKEN})
    got = await call("PUT", f"{api}/jobs/101?job_token={BUILD}", json={"state": "running"})
    assert got.status == 403
    assert got.json()["message"] == "403 Forbidden"
    assert not [p for p in a_gitlab.paths() if p.startswith("PUT")]


async def test_a_dependency_in_another_project_stays_unresolved(
    a_gateway: Any, a_gitlab: GitLabLike
) -> None:
    # Job 201 is in other/tool (#12): GitLab would check #12's allowlist for acme/app, which the
    # gateway cannot name from the job id: refused, never more permissive than GitLab.
    the_pipeline(a_gitlab)
    a_gitlab.jobs[201].artifact = ARTIFACT
    api = await a_runner_gateway(a_gateway, a_gitlab)
    await call("POST", f"{api}/jobs/request", json={"token": RUNNER_TOKEN})
    got = await call("GET", f"{api}/jobs/201/artifacts", headers={"JOB-TOKEN": BUILD})
    assert got.status == 403, got.body
    assert got.headers["X-Gateway-Reason"] == "target_unresolved"
    assert "GET /api/v4/jobs/201/artifacts" not in a_gitlab.paths()


@pytest.mark.parametrize("token", ["legacy-unprefixed-runner-token", RUNNER_TOKEN])
async def test_runner_token_routes_forward_the_runner_token(
    a_gateway: Any, a_gitlab: GitLabLike, token: str
) -> None:
    # A runner token in `token` (prefixed or, for runners registered before GitLab 16.0, not)
    # is the runner API's own credential: forwarded unjudged, body unchanged.
    api = await a_runner_gateway(a_gateway, a_gitlab)
    for method, path in (("POST", "/jobs/request"), ("POST", "/runners/verify")):
        got = await call(method, f"{api}{path}", json={"token": token})
        assert got.headers.get("X-Gateway-Reason") is None, got.body
        assert f"{method} /api/v4{path}" in a_gitlab.paths()


async def test_a_job_lookup_the_upstream_does_not_answer_fails_closed(
    a_gateway: Any, a_gitlab: GitLabLike
) -> None:
    # A read token GitLab refuses (401): neither 200 nor 404, so no answer: 503, nothing forwarded.
    the_pipeline(a_gitlab)
    gateway = await a_gateway(
        a_gitlab.url,
        store="memory://",
        upstream_validation=True,
        package_lookup_token="glpat-revoked-read-token",
    )
    api = f"{gateway.url}{API}"
    await call("POST", f"{api}/jobs/request", json={"token": RUNNER_TOKEN})
    got = await call("GET", f"{api}/jobs/999/artifacts", headers={"JOB-TOKEN": BUILD})
    assert got.status == 503
    assert got.headers["X-Gateway-Reason"] == "store_unavailable"
    assert "GET /api/v4/jobs/999/artifacts" not in a_gitlab.paths()


async def test_without_a_read_token_a_dependency_the_store_does_not_hold_is_unresolved(
    a_gateway: Any, a_gitlab: GitLabLike
) -> None:
    the_pipeline(a_gitlab)
    gateway = await a_gateway(a_gitlab.url, store="memory://", upstream_validation=True)
    api = f"{gateway.url}{API}"
    await call("POST", f"{api}/jobs/request", json={"token": RUNNER_TOKEN})
    got = await call("GET", f"{api}/jobs/102/artifacts", headers={"JOB-TOKEN": BUILD})
    assert got.status == 403
    assert got.headers["X-Gateway-Reason"] == "target_unresolved"
    # Its own job's artifacts need no lookup: the token's job is in its own project.
    got = await call("GET", f"{api}/jobs/101/artifacts", headers={"JOB-TOKEN": BUILD})
    assert got.headers.get("X-Gateway-Reason") is None
    assert "GET /api/v4/jobs/101/artifacts" in a_gitlab.paths()
