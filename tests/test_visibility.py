"""Public and internal targets, the enforced allowlist, cross-project push and GitLab's message,
through a real gateway in front of a real upstream (issue 10, points 4 and 7).

The grants live in a real `file://` store. Each case says what GitLab does for a source the
target's allowlist does not admit (app/policies/project_policy.rb, lib/api/helpers.rb; see
gateway/core/visibility.py): what it allows reaches the upstream unchanged, what it refuses is
answered with GitLab's message and the upstream receives nothing.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from fixtures.proxy import call

TOOL = "glcbt-vis-tool"  # job 7002 of other/tool (#12): on no allowlist
APP = "glcbt-vis-app"  # job 7001 of acme/app (#10)

GRANTS = """
projects:
  - {id: 10, path: acme/app}
  - {id: 12, path: other/tool}
  - {id: 20, path: acme/private-lib}
  - {id: 21, path: acme/public-lib, visibility: public,
     features: {repository: enabled, builds: enabled, package_registry: enabled}}
  - {id: 22, path: acme/inside, visibility: internal,
     features: {repository: enabled, builds: private, package_registry: public}}
  - {id: 23, path: acme/closed-repo, visibility: public, features: {repository: private}}
  - {id: 30, path: acme/legacy-open}
  - {id: 31, path: acme/pushable}
jobs:
  - {token: glcbt-vis-app, job_id: 7001, project: acme/app}
  - {token: glcbt-vis-tool, job_id: 7002, project: other/tool}
allowlists:
  - {project: acme/private-lib, entries: [{source: acme/app, default_permissions: true}]}
  - {project: acme/public-lib, entries: [{source: acme/app, default_permissions: true}]}
  - {project: acme/inside, entries: []}
  - project: acme/legacy-open
    enabled: false
    entries:
      - {source: acme/app, default_permissions: false, policies: [read_releases]}
  - project: acme/pushable
    entries:
      - {source: acme/app, default_permissions: false, policies: [admin_repositories]}
"""

F = "403 Forbidden - "


def insufficient(project: int, permission: str) -> str:
    return (
        f"{F}Insufficient permissions to access this resource in project #{project}. "
        f"The following token permission is required: {permission}."
    )


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def a_grants_file(tmp_path: Path) -> str:
    path = tmp_path / "grants.yaml"
    path.write_text(GRANTS)
    return f"file://{path}"


async def through(gateway: Any, method: str, target: str, headers: dict[str, str]) -> Any:
    return await call(method, gateway.url + target, headers=headers)


# (method, target, what GitLab answers: None = forwarded, else (reason, message))
PUBLIC_CASES = [
    pytest.param(
        "GET",
        "/acme/public-lib.git/info/refs?service=git-upload-pack",
        None,
        id="public: git clone (build_download_code)",
    ),
    pytest.param("POST", "/acme/inside.git/git-upload-pack", None, id="internal: git fetch"),
    pytest.param(
        "GET",
        "/acme/public-lib.git/info/refs?service=git-receive-pack",
        (
            "not_allowlisted",
            F + "Authentication by CI/CD job token not allowed from tool to project #21.",
        ),
        id="public: git push (build_push_code is never kept)",
    ),
    pytest.param(
        "GET",
        "/acme/closed-repo.git/info/refs?service=git-upload-pack",
        (
            "not_allowlisted",
            F + "Authentication by CI/CD job token not allowed from tool to project #23.",
        ),
        id="public, members-only repository: no git read",
    ),
    pytest.param(
        "GET",
        "/api/v4/projects/21/packages/maven/com/acme/lib/1.0/lib-1.0.jar",
        None,
        id="public: maven download (package_registry enabled)",
    ),
    pytest.param(
        "GET",
        "/api/v4/projects/acme%2Finside/packages/maven/com/acme/lib/1.0/lib-1.0.pom",
        None,
        id="internal: maven download (package_registry public)",
    ),
    pytest.param(
        "GET",
        "/api/v4/projects/21/jobs/artifacts/main/raw/out/report.txt?job=build",
        None,
        id="public: artifact file by ref (repository and builds enabled)",
    ),
    pytest.param(
        "GET",
        "/api/v4/projects/22/jobs/artifacts/main/raw/out/report.txt?job=build",
        ("insufficient_permissions", insufficient(22, "read_jobs")),
        id="internal: artifact file by ref, builds members-only",
    ),
    pytest.param(
        "GET",
        "/api/v4/projects/21/packages/conan/v1/ping",
        None,
        id="public: a None route (skip_job_token_policies)",
    ),
    pytest.param(
        "GET",
        "/api/v4/projects/21/releases",
        ("insufficient_permissions", insufficient(21, "read_releases")),
        id="public: releases (no public feature on the route)",
    ),
    pytest.param(
        "POST",
        "/api/v4/projects/21/deployments",
        (
            "insufficient_permissions",
            F + "Insufficient permissions to access this resource in project #21. The following "
            "token permissions are required: admin_deployments and admin_environments.",
        ),
        id="public: a write route",
    ),
    pytest.param(
        "GET",
        "/api/v4/projects/20/packages/maven/com/acme/lib/1.0/lib-1.0.jar",
        (
            "not_allowlisted",
            F + "Authentication by CI/CD job token not allowed from tool to project #20.",
        ),
        id="private: nothing",
    ),
]


@pytest.mark.parametrize(("method", "target", "gitlab"), PUBLIC_CASES)
async def test_a_source_the_allowlist_does_not_admit(
    a_gateway: Any,
    an_upstream: Any,
    a_grants_file: str,
    method: str,
    target: str,
    gitlab: tuple[str, str] | None,
) -> None:
    gateway = await a_gateway(an_upstream.url, store=a_grants_file)
    headers = basic("gitlab-ci-token", TOOL) if ".git/" in target else {"JOB-TOKEN": TOOL}
    answer = await through(gateway, method, target, headers)
    if gitlab is None:
        assert answer.status == 200, answer.body
        assert an_upstream.last.raw_path == target  # unchanged
        assert an_upstream.last.method == method
        return
    reason, message = gitlab
    assert answer.status == 403
    assert answer.headers["X-Gateway-Reason"] == reason
    assert answer.json() == {"message": message}
    assert an_upstream.received == []


async def test_the_not_allowlisted_body_is_gitlabs_byte_for_byte(
    a_gateway: Any, an_upstream: Any, a_grants_file: str
) -> None:
    """`handle_job_token_failure!` prints `source_project.path` (Rails' Project#path, the
    source's own segment) and `#<id>`; Grape writes the JSON compactly."""
    gateway = await a_gateway(an_upstream.url, store=a_grants_file)
    answer = await through(
        gateway, "GET", "/api/v4/projects/acme%2Fprivate-lib/releases", {"JOB-TOKEN": TOOL}
    )
    assert answer.body == (
        b'{"message":"403 Forbidden - Authentication by CI/CD job token not allowed from tool '
        b'to project #20."}'
    )


async def test_an_admitted_source_keeps_its_entry_on_a_public_project(
    a_gateway: Any, an_upstream: Any, a_grants_file: str
) -> None:
    gateway = await a_gateway(an_upstream.url, store=a_grants_file)
    answer = await through(gateway, "GET", "/api/v4/projects/21/releases", {"JOB-TOKEN": APP})
    assert answer.status == 200
    assert an_upstream.last.raw_path == "/api/v4/projects/21/releases"


@pytest.mark.parametrize(
    ("enforce", "token", "target", "status", "reason"),
    [
        (False, TOOL, "/api/v4/projects/30/releases", 200, None),
        (True, TOOL, "/api/v4/projects/30/releases", 403, "not_allowlisted"),
        (True, APP, "/api/v4/projects/30/releases", 200, None),  # its entry still applies
        (True, APP, "/api/v4/projects/30/deployments", 403, "insufficient_permissions"),
    ],
)
async def test_the_enforced_allowlist_setting(
    a_gateway: Any,
    an_upstream: Any,
    a_grants_file: str,
    enforce: bool,
    token: str,
    target: str,
    status: int,
    reason: str | None,
) -> None:
    """GitLab's `enforce_ci_inbound_job_token_scope_enabled` makes every project's
    `ci_inbound_job_token_scope_enabled?` true: `--enforce-allowlist` mirrors it."""
    gateway = await a_gateway(an_upstream.url, store=a_grants_file, enforce_allowlist=enforce)
    answer = await through(gateway, "GET", target, {"JOB-TOKEN": token})
    assert answer.status == status
    if reason is None:
        assert an_upstream.last.raw_path == target
    else:
        assert answer.headers["X-Gateway-Reason"] == reason
        assert an_upstream.received == []


PUSH = "/{project}.git/info/refs?service=git-receive-pack"


@pytest.mark.parametrize(
    ("project", "token", "enforce", "status"),
    [
        ("acme/pushable", APP, False, 200),  # enabled allowlist, admin_repositories
        ("acme/pushable", TOOL, False, 403),  # not admitted
        ("acme/legacy-open", APP, False, 403),  # allowlist off: never a cross-project push
        ("acme/legacy-open", TOOL, False, 403),
        ("acme/legacy-open", APP, True, 403),  # enforced, but read_releases only
        ("acme/app", APP, False, 200),  # its own project
    ],
)
async def test_cross_project_push_needs_an_enabled_allowlist(
    a_gateway: Any,
    an_upstream: Any,
    a_grants_file: str,
    project: str,
    token: str,
    enforce: bool,
    status: int,
) -> None:
    """ProjectPolicy#cross_project_push_allowed_for_job_token?: the project allows pushes with
    job tokens, its allowlist is on, and `policies_allowed?(project, [:admin_repositories])`."""
    gateway = await a_gateway(an_upstream.url, store=a_grants_file, enforce_allowlist=enforce)
    target = PUSH.format(project=project)
    answer = await through(gateway, "GET", target, basic("gitlab-ci-token", token))
    assert answer.status == status, answer.body
    if status == 200:
        assert an_upstream.last.raw_path == target
    else:
        assert an_upstream.received == []


async def test_a_push_refused_with_the_allowlist_off_says_so(
    a_gateway: Any, an_upstream: Any, a_grants_file: str
) -> None:
    gateway = await a_gateway(an_upstream.url, store=a_grants_file)
    target = PUSH.format(project="acme/legacy-open")
    answer = await through(gateway, "GET", target, basic("gitlab-ci-token", APP))
    assert answer.json() == {"message": F + "You are not allowed to push code to this project."}
    assert answer.headers["X-Gateway-Reason"] == "insufficient_permissions"


async def test_a_dependency_job_of_a_public_project(
    a_gateway: Any, an_upstream: Any, tmp_path: Path
) -> None:
    """`GET /jobs/:id/artifacts` opens `repository` and `builds` to public projects
    (lib/api/ci/runner.rb): the job's project is read with its visibility."""
    path = tmp_path / "grants.yaml"
    finished = (
        "jobs:\n"
        "  - {token: glcbt-vis-public-job, job_id: 7021, project: acme/public-lib,"
        ' expires_at: "2020-01-01T00:00:00Z"}\n'
        "  - {token: glcbt-vis-private-job, job_id: 7020, project: acme/private-lib,"
        ' expires_at: "2020-01-01T00:00:00Z"}\n'
    )
    path.write_text(GRANTS.replace("jobs:\n", finished, 1))
    gateway = await a_gateway(an_upstream.url, store=f"file://{path}")
    public = await through(gateway, "GET", "/api/v4/jobs/7021/artifacts", {"JOB-TOKEN": TOOL})
    assert public.status == 200
    assert an_upstream.last.raw_path == "/api/v4/jobs/7021/artifacts"
    private = await through(gateway, "GET", "/api/v4/jobs/7020/artifacts", {"JOB-TOKEN": TOOL})
    assert private.status == 403
    assert private.json() == {
        "message": F + "Authentication by CI/CD job token not allowed from tool to project #20."
    }
