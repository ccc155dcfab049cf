"""`python -m gateway store load|revoke|list` against real SQLite files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from job_grants import APP, GRANTS_YAML, write_grants
from ports import free_port

from gateway.core import tokens

REPO = Path(__file__).resolve().parent.parent


def store(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "store", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def a_loaded_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/store.db"
    result = store("load", str(write_grants(tmp_path / "grants.yaml")), "--store", url, "--create")
    assert result.returncode == 0, result.stderr
    assert "7 projects, 4 jobs, 4 allowlists" in result.stdout
    return url


def listing(url: str) -> dict[str, object]:
    result = store("list", "--store", url, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_list_shows_fingerprints_never_tokens(a_loaded_store: str) -> None:
    document = listing(a_loaded_store)
    jobs = {job["job_id"]: job for job in document["jobs"]}  # type: ignore[attr-defined]
    assert jobs[5001]["fingerprint"] == tokens.fingerprint(tokens.digest(APP))
    assert jobs[5001]["project"] == "acme/app"
    assert jobs[5001]["expires_at"] == "2099-01-01T00:00:00Z"
    text = store("list", "--store", a_loaded_store)
    assert text.returncode == 0
    assert "acme/platform/deployer: enabled" in text.stdout
    for output in (json.dumps(document), text.stdout):
        assert APP not in output
        assert tokens.digest(APP) not in output


def test_revoke_by_token_and_by_job_id(a_loaded_store: str) -> None:
    result = store("revoke", "--store", a_loaded_store, "--token", APP)
    assert result.returncode == 0
    assert "a known job" in result.stdout
    assert APP not in result.stdout
    result = store("revoke", "--store", a_loaded_store, "--job-id", "5002")
    assert result.returncode == 0
    result = store(
        "revoke", "--store", a_loaded_store, "--token-sha256", tokens.digest("glcbt-later")
    )
    assert result.returncode == 0
    assert "stays revoked" in result.stdout
    jobs = {job["job_id"]: job for job in listing(a_loaded_store)["jobs"]}  # type: ignore[attr-defined]
    assert jobs[5001]["revoked"]
    assert jobs[5002]["revoked"]
    assert not jobs[5003]["revoked"]


def test_revoke_needs_exactly_one_target(a_loaded_store: str) -> None:
    assert store("revoke", "--store", a_loaded_store).returncode == 2
    assert (
        store("revoke", "--store", a_loaded_store, "--token", "a", "--job-id", "1").returncode == 2
    )
    assert store("revoke", "--store", a_loaded_store, "--token-sha256", "zz").returncode == 2


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (
            ("project: acme/app, expires", "project: acme/nowhere, expires"),
            ["jobs[0].project", "unknown project"],
        ),
        (
            ("policies: [read_releases]", "policies: [read_releasez]"),
            ["allowlists[0].entries[1].policies", "read_releasez"],
        ),
        (("job_id: 5002", "job_id: 5001"), ["jobs[1].job_id", "duplicate job id 5001"]),
        (
            ("{id: 30, path: open/target}", "{id: 30, path: open/target, owner: me}"),
            ["projects[4].owner", "Extra inputs"],
        ),
        (
            ("{source: acme, default_permissions: true}", "{source: acme, policies: [read_jobs]}"),
            ["allowlists[2].entries[0]", "default_permissions"],
        ),
        (("job_id: 5003", "job_id: -3"), ["jobs[2].job_id"]),
        (("projects:", "projects: {"), ["not valid YAML"]),
    ],
)
def test_invalid_files_are_rejected_with_file_entry_and_reason_and_nothing_changes(
    a_loaded_store: str, tmp_path: Path, change: tuple[str, str], names: list[str]
) -> None:
    assert change[0] in GRANTS_YAML
    bad = write_grants(tmp_path / "bad.yaml", GRANTS_YAML.replace(change[0], change[1], 1))
    before = listing(a_loaded_store)
    result = store("load", str(bad), "--store", a_loaded_store)
    assert result.returncode == 2
    assert str(bad) in result.stderr
    for name in names:
        assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert listing(a_loaded_store) == before


def test_a_load_replaces_the_whole_content(a_loaded_store: str, tmp_path: Path) -> None:
    small = write_grants(tmp_path / "small.yaml", "projects: [{id: 7, path: solo/one}]\n")
    assert store("load", str(small), "--store", a_loaded_store).returncode == 0
    document = listing(a_loaded_store)
    assert document["projects"] == [{"id": 7, "path": "solo/one"}]
    assert document["jobs"] == []
    assert document["allowlists"] == []


def test_the_example_file_loads() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "store",
            "load",
            str(REPO / "policies" / "grants.example.yaml"),
            "--store",
            "memory://",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_file_store_is_read_only(tmp_path: Path) -> None:
    path = write_grants(tmp_path / "grants.yaml")
    result = store("revoke", "--store", f"file://{path}", "--job-id", "5001")
    assert result.returncode == 2
    assert "read-only" in result.stderr


def test_an_unknown_store_url_is_a_usage_error() -> None:
    result = store("list", "--store", "postgres://db/x")
    assert result.returncode == 2
    assert "unknown token store" in result.stderr


def test_an_unreachable_redis_is_reported(tmp_path: Path) -> None:
    result = store(
        "list", "--store", f"redis://127.0.0.1:{free_port()}/0", "--store-timeout", "0.5"
    )
    assert result.returncode == 2
    assert "redis store" in result.stderr
    assert "Traceback" not in result.stderr


# ---- `check METHOD PATH --token T --store URL`: the same Gate.evaluate, offline


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_explains_an_allowed_decision(a_loaded_store: str) -> None:
    path = "/api/v4/projects/acme%2Fplatform%2Fdeployer/deployments"
    result = check("GET", path, "--store", a_loaded_store, "--token", APP, "--json")
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)["decision"]
    assert decision["allowed"] is True
    assert decision["reason"] == "policies_granted"
    assert decision["status"] is None
    assert decision["job_id"] == 5001
    assert decision["source_project"] == "acme/app"
    assert decision["target"] == "#20 acme/platform/deployer"
    assert decision["required"] == ["read_deployments"]
    assert "read_deployments" in decision["granted"]
    assert APP not in result.stdout


def test_check_explains_a_denial_in_text_and_exits_1(a_loaded_store: str) -> None:
    result = check(
        "POST", "/api/v4/projects/20/deployments", "--store", a_loaded_store, "--token", APP
    )
    assert result.returncode == 1
    assert "denied (403): insufficient_permissions" in result.stdout
    assert "admin_deployments and admin_environments" in result.stdout
    assert "route        POST /projects/:id/deployments" in result.stdout  # the route part stays
    assert APP not in result.stdout


def test_check_takes_any_carrier_as_a_header(a_loaded_store: str) -> None:
    from job_grants import basic

    auth = "Authorization: " + basic("gitlab-ci-token", APP)
    result = check(
        "GET", "/acme/app.git/info/refs", "--store", a_loaded_store, "--header", auth, "--json"
    )
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["decision"]["reason"] == "git_http"
    conflict = check(
        "GET",
        "/api/v4/job",
        "--store",
        a_loaded_store,
        "--token",
        APP,
        "--header",
        "PRIVATE-TOKEN: x",
    )
    assert conflict.returncode == 1
    assert "credential_conflict" in conflict.stdout


def test_check_refuses_a_missing_sqlite_store(tmp_path: Path) -> None:
    result = check("GET", "/api/v4/job", "--store", f"sqlite:///{tmp_path}/none.db", "--token", APP)
    assert result.returncode == 2
    assert "no token store" in result.stderr
    assert not (tmp_path / "none.db").exists()
