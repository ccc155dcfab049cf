"""Issue 17 points 3 and 5 against real processes: a store must exist (only `store load
--create` makes one), and revocations can be managed (unrevoke, a guarded --job-id) and are
visible in `store load`, `store list`, `check` and the request log line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as redis
from fixtures.proxy import call
from job_grants import APP, write_grants

from gateway.core import tokens
from gateway.core.gate import Gate
from gateway.settings import Settings
from gateway.stores import open_store
from gateway.stores.grants import load_grants

API = "/api/v4"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.fixture
def a_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/store.db"
    loaded = cli(
        "store", "load", str(write_grants(tmp_path / "grants.yaml")), "--store", url, "--create"
    )
    assert loaded.returncode == 0, loaded.stderr
    return url


# ---- point 3: store paths


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--upstream", "http://127.0.0.1:9", "--port", "0", "--admin-port", "0"],
        ["check", "GET", f"{API}/job", "--token", APP],
        ["store", "list"],
        ["store", "revoke", "--job-id", "5001"],
        ["store", "unrevoke", "--job-id", "5001"],
        ["store", "load", "GRANTS"],
    ],
    ids=["serve", "check", "list", "revoke", "unrevoke", "load"],
)
@pytest.mark.parametrize("where", ["nonexistent/dir/x.db", "x.db"])
def test_a_missing_store_is_a_clear_start_up_error(tmp_path: Path, command, where) -> None:
    grants = write_grants(tmp_path / "grants.yaml")
    command = [str(grants) if part == "GRANTS" else part for part in command]
    url = f"sqlite:///{tmp_path / where}"

    result = cli(*command, "--store", url)

    assert result.returncode == 2
    assert result.stderr.startswith(
        f"jobtoken-gateway: error: no token store at {tmp_path / where}"
    )
    assert "--create" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grants.yaml"]  # nothing created


def test_the_relative_default_store_is_resolved_in_the_error(tmp_path: Path) -> None:
    result = cli("serve", "--upstream", "http://127.0.0.1:9", "--port", "0", cwd=tmp_path)

    assert result.returncode == 2
    assert f"no token store at {tmp_path / 'gateway.db'} " in result.stderr
    assert "sqlite:///gateway.db" in result.stderr


def test_load_creates_only_with_create(tmp_path: Path) -> None:
    grants = str(write_grants(tmp_path / "grants.yaml"))
    url = f"sqlite:///{tmp_path}/new/store.db"

    assert cli("store", "load", grants, "--store", url).returncode == 2
    assert not (tmp_path / "new").exists()
    created = cli("store", "load", grants, "--store", url, "--create")
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "new" / "store.db").is_file()
    assert cli("store", "load", grants, "--store", url).returncode == 0  # it exists now


async def test_a_store_deleted_while_serving_is_not_ready_and_not_recreated(
    a_store: str, an_upstream, a_gateway_process, tmp_path: Path
) -> None:
    gateway = a_gateway_process("--upstream", an_upstream.url, env={"GATEWAY_STORE": a_store})
    ready = await call("GET", gateway.admin_url + "/-/ready")
    assert ready.status == 200
    database = Path(a_store.removeprefix("sqlite:///"))

    def remove() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)

    await asyncio.to_thread(remove)
    await asyncio.sleep(1.5)  # the store's generation poll notices the file is gone

    ready = await call("GET", gateway.admin_url + "/-/ready")
    assert ready.status == 503
    assert "token store unavailable" in ready.json()["detail"]
    assert not await asyncio.to_thread(database.exists)


# ---- point 5: revocations


def test_revoke_refuses_an_unknown_job_id_unless_forced(a_store: str) -> None:
    refused = cli("store", "revoke", "--store", a_store, "--job-id", "50011")
    assert refused.returncode == 2
    assert "holds no job 50011" in refused.stderr
    assert "--force" in refused.stderr
    listing = json.loads(cli("store", "list", "--store", a_store, "--json").stdout)
    assert listing["revoked"]["job_ids"] == []

    forced = cli("store", "revoke", "--store", a_store, "--job-id", "50011", "--force")
    assert forced.returncode == 0, forced.stderr
    listing = json.loads(cli("store", "list", "--store", a_store, "--json").stdout)
    assert listing["revoked"]["job_ids"] == [50011]


def test_a_revocation_is_shown_everywhere_and_can_be_lifted(a_store: str, tmp_path: Path) -> None:
    assert cli("store", "revoke", "--store", a_store, "--job-id", "5001").returncode == 0

    text = cli("store", "list", "--store", a_store).stdout
    assert f"job 5001     {tokens.fingerprint(tokens.digest(APP))}  acme/app  revoked" in text
    reloaded = cli("store", "load", str(tmp_path / "grants.yaml"), "--store", a_store)
    assert reloaded.returncode == 0
    assert "revoked (kept from earlier `store revoke`" in reloaded.stdout
    assert "jobs 5001" in reloaded.stdout
    checked = cli("check", "GET", f"{API}/projects/10/releases", "--store", a_store, "--token", APP)
    assert checked.returncode == 1
    assert "denied (401): token_revoked" in checked.stdout
    assert "job 5001, revoked (lift with `store unrevoke`)" in checked.stdout
    as_json = cli(
        "check", "GET", f"{API}/projects/10/releases", "--store", a_store, "--token", APP, "--json"
    )
    assert json.loads(as_json.stdout)["decision"]["revoked"] is True

    lifted = cli("store", "unrevoke", "--store", a_store, "--job-id", "5001")
    assert lifted.returncode == 0
    assert "lifted the revocation of job 5001" in lifted.stdout
    again = cli("check", "GET", f"{API}/projects/10/releases", "--store", a_store, "--token", APP)
    assert again.returncode == 0, again.stdout
    assert "not revoked" in cli("store", "unrevoke", "--store", a_store, "--job-id", "5001").stdout


async def test_a_revoked_token_gets_gitlabs_401_and_logs_token_revoked(
    a_store: str, an_upstream, a_gateway_process
) -> None:
    revoked = await asyncio.to_thread(cli, "store", "revoke", "--store", a_store, "--token", APP)
    assert revoked.returncode == 0
    gateway = a_gateway_process("--upstream", an_upstream.url, env={"GATEWAY_STORE": a_store})

    answer = await call(
        "GET", gateway.url + f"{API}/projects/10/releases", headers={"JOB-TOKEN": APP}
    )
    unknown = await call(
        "GET", gateway.url + f"{API}/projects/10/releases", headers={"JOB-TOKEN": "glcbt-nobody"}
    )

    # The client sees exactly what an unknown token gets (GitLab's answer)...
    assert (answer.status, answer.json()) == (401, {"message": "401 Unauthorized"})
    assert (unknown.status, unknown.json()) == (401, {"message": "401 Unauthorized"})
    assert answer.headers["X-Gateway-Reason"] == unknown.headers["X-Gateway-Reason"]
    # ...the operator's log line tells them apart.
    lines = await asyncio.to_thread(gateway.wait_for_event, "request", 2)
    assert [line["reason"] for line in lines] == ["token_revoked", "token_invalid"]
    assert lines[0]["job_id"] == 5001


async def test_an_empty_redis_database_is_not_ready(redis_url: str, tmp_path: Path) -> None:
    """A mistyped db number (or a restarted Redis without persistence) holds no store: every
    token would be unknown, so readiness must not say "reachable"."""
    url = redis_url.rpartition("/")[0] + "/11"
    client = redis.Redis.from_url(url)
    await client.flushdb()
    gate = await Gate.open(Settings(store=url))
    admin = open_store(url)
    try:
        ready, why = await gate.ready()
        assert not ready
        assert "holds no token store" in why
        await admin.load(load_grants(write_grants(tmp_path / "grants.yaml")))
        assert (await gate.ready())[0]
    finally:
        await gate.close()
        await admin.close()
        await client.flushdb()
        await client.aclose()
