"""The `routes`, `check` and `policies import` commands, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CURRENT_PAGE, REPO, SEED_PAGE

COMMITTED = REPO / "policies" / "routes.yaml"
COMMITTED_CURRENT = REPO / "policies" / "routes-current.yaml"


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=cwd or REPO,
    )


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("jobtoken-gateway: error: ")
    for needle in needles:
        assert needle in lines[0]


# --------------------------------------------------------------------------- routes


def test_routes_prints_the_table() -> None:
    result = run("routes")
    assert result.returncode == 0
    assert "150 routes: 125 controllable, 25 None" in result.stdout
    assert (
        "/projects/:id/packages/generic/:package_name/*package_version/(*path/):file_name"
        in result.stdout
    )


def test_routes_json_shape() -> None:
    document = json_of(run("routes", "--json", "--routes-supplementary", ""))
    assert document["prefix"] == "/api/v4"
    assert len(document["routes"]) == 150
    first = document["routes"][0]
    assert first == {
        "method": "DELETE",
        "path": "/projects/:id/deployments/:deployment_id",
        "permissions": ["admin_deployments"],
        "controllable": True,
        "target": "project",
        "own_project_only": False,
        "rule": "page",
        "body_file": False,
        "description": "Delete a specific deployment",
    }
    registry = [r for r in document["routes"] if r["own_project_only"]]
    assert len(registry) == 6
    assert {r["target"] for r in document["routes"]} == {
        "project",
        "group",
        "job",
        "own",
        "none",
        "unresolved",
    }


def test_routes_overlaps() -> None:
    document = json_of(run("routes", "--overlaps", "--json", "--routes-supplementary", ""))
    assert len(document["overlaps"]) == 16
    assert set(document["overlaps"][0]) == {"first", "second", "witness", "winner", "significant"}
    assert not any(overlap["significant"] for overlap in document["overlaps"])
    text = run("routes", "--overlaps", "--routes-supplementary", "").stdout
    assert text.startswith("16 overlapping pairs, 0 with different authorization")


def test_routes_follow_settings_flags_and_environment(tmp_path: Path) -> None:
    assert json_of(run("routes", "--json", "--api-prefix", "/api/v5"))["prefix"] == "/api/v5"
    env = {"GATEWAY_RELATIVE_URL_ROOT": "/gitlab"}
    assert json_of(run("routes", "--json", env=env))["prefix"] == "/gitlab/api/v4"
    missing = tmp_path / "absent.yaml"
    assert_one_line_error(run("routes", env={"GATEWAY_ROUTES": str(missing)}), str(missing))


def test_a_bad_route_file_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text("version: 1\nsource: t\nroutes:\n- method: GET\n  path: /x\n", encoding="utf-8")
    assert_one_line_error(
        run("routes", "--routes", str(bad)), f"{bad}:4: routes[0] (GET /x)", "permissions"
    )


def test_the_route_table_setting_takes_a_shipped_name() -> None:
    assert "188 routes: 159 controllable, 29 None" in run("routes", "--routes", "current").stdout
    assert "150 routes: 125 controllable, 25 None" in run("routes", "--routes", "seed").stdout
    env = {"GATEWAY_ROUTES": "current", "GATEWAY_ROUTES_SUPPLEMENTARY": ""}
    document = json_of(run("routes", "--json", env=env))
    assert document["source"] == str(COMMITTED_CURRENT)
    assert len(document["routes"]) == 188
    # With the supplementary file (the default), its rows follow the page's.
    document = json_of(run("routes", "--json", env={"GATEWAY_ROUTES": "current"}))
    assert len(document["routes"]) == 188 + 46
    args = ("check", "GET", "/api/v4/projects/1/pipelines", "--json")
    assert json_of(run(*args, "--routes", "current"))["route"]["permissions"] == ["read_pipelines"]
    assert json_of(run(*args))["result"] == "no_route"


# --------------------------------------------------------------------------- routes --diff

DIFF_CHANGED = """changed permissions (5):
  ~ GET    /groups/:id/-/packages/npm/*package_name  [read_packages] -> [None]
  ~ GET    /groups/:id/-/packages/pypi/files/:sha256/*file_identifier  [read_packages] -> [None]
  ~ GET    /packages/npm/*package_name  [read_packages] -> [None]
  ~ GET    /projects/:id/packages/:package_id/pipelines  [read_packages] -> [read_pipelines]
  ~ PUT    /projects/:id/pipelines/:pipeline_id/metadata  [admin_jobs] -> [admin_pipelines]

38 added, 0 removed, 5 changed, 145 unchanged
"""


def test_routes_diff_seed_to_current() -> None:
    result = run("routes", "--diff", "seed", "current")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        "--- seed: policies/routes.yaml (150 routes)",
        "+++ current: policies/routes-current.yaml (188 routes)",
    ]
    assert lines[3] == "added (38):"
    assert "  + GET    /projects/:id/jobs  [read_jobs]" in lines
    assert "  + GET    /projects/:id/pipelines  [read_pipelines]" in lines
    assert "  + GET    /projects/:id/packages/conan/v2/users/authenticate  [None]" in lines
    added = lines[4 : lines.index("removed (0):") - 1]
    assert len(added) == 38
    assert added == sorted(added, key=lambda line: (line.split()[2], line.split()[1]))
    assert "removed (0):\n  (none)\n" in result.stdout
    assert result.stdout.endswith(DIFF_CHANGED)
    # Stable: the same bytes every run; names and paths are interchangeable.
    by_path = run("routes", "--diff", str(COMMITTED), "policies/routes-current.yaml")
    assert by_path.stdout.splitlines()[2:] == lines[2:]
    assert run("routes", "--diff", "seed", "current").stdout == result.stdout


def test_the_readme_shows_the_real_diff_output() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    shown = "$ python -m gateway routes --diff seed current\n"
    assert shown + run("routes", "--diff", "seed", "current").stdout + "```" in readme


def test_routes_diff_the_other_way_and_json() -> None:
    back = run("routes", "--diff", "current", "seed").stdout
    assert "added (0):" in back
    assert "removed (38):" in back
    assert (
        "  ~ PUT    /projects/:id/pipelines/:pipeline_id/metadata  [admin_pipelines] -> [admin_jobs]"
        in back
    )
    document = json_of(run("routes", "--diff", "seed", "current", "--json"))
    assert document["a"] == {"table": "seed", "file": str(COMMITTED), "routes": 150}
    assert document["b"]["routes"] == 188
    assert len(document["added"]) == 38
    assert document["removed"] == []
    assert document["unchanged"] == 145
    assert {
        "method": "PUT",
        "path": "/projects/:id/pipelines/:pipeline_id/metadata",
        "before": ["admin_jobs"],
        "after": ["admin_pipelines"],
    } in document["changed"]
    assert {
        "method": "GET",
        "path": "/packages/npm/*package_name",
        "before": ["read_packages"],
        "after": None,
    } in document["changed"]


def test_routes_diff_of_a_table_with_itself_is_empty() -> None:
    result = run("routes", "--diff", "current", "current")
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == "0 added, 0 removed, 0 changed, 188 unchanged"


def test_routes_diff_errors_exit_2(tmp_path: Path) -> None:
    assert_one_line_error(
        run("routes", "--diff", "seed", "newest"),
        "newest: no such route file (and not a shipped table: seed, current)",
    )
    bad = tmp_path / "routes.yaml"
    bad.write_text("version: 1\nsource: t\nroutes:\n- method: GET\n  path: /x\n", encoding="utf-8")
    assert_one_line_error(run("routes", "--diff", str(bad), "seed"), f"{bad}:4: routes[0] (GET /x)")
    assert run("routes", "--diff", "seed").returncode == 2
    refused = run("routes", "--diff", "seed", "current", "--overlaps")
    assert refused.returncode == 2
    assert "not allowed with" in refused.stderr


# --------------------------------------------------------------------------- check


def test_check_a_matching_request() -> None:
    result = run(
        "check",
        "GET",
        "/api/v4/projects/group%2Fsub/packages/npm/-/package/@scope%2Fpkg/dist-tags",
        "--json",
    )
    assert result.returncode == 0
    assert json_of(result) == {
        "request": {
            "method": "GET",
            "target": "/api/v4/projects/group%2Fsub/packages/npm/-/package/@scope%2Fpkg/dist-tags",
        },
        "result": "matched",
        "route": {
            "method": "GET",
            "path": "/projects/:id/packages/npm/-/package/*package_name/dist-tags",
            "permissions": ["read_packages"],
            "controllable": True,
            "target": "project",
            "own_project_only": False,
            "rule": "page",
            "body_file": False,
            "description": "Get all tags for a given an NPM package",
        },
        "params": {"id": "group/sub", "package_name": "@scope/pkg"},
        "target": {"kind": "project", "ref": "group/sub"},
        "refusal": None,
    }


def test_check_text_output() -> None:
    result = run("check", "HEAD", "/api/v4/packages/conan/v1/conans/zlib/1.3/grp+proj/stable")
    assert result.returncode == 0
    assert (
        "route        GET /packages/conan/v1/conans/:package_name/:package_version/:package_username/:package_channel"
        in result.stdout
    )
    assert "permissions  read_packages" in result.stdout
    assert "target       project grp/proj" in result.stdout
    none_row = run("check", "GET", "/api/v4/job").stdout
    assert "None (job tokens allowed" in none_row
    assert "target       own" in none_row


@pytest.mark.parametrize(
    ("args", "result", "reason"),
    [
        (("GET", "/api/v4/projects/1/unknown"), "no_route", None),
        (("get", "/api/v4/projects/1/releases"), "no_route", None),
        (("GET", "/group/project.git/info/refs"), "not_api", None),
        (("GET", "/api/v4/projects/1/%2e%2e/2/releases"), "refused", "dot_segment"),
        (("GET", "/api/v4/projects/%61/releases"), "refused", "encoded_unreserved"),
        (("GET", "http://host/api/v4/projects/1/releases"), "refused", "not_origin_form"),
    ],
)
def test_check_negative_answers_exit_1(
    args: tuple[str, str], result: str, reason: str | None
) -> None:
    completed = run("check", *args, "--json")
    assert completed.returncode == 1
    report = json_of(completed)
    assert report["result"] == result
    assert report["route"] is None
    assert (report["refusal"] or {}).get("reason") == reason


def test_check_refusal_text_says_why() -> None:
    result = run("check", "GET", "/api/v4/projects/1/..")
    assert result.returncode == 1
    assert "reason       dot_segment" in result.stdout
    assert "refused for every request" in result.stdout


def test_check_honours_the_relative_url_root() -> None:
    args = ("check", "GET", "/gitlab/api/v4/projects/7/releases", "--json")
    assert run(*args, "--relative-url-root", "/gitlab").returncode == 0
    assert run(*args, env={"GATEWAY_RELATIVE_URL_ROOT": "/gitlab"}).returncode == 0
    assert json_of(run(*args))["result"] == "not_api"


def test_check_usage_errors_exit_2() -> None:
    assert run("check").returncode == 2
    assert run("check", "GET").returncode == 2
    assert_one_line_error(run("check", "GET", "/api/v4/job", "--api-prefix", "api"), "--api-prefix")


# --------------------------------------------------------------------------- policies import


@pytest.mark.skipif(not SEED_PAGE.exists(), reason=f"GitLab's page is not at {SEED_PAGE}")
def test_policies_import_writes_the_committed_file(tmp_path: Path) -> None:
    result = run("policies", "import", str(SEED_PAGE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "imported 150 routes (25 None)" in result.stdout
    assert (tmp_path / "policies" / "routes.yaml").read_bytes() == COMMITTED.read_bytes()
    other = tmp_path / "elsewhere.yaml"
    assert run("policies", "import", str(SEED_PAGE), "-o", str(other)).returncode == 0
    assert other.read_bytes() == COMMITTED.read_bytes()


def test_policies_import_reports_the_line_of_a_bad_row(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "| Permissions | Permission Names | Path | Description |\n"
        "| --- | --- | --- | --- |\n"
        "| Jobs: Read | `READ_JOBS` | `GET /jobs/:id/artifacts` | Download |\n"
        "| Jobs: Read | `READ_JOBZ` | `GET /jobs/:id` | Oops |\n",
        encoding="utf-8",
    )
    result = run("policies", "import", str(page), "-o", str(tmp_path / "out.yaml"))
    assert_one_line_error(result, f"{page}:4: unknown permission READ_JOBZ")
    assert not (tmp_path / "out.yaml").exists()


def test_policies_needs_an_action() -> None:
    assert run("policies").returncode == 2
    assert run("policies", "import").returncode == 2


def test_policies_import_of_the_current_page(tmp_path: Path) -> None:
    result = run("policies", "import", str(CURRENT_PAGE), "-o", str(tmp_path / "current.yaml"))
    assert result.returncode == 0, result.stderr
    assert "imported 188 routes (29 None)" in result.stdout
    assert (tmp_path / "current.yaml").read_bytes() == COMMITTED_CURRENT.read_bytes()
    # Without -o, each format goes to the file its shipped table name selects.
    result = run("policies", "import", str(CURRENT_PAGE), cwd=tmp_path)
    assert result.stdout.strip().endswith("into policies/routes-current.yaml")
    assert (tmp_path / "policies" / "routes-current.yaml").read_bytes() == (
        COMMITTED_CURRENT.read_bytes()
    )
    assert not (tmp_path / "policies" / "routes.yaml").exists()
    absent = tmp_path / "absent.md"
    assert_one_line_error(run("policies", "import", str(absent)), f"{absent}: cannot read page")


def test_policies_import_reports_the_line_of_a_bad_current_row(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "## Available API endpoints\n\n### Pipelines endpoints\n\n"
        "| Permission | API endpoint | Permission name | Scope |\n"
        "| --- | --- | --- | --- |\n"
        "| Updates pipeline metadata | `PUT /projects/:id/pipelines/:pipeline_id/metadata` "
        "| `ADMIN_PIPELINES` | Read |\n",
        encoding="utf-8",
    )
    result = run("policies", "import", str(page), "-o", str(tmp_path / "out.yaml"))
    assert_one_line_error(result, f"{page}:7: Scope 'Read' does not match the names")
    assert not (tmp_path / "out.yaml").exists()
