"""The gate with real stores: caching, revocation across processes and replicas, outages, reloads,
and upstream validation against a real HTTP server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from job_grants import (
    APP,
    GRANTS_YAML,
    TOOL,
    a_gate,
    a_request,
    the_grants,
    write_grants,
)
from ports import free_port

from gateway.core import tokens
from gateway.core.decision import Reason
from gateway.core.gate import Gate
from gateway.errors import PolicyFileError
from gateway.settings import Settings
from gateway.stores import open_store
from gateway.stores.grants import Allowlist, Job, Project
from gateway.stores.memory import MemoryStore

API = "/api/v4"
ALLOWED = a_request("GET", f"{API}/projects/10/releases", APP)  # own project


async def eventually(gate: Gate, view: object, reason: Reason, within: float) -> float:
    """Seconds until `gate` decides `view` with `reason`; fails after `within` seconds."""
    start = time.monotonic()
    while True:
        decision = await gate.evaluate(view)  # type: ignore[arg-type]
        elapsed = time.monotonic() - start
        if decision.reason is reason:
            return elapsed
        assert elapsed < within, f"still {decision.reason} after {elapsed:.2f}s"
        await asyncio.sleep(0.02)


class CountingStore(MemoryStore):
    """A real memory store that counts the lookups it answers."""

    def __init__(self) -> None:
        super().__init__(the_grants())
        self.lookups = 0

    async def job(self, digest: str) -> Job | None:
        self.lookups += 1
        return await super().job(digest)

    async def project(self, ref: str) -> Project | None:
        self.lookups += 1
        return await super().project(ref)

    async def allowlist(self, project_id: int) -> Allowlist | None:
        self.lookups += 1
        return await super().allowlist(project_id)


# ---- cheap checks and caching


async def test_no_store_lookup_before_the_cheap_checks() -> None:
    store = CountingStore()
    gate = await a_gate(store)
    for view in (
        a_request("GET", f"{API}/projects/10/issues", APP),  # no route for job tokens
        a_request("GET", "/acme/app/-/issues", APP),  # not the API, not git
        a_request("GET", f"{API}/projects/10/releases"),  # no token
        a_request("GET", f"{API}/projects/10/releases?job_token={TOOL}", APP),  # conflict
        a_request("GET", f"{API}/projects/%2e%2e/releases", APP),  # refused target
    ):
        assert not (await gate.evaluate(view)).allowed or view.headers.get("JOB-TOKEN") is None
    assert store.lookups == 0
    await gate.close()


@pytest.mark.parametrize(
    "path",
    [
        "/packages/conan/v1/users/authenticate",
        "/projects/10/packages/conan/v1/users/authenticate",
        "/projects/acme%2Fapp/packages/conan/v1/users/authenticate",
    ],
)
async def test_the_conan_token_exchange_is_judged_like_any_route(path: str) -> None:
    # GitLab answers with a Conan JWT wrapping the job token; the gateway reads the JWT's
    # `access_token` claim on every Conan route (gateway/core/conan_jwt.py), so the exchange itself
    # is an ordinary route: no store lookup is refused, the route table decides.
    gate = await a_gate()
    decision = await gate.evaluate(a_request("GET", f"{API}{path}", APP))
    assert decision.reason is not Reason.ROUTE_NOT_AVAILABLE
    assert decision.audit.job_id == 5001
    # Without a job token (a PAT user, say) the exchange is the upstream's business.
    assert (await gate.evaluate(a_request("GET", f"{API}{path}"))).reason is Reason.NO_TOKEN
    await gate.close()


async def test_a_trace_body_is_inspected_like_any_other() -> None:
    # Rack parses a form body whatever the method; only CONNECT (refused earlier) has no body.
    gate = await a_gate(CountingStore())
    view = a_request(
        "TRACE",
        f"{API}/projects/10/releases",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        body=f"job_token={TOOL}".encode(),
    )
    assert gate.needs_body(view)
    await gate.close()


async def test_a_cached_decision_does_not_touch_the_store() -> None:
    store = CountingStore()
    gate = await a_gate(store)
    view = a_request("GET", f"{API}/projects/20/deployments", APP)
    assert (await gate.evaluate(view)).reason is Reason.POLICIES_GRANTED
    first = store.lookups
    assert first == 3  # job, project, allowlist
    for _ in range(5):
        assert (await gate.evaluate(view)).reason is Reason.POLICIES_GRANTED
    assert store.lookups == first
    await gate.close()


async def test_unknown_tokens_are_cached_negatively_until_a_load() -> None:
    store = CountingStore()
    gate = await a_gate(store)
    view = a_request("GET", f"{API}/projects/10/releases", "glcbt-new-job")
    assert (await gate.evaluate(view)).reason is Reason.TOKEN_INVALID
    assert (await gate.evaluate(view)).reason is Reason.TOKEN_INVALID
    assert store.lookups == 1
    grants = GRANTS_YAML.replace(
        "allowlists:", "  - {token: glcbt-new-job, job_id: 9, project: 10}\nallowlists:"
    )
    from gateway.stores.grants import parse_grants

    await store.load(parse_grants(grants, "new"))
    assert (await gate.evaluate(view)).reason is Reason.OWN_PROJECT
    await gate.close()


async def test_a_cached_job_is_never_used_past_its_expiry() -> None:
    from datetime import UTC, datetime

    soon = datetime.fromtimestamp(time.time() + 0.3, UTC).isoformat()
    grants = GRANTS_YAML.replace(
        "allowlists:",
        f'  - {{token: glcbt-short, job_id: 8, project: 10, expires_at: "{soon}"}}\nallowlists:',
    )
    from gateway.stores.grants import parse_grants

    gate = await a_gate(MemoryStore(parse_grants(grants, "short")), cache_ttl=60)
    view = a_request("GET", f"{API}/projects/10/releases", "glcbt-short")
    assert (await gate.evaluate(view)).reason is Reason.OWN_PROJECT  # cached for up to 60 s
    assert await eventually(gate, view, Reason.TOKEN_EXPIRED, within=1.0) < 1.0
    await gate.close()


# ---- revocation seen by running gateways


async def test_a_revocation_in_redis_reaches_every_replica_within_a_second(redis_url: str) -> None:
    url = redis_url.rpartition("/")[0] + "/6"
    admin = open_store(url)
    await admin.load(the_grants())
    replicas = [await Gate.open(Settings(store=url, cache_ttl=300)) for _ in range(2)]
    for gate in replicas:
        assert (await gate.evaluate(ALLOWED)).reason is Reason.OWN_PROJECT  # now cached
    await asyncio.sleep(0.2)  # the change feeds are subscribed
    await admin.revoke(job_id=5001)
    seen = await asyncio.gather(
        *(eventually(g, ALLOWED, Reason.TOKEN_REVOKED, within=1.0) for g in replicas)
    )
    assert max(seen) < 1.0
    for gate in replicas:
        await gate.close()
    await admin.close()


async def test_a_lost_redis_message_is_caught_by_the_generation_poll(redis_url: str) -> None:
    url = redis_url.rpartition("/")[0] + "/7"
    admin = open_store(url)
    await admin.load(the_grants())
    gate = await Gate.open(Settings(store=url, cache_ttl=300))
    assert (await gate.evaluate(ALLOWED)).reason is Reason.OWN_PROJECT
    # Revoke behind the channel's back: no PUBLISH, only the keys and the generation.
    client = aioredis.Redis.from_url(url)
    await client.set("jtg:revoked:job:5001", "1")
    await client.incr("jtg:generation")
    await client.aclose()
    assert await eventually(gate, ALLOWED, Reason.TOKEN_REVOKED, within=1.2) < 1.2
    await gate.close()
    await admin.close()


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


async def test_a_sqlite_revocation_from_the_cli_reaches_a_running_gate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    grants = str(write_grants(tmp_path / "grants.yaml"))
    loaded = run_cli("store", "load", grants, "--store", url, "--create")
    assert loaded.returncode == 0, loaded.stderr
    gate = await Gate.open(Settings(store=url, cache_ttl=300))
    assert (await gate.evaluate(ALLOWED)).reason is Reason.OWN_PROJECT
    revoked = await asyncio.to_thread(run_cli, "store", "revoke", "--store", url, "--token", APP)
    assert revoked.returncode == 0, revoked.stderr
    assert APP not in revoked.stdout
    assert await eventually(gate, ALLOWED, Reason.TOKEN_REVOKED, within=1.5) < 1.5
    await gate.close()


# ---- outages: 503, readiness, recovery


@pytest.fixture
def own_redis(redis_server: Any, tmp_path: Path) -> Iterator[Any]:
    """A redis-server of this test's own (conftest's RedisServer), to stop and start freely."""
    server = type(redis_server)(redis_server.binary, tmp_path)
    server.start()
    yield server
    server.stop()


async def test_redis_outage_is_503_and_the_gate_recovers_alone(own_redis: Any) -> None:
    admin = open_store(own_redis.url)
    await admin.load(the_grants())
    await admin.close()
    gate = await Gate.open(Settings(store=own_redis.url, store_timeout=0.5, cache_ttl=0))
    assert (await gate.evaluate(ALLOWED)).reason is Reason.OWN_PROJECT
    own_redis.stop()
    down = await gate.evaluate(ALLOWED)
    assert (down.reason, down.status) == (Reason.STORE_UNAVAILABLE, 503)
    ready, why = await gate.ready()
    assert not ready
    assert "unavailable" in why
    own_redis.start()  # an empty server: load again, as an operator would
    admin = open_store(own_redis.url)
    await admin.load(the_grants())
    await admin.close()
    await eventually(gate, ALLOWED, Reason.OWN_PROJECT, within=5.0)
    assert (await gate.ready())[0]
    await gate.close()


async def test_a_hung_redis_times_out_into_503(own_redis: Any) -> None:
    admin = open_store(own_redis.url)
    await admin.load(the_grants())
    await admin.close()
    gate = await Gate.open(Settings(store=own_redis.url, store_timeout=0.3, cache_ttl=0))
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        decision = await gate.evaluate(ALLOWED)
        assert decision.reason is Reason.STORE_UNAVAILABLE
        assert time.monotonic() - started < 1.5
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    await eventually(gate, ALLOWED, Reason.OWN_PROJECT, within=5.0)
    await gate.close()


async def test_a_broken_sqlite_file_is_503_until_it_is_repaired(tmp_path: Path) -> None:
    database = tmp_path / "store.db"
    database.write_bytes(b"this is not a database" * 100)
    url = f"sqlite:///{database}"
    gate = await Gate.open(Settings(store=url, cache_ttl=0))
    decision = await gate.evaluate(ALLOWED)
    assert (decision.reason, decision.status) == (Reason.STORE_UNAVAILABLE, 503)
    assert (
        decision.message
        == "503 Service Unavailable - The token store cannot answer; try again later."
    )
    assert not (await gate.ready())[0]
    database.unlink()
    repaired = open_store(url, create=True)
    await repaired.load(the_grants())
    await repaired.close()
    await eventually(gate, ALLOWED, Reason.OWN_PROJECT, within=2.0)
    assert (await gate.ready())[0]
    await gate.close()


async def test_a_locked_sqlite_database_is_503(tmp_path: Path) -> None:
    import sqlite3

    database = tmp_path / "store.db"
    url = f"sqlite:///{database}"
    setup = open_store(url, create=True)
    await setup.load(the_grants())
    await setup.close()
    # Another process holds an exclusive lock (e.g. a long maintenance transaction).
    locker = sqlite3.connect(database, isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    try:
        gate = await Gate.open(Settings(store=url, store_timeout=0.3, cache_ttl=0))
        decision = await gate.evaluate(ALLOWED)
        assert (decision.reason, decision.status) == (Reason.STORE_UNAVAILABLE, 503)
        assert not (await gate.ready())[0]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await eventually(gate, ALLOWED, Reason.OWN_PROJECT, within=3.0)
    await gate.close()


# ---- the file store: change detection, SIGHUP, bad edits


async def test_a_file_store_follows_its_file(tmp_path: Path) -> None:
    path = write_grants(tmp_path / "grants.yaml")
    gate = await Gate.open(Settings(store=f"file://{path}", cache_ttl=300))
    assert (await gate.evaluate(ALLOWED)).reason is Reason.OWN_PROJECT
    without_app = GRANTS_YAML.replace(
        '  - {token: glcbt-app-job, job_id: 5001, project: acme/app, expires_at: "2099-01-01T00:00:00Z"}\n',
        "",
    )
    path.write_text(without_app)
    await eventually(gate, ALLOWED, Reason.TOKEN_INVALID, within=1.5)
    path.write_text("jobs: [{token: x}]\n")  # invalid: the previous content stays in force
    await asyncio.sleep(0.8)
    assert (await gate.evaluate(ALLOWED)).reason is Reason.TOKEN_INVALID
    # Still ready: replicas sharing one bad edit must not all leave rotation at once.
    assert (await gate.ready())[0]
    with pytest.raises(PolicyFileError, match=r"jobs\[0\].*previous grants stay in force"):
        await gate.reload()  # SIGHUP with the bad file: reported, old content kept
    assert (await gate.evaluate(ALLOWED)).reason is Reason.TOKEN_INVALID
    path.write_text(GRANTS_YAML)
    await gate.reload()  # SIGHUP
    assert (await gate.evaluate(ALLOWED)).reason is Reason.OWN_PROJECT
    assert (await gate.ready())[0]
    await gate.close()


async def test_a_bad_grants_file_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "grants.yaml"
    path.write_text("jobs:\n  - {token: x, job_id: 1, project: nowhere/x}\n")
    with pytest.raises(PolicyFileError, match=r"jobs\[0\]\.project"):
        await Gate.open(Settings(store=f"file://{path}"))


# ---- upstream validation against a real HTTP server


@pytest.fixture
async def a_gitlab(aiohttp_server) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    """A minimal GitLab `GET /api/v4/job` (lib/api/ci/jobs.rb) on a loopback port."""
    seen: list[str] = []

    async def job(request: web.Request) -> web.Response:
        token = request.headers.get("JOB-TOKEN", "")
        seen.append(tokens.fingerprint(tokens.digest(token)))
        if token == "glcbt-upstream-job":
            body = {
                "id": 7001,
                "status": "running",
                "pipeline": {"id": 1, "project_id": 12},
                "web_url": f"http://{request.host}/other/tool/-/jobs/7001",
            }
            return web.json_response(body)
        if token == "glcbt-revoked-upstream-job":
            body = {
                "id": 5002,
                "pipeline": {"project_id": 12},
                "web_url": f"http://{request.host}/other/tool/-/jobs/5002",
            }
            return web.json_response(body)
        return web.json_response({"message": "401 Unauthorized"}, status=401)

    app = web.Application()
    app.router.add_get("/api/v4/job", job)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), seen


async def test_upstream_validation_resolves_tokens_the_store_does_not_know(
    a_gitlab: tuple[str, list[str]],
) -> None:
    url, seen = a_gitlab
    gate = await a_gate(upstream=url, upstream_validation=True)
    view = a_request("GET", f"{API}/projects/12/releases", "glcbt-upstream-job")
    decision = await gate.evaluate(view)
    assert decision.reason is Reason.OWN_PROJECT
    assert (decision.audit.job_id, decision.audit.source_project) == (7001, "other/tool")
    cross = await gate.evaluate(
        a_request("GET", f"{API}/projects/20/releases", "glcbt-upstream-job")
    )
    assert cross.reason is Reason.NOT_ALLOWLISTED  # the allowlists still come from the store
    assert len(seen) == 1  # cached
    bad = a_request("GET", f"{API}/projects/12/releases", "glcbt-finished")
    assert (await gate.evaluate(bad)).reason is Reason.TOKEN_INVALID
    assert (await gate.evaluate(bad)).reason is Reason.TOKEN_INVALID
    assert len(seen) == 2  # 401s are cached too
    await gate.close()


async def test_a_job_revoked_in_the_store_stays_revoked_whatever_upstream_says(
    a_gitlab: tuple[str, list[str]],
) -> None:
    url, _ = a_gitlab
    store = MemoryStore(the_grants())
    await store.revoke(job_id=5002)
    gate = await a_gate(store, upstream=url, upstream_validation=True)
    view = a_request("GET", f"{API}/projects/12/releases", "glcbt-revoked-upstream-job")
    assert (await gate.evaluate(view)).reason is Reason.TOKEN_REVOKED
    await gate.close()


async def test_an_unreachable_upstream_validation_is_503() -> None:
    gate = await a_gate(
        upstream=f"http://127.0.0.1:{free_port()}", upstream_validation=True, store_timeout=1
    )
    decision = await gate.evaluate(a_request("GET", f"{API}/projects/12/releases", "glcbt-unknown"))
    assert (decision.reason, decision.status) == (Reason.STORE_UNAVAILABLE, 503)
    await gate.close()


# ---- end to end: a real gateway (`a_gateway`) in front of a real upstream


async def test_an_allowed_call_reaches_the_upstream_unchanged(
    a_gateway: Any, an_upstream: Any, captured_logs: Any
) -> None:
    from fixtures.proxy import call

    gate = await a_gate()
    gateway = await a_gateway(an_upstream.url, gate=gate)
    target = "/api/v4/projects/acme%2Fplatform%2Fdeployer/deployments?per_page=5"
    answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": APP})
    assert answer.status == 200
    assert an_upstream.last.raw_path == target
    assert an_upstream.last.header("JOB-TOKEN") == [APP]
    line = captured_logs.events("request")[-1]
    assert line["reason"] == "policies_granted"
    assert line["fingerprint"] == tokens.fingerprint(tokens.digest(APP))
    assert (line["job_id"], line["source_project"]) == (5001, "acme/app")
    assert APP not in json.dumps(captured_logs.lines())
    await gate.close()


@pytest.mark.parametrize(
    ("method", "target", "headers", "status", "reason", "message"),
    [
        (
            "GET",
            "/api/v4/projects/20/releases",
            {"JOB-TOKEN": APP},
            403,
            "insufficient_permissions",
            "403 Forbidden - Insufficient permissions to access this resource in project #20. "
            "The following token permission is required: read_releases.",
        ),
        (
            "POST",
            "/api/v4/projects/20/deployments",
            {"JOB-TOKEN": APP},
            403,
            "insufficient_permissions",
            "403 Forbidden - Insufficient permissions to access this resource in project #20. "
            "The following token permissions are required: admin_deployments and admin_environments.",
        ),
        (
            "GET",
            "/api/v4/projects/20/releases",
            {"JOB-TOKEN": TOOL},
            403,
            "not_allowlisted",
            "403 Forbidden - Authentication by CI/CD job token not allowed from tool to project #20.",
        ),
        (
            "GET",
            "/api/v4/projects/10/releases",
            {"JOB-TOKEN": "glcbt-nobody"},
            401,
            "token_invalid",
            "401 Unauthorized",
        ),
        (
            "GET",
            f"/api/v4/projects/10/releases?job_token={TOOL}",
            {"JOB-TOKEN": APP},
            400,
            "credential_conflict",
            "400 Bad request - Conflicting credentials: different job tokens in job_token parameter, JOB-TOKEN header.",
        ),
        (
            "GET",
            "/api/v4/projects/10/issues",
            {"JOB-TOKEN": APP},
            403,
            "route_not_available",
            "403 Forbidden - This endpoint is not available to CI/CD job tokens through this gateway.",
        ),
    ],
)
async def test_a_denied_call_is_answered_as_gitlab_and_never_forwarded(
    a_gateway: Any,
    an_upstream: Any,
    method: str,
    target: str,
    headers: dict[str, str],
    status: int,
    reason: str,
    message: str,
) -> None:
    from fixtures.proxy import call

    gate = await a_gate()
    gateway = await a_gateway(an_upstream.url, gate=gate)
    answer = await call(method, gateway.url + target, headers=headers)
    assert answer.status == status
    assert answer.json() == {"message": message}
    assert answer.headers["X-Gateway-Reason"] == reason
    assert answer.headers["Content-Type"].startswith("application/json")
    assert an_upstream.received == []
    await gate.close()


async def test_tokens_in_bodies_are_judged_and_the_body_forwarded(
    a_gateway: Any, an_upstream: Any
) -> None:
    from fixtures.proxy import call

    gate = await a_gate()
    gateway = await a_gateway(an_upstream.url, gate=gate)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = f"name=v1&job_token={APP}".encode()
    allowed = await call(
        "POST", gateway.url + "/api/v4/projects/10/releases", headers=form, data=body
    )
    assert allowed.status == 200
    assert an_upstream.last.body_length == len(body)
    denied = await call(
        "POST",
        gateway.url + "/api/v4/projects/20/releases",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"job_token": APP}).encode(),
    )
    assert denied.status == 403
    assert denied.headers["X-Gateway-Reason"] == "insufficient_permissions"
    assert len(an_upstream.received) == 1
    await gate.close()


async def test_git_over_http_through_the_gateway(a_gateway: Any, an_upstream: Any) -> None:
    from fixtures.proxy import call
    from job_grants import basic

    gate = await a_gate()
    gateway = await a_gateway(an_upstream.url, gate=gate)
    clone = "/acme/platform/deployer.git/info/refs?service=git-upload-pack"
    as_worker = {"Authorization": basic("gitlab-ci-token", "glcbt-worker-job")}
    assert (await call("GET", gateway.url + clone, headers=as_worker)).status == 200
    as_tool = {"Authorization": basic("gitlab-ci-token", TOOL)}
    denied = await call("GET", gateway.url + clone, headers=as_tool)
    assert denied.status == 403
    assert denied.headers["X-Gateway-Reason"] == "not_allowlisted"
    assert len(an_upstream.received) == 1
    await gate.close()


async def test_the_app_opens_its_own_store_and_fails_closed(
    a_gateway: Any, an_upstream: Any, own_redis: Any
) -> None:
    from fixtures.proxy import call

    setup = open_store(own_redis.url)
    await setup.load(the_grants())
    await setup.close()
    gateway = await a_gateway(an_upstream.url, store=own_redis.url, cache_ttl=0, store_timeout=0.5)
    url = gateway.url + "/api/v4/projects/10/releases"
    assert (await call("GET", url, headers={"JOB-TOKEN": APP})).status == 200
    own_redis.stop()
    down = await call("GET", url, headers={"JOB-TOKEN": APP})
    assert down.status == 503
    assert down.headers["X-Gateway-Reason"] == "store_unavailable"
    assert down.json() == {
        "message": "503 Service Unavailable - The token store cannot answer; try again later."
    }
    assert len(an_upstream.received) == 1


async def test_a_replaced_sqlite_file_is_reopened(tmp_path: Path) -> None:
    database = tmp_path / "store.db"
    url = f"sqlite:///{database}"
    first = open_store(url, create=True)
    await first.load(the_grants())
    await first.close()
    gate = await Gate.open(Settings(store=url, cache_ttl=300))
    assert (await gate.evaluate(ALLOWED)).reason is Reason.OWN_PROJECT
    # An operator rebuilds the store from scratch: the gate must not keep the deleted file.
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"store.db{suffix}").unlink(missing_ok=True)
    rebuilt = open_store(url, create=True)
    await rebuilt.load(the_grants())
    await rebuilt.revoke(job_id=5001)
    await rebuilt.close()
    assert await eventually(gate, ALLOWED, Reason.TOKEN_REVOKED, within=1.5) < 1.5
    await gate.close()
