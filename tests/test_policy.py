"""GitLab's job-token rules as a decision table, through the real route table and `Gate.evaluate`.

Sources: app/models/ci/job_token/scope.rb (`policies_allowed?`), app/models/ci/job_token/allowlist.rb
(nearest entry, not merged), lib/api/helpers.rb (`find_project!`, messages).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from job_grants import APP, EXPIRED, TOOL, WORKER, a_gate, a_request, basic

from gateway.core import policy
from gateway.core.decision import Audit, Reason
from gateway.core.gate import Gate
from gateway.routing.table import RouteTable
from gateway.stores.grants import Allowlist, AllowlistEntry, EntryKind, Job, Project

API = "/api/v4"
F = "403 Forbidden - "


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    the_gate = await a_gate()
    yield the_gate
    await the_gate.close()


# (case, token, method, target, reason, status, exact message or None)
TABLE = [
    (
        "own project by id",
        APP,
        "GET",
        f"{API}/projects/10/releases",
        Reason.OWN_PROJECT,
        None,
        None,
    ),
    (
        "own project by path, any case",
        APP,
        "GET",
        f"{API}/projects/ACME%2FApp/releases",
        Reason.OWN_PROJECT,
        None,
        None,
    ),
    (
        "own project: no fine-grained limits",
        APP,
        "DELETE",
        f"{API}/projects/10/environments/1",
        Reason.OWN_PROJECT,
        None,
        None,
    ),
    (
        "allowlist disabled",
        APP,
        "POST",
        f"{API}/projects/30/releases",
        Reason.ALLOWLIST_DISABLED,
        None,
        None,
    ),
    (
        "project entry grants the policy",
        APP,
        "GET",
        f"{API}/projects/20/deployments",
        Reason.POLICIES_GRANTED,
        None,
        None,
    ),
    (
        "admin implies read",
        APP,
        "GET",
        f"{API}/projects/20/packages",
        Reason.POLICIES_GRANTED,
        None,
        None,
    ),
    (
        "HEAD is GET",
        APP,
        "HEAD",
        f"{API}/projects/20/deployments",
        Reason.POLICIES_GRANTED,
        None,
        None,
    ),
    (
        "read does not imply admin",
        WORKER,
        "POST",
        f"{API}/projects/20/releases",
        Reason.INSUFFICIENT_PERMISSIONS,
        403,
        F + "Insufficient permissions to access this resource in project #20. "
        "The following token permission is required: admin_releases.",
    ),
    (
        "every policy of the route is required (plural message)",
        APP,
        "POST",
        f"{API}/projects/20/deployments",
        Reason.INSUFFICIENT_PERMISSIONS,
        403,
        F + "Insufficient permissions to access this resource in project #20. "
        "The following token permissions are required: admin_deployments and admin_environments.",
    ),
    (
        "nearest group entry grants",
        WORKER,
        "GET",
        f"{API}/projects/20/releases",
        Reason.POLICIES_GRANTED,
        None,
        None,
    ),
    (
        "nearest group entry wins over a farther default_permissions group",
        WORKER,
        "GET",
        f"{API}/projects/20/deployments",
        Reason.INSUFFICIENT_PERMISSIONS,
        403,
        F + "Insufficient permissions to access this resource in project #20. "
        "The following token permission is required: read_deployments.",
    ),
    (
        "a project entry is not merged with its group's entry",
        APP,
        "GET",
        f"{API}/projects/50/releases",
        Reason.INSUFFICIENT_PERMISSIONS,
        403,
        None,
    ),
    (
        "group entry by path (no kind)",
        WORKER,
        "GET",
        f"{API}/projects/50/deployments",
        Reason.POLICIES_GRANTED,
        None,
        None,
    ),
    (
        "default permissions",
        APP,
        "DELETE",
        f"{API}/projects/40/environments/1",
        Reason.DEFAULT_PERMISSIONS,
        None,
        None,
    ),
    (
        "not on the allowlist",
        TOOL,
        "GET",
        f"{API}/projects/20/releases",
        Reason.NOT_ALLOWLISTED,
        403,
        F + "Authentication by CI/CD job token not allowed from tool to project #20.",
    ),
    (
        "a project the store does not know is an enabled, empty allowlist",
        APP,
        "GET",
        f"{API}/projects/999/releases",
        Reason.NOT_ALLOWLISTED,
        403,
        F + "Authentication by CI/CD job token not allowed from app to project #999.",
    ),
    (
        "None endpoint: no policy check",
        APP,
        "GET",
        f"{API}/projects/20/packages/conan/v1/ping",
        Reason.UNCONTROLLED_ENDPOINT,
        None,
        None,
    ),
    (
        "None endpoint: the allowlist still applies",
        TOOL,
        "GET",
        f"{API}/projects/20/packages/conan/v1/ping",
        Reason.NOT_ALLOWLISTED,
        403,
        None,
    ),
    (
        "None endpoint, own project",
        TOOL,
        "GET",
        f"{API}/projects/12/packages/conan/v1/ping",
        Reason.OWN_PROJECT,
        None,
        None,
    ),
    (
        "container registry of another project",
        APP,
        "GET",
        f"{API}/projects/30/registry/repositories",
        Reason.REGISTRY_OTHER_PROJECT,
        403,
        F
        + "This project's CI/CD job token cannot be used to authenticate with the container registry "
        "of a different project.",
    ),
    (
        "container registry of its own project",
        APP,
        "GET",
        f"{API}/projects/10/registry/repositories",
        Reason.OWN_PROJECT,
        None,
        None,
    ),
    ("the job endpoint", APP, "GET", f"{API}/job", Reason.OWN_PROJECT, None, None),
    (
        "an instance endpoint with no project",
        APP,
        "GET",
        f"{API}/packages/conan/v1/ping",
        Reason.UNCONTROLLED_ENDPOINT,
        None,
        None,
    ),
    (
        "a job's artifacts: the job's project",
        APP,
        "GET",
        f"{API}/jobs/5000/artifacts",
        Reason.OWN_PROJECT,
        None,
        None,
    ),
    (
        "a job's artifacts: another project's job",
        TOOL,
        "GET",
        f"{API}/jobs/5001/artifacts",
        Reason.NOT_ALLOWLISTED,
        403,
        None,
    ),
    (
        "a job the store does not know",
        APP,
        "GET",
        f"{API}/jobs/777/artifacts",
        Reason.TARGET_UNRESOLVED,
        403,
        None,
    ),
    (
        "a group endpoint",
        APP,
        "GET",
        f"{API}/groups/acme/-/packages/pypi/simple",
        Reason.TARGET_UNRESOLVED,
        403,
        None,
    ),
    (
        "an instance endpoint owned by some project",
        APP,
        "GET",
        f"{API}/packages/npm/@acme%2Fleft-pad",
        Reason.TARGET_UNRESOLVED,
        403,
        None,
    ),
    (
        "an unscoped npm name at instance level (older GitLab looked it up instance-wide)",
        TOOL,
        "GET",
        f"{API}/packages/npm/left-pad",
        Reason.TARGET_UNRESOLVED,
        403,
        None,
    ),
    (
        "an npm audit at instance level: GitLab checks no project",
        TOOL,
        "POST",
        f"{API}/packages/npm/-/npm/v1/security/audits/quick",
        Reason.PACKAGE_NOT_FOUND,
        None,
        None,
    ),
    (
        "an API endpoint job tokens cannot use",
        APP,
        "GET",
        f"{API}/projects/10/issues",
        Reason.ROUTE_NOT_AVAILABLE,
        403,
        F + "This endpoint is not available to CI/CD job tokens through this gateway.",
    ),
    ("a non-API path", APP, "GET", "/acme/app/-/issues", Reason.ROUTE_NOT_AVAILABLE, 403, None),
    (
        "expired token",
        EXPIRED,
        "GET",
        f"{API}/projects/10/releases",
        Reason.TOKEN_EXPIRED,
        401,
        "401 Unauthorized",
    ),
    (
        "unknown token",
        "glcbt-nobody",
        "GET",
        f"{API}/projects/10/releases",
        Reason.TOKEN_INVALID,
        401,
        "401 Unauthorized",
    ),
    (
        "malformed token",
        "glcbt-" + "x" * 9000,
        "GET",
        f"{API}/projects/10/releases",
        Reason.TOKEN_INVALID,
        401,
        "401 Unauthorized",
    ),
    (
        "unknown token on a route job tokens cannot use",
        "glcbt-nobody",
        "GET",
        f"{API}/projects/10/issues",
        Reason.ROUTE_NOT_AVAILABLE,
        403,
        None,
    ),
    ("no token", None, "GET", f"{API}/projects/10/issues", Reason.NO_TOKEN, None, ""),
    ("dot segments", APP, "GET", f"{API}/projects/10/../20/releases", Reason.BAD_TARGET, 400, None),
    (
        "dot segments without a token",
        None,
        "GET",
        f"{API}/projects/%2e%2e/releases",
        Reason.BAD_TARGET,
        400,
        None,
    ),
]


@pytest.mark.parametrize(
    ("token", "method", "target", "reason", "status", "message"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
async def test_decision_table(
    gate: Gate,
    token: str | None,
    method: str,
    target: str,
    reason: Reason,
    status: int | None,
    message: str | None,
) -> None:
    decision = await gate.evaluate(a_request(method, target, token))
    assert (decision.reason, decision.status) == (reason, status)
    assert decision.allowed is (status is None)
    if message is not None:
        assert decision.message == message


GIT = [
    (
        "own project clone",
        APP,
        "GET",
        "/acme/app.git/info/refs?service=git-upload-pack",
        Reason.GIT_HTTP,
        None,
    ),
    ("own project push", APP, "POST", "/acme/app.git/git-receive-pack", Reason.GIT_HTTP, None),
    (
        "allowlisted fetch (group entry)",
        WORKER,
        "POST",
        "/acme/platform/deployer.git/git-upload-pack",
        Reason.GIT_HTTP,
        None,
    ),
    (
        "allowlist off",
        TOOL,
        "GET",
        "/open/target.git/info/refs?service=git-upload-pack",
        Reason.GIT_HTTP,
        None,
    ),
    (
        "LFS download",
        WORKER,
        "GET",
        "/acme/platform/deployer.git/gitlab-lfs/objects/" + "a" * 64,
        Reason.GIT_HTTP,
        None,
    ),
    (
        "not allowlisted",
        TOOL,
        "GET",
        "/acme/platform/deployer.git/info/refs?service=git-upload-pack",
        Reason.NOT_ALLOWLISTED,
        403,
    ),
    (
        "cross-project push needs admin_repositories",
        WORKER,
        "GET",
        "/acme/platform/deployer.git/info/refs?service=git-receive-pack",
        Reason.INSUFFICIENT_PERMISSIONS,
        403,
    ),
    (
        "cross-project push with default permissions",
        APP,
        "POST",
        "/acme/legacy.git/git-receive-pack",
        Reason.GIT_HTTP,
        None,
    ),
    (
        "an unknown repository",
        APP,
        "GET",
        "/nobody/else.git/info/refs",
        Reason.NOT_ALLOWLISTED,
        403,
    ),
    (
        "a git path with a wrong method",
        APP,
        "DELETE",
        "/acme/app.git/info/refs",
        Reason.ROUTE_NOT_AVAILABLE,
        403,
    ),
]


@pytest.mark.parametrize(
    ("token", "method", "target", "reason", "status"),
    [pytest.param(*row[1:], id=row[0]) for row in GIT],
)
async def test_git_over_http_with_basic_gitlab_ci_token(
    gate: Gate, token: str, method: str, target: str, reason: Reason, status: int | None
) -> None:
    view = a_request(method, target, headers=[("Authorization", basic("gitlab-ci-token", token))])
    decision = await gate.evaluate(view)
    assert (decision.reason, decision.status) == (reason, status)


async def test_git_over_http_can_be_switched_off() -> None:
    gate = await a_gate(git_http=False)
    view = a_request(
        "GET", "/acme/app.git/info/refs", headers=[("Authorization", basic("gitlab-ci-token", APP))]
    )
    decision = await gate.evaluate(view)
    assert (decision.reason, decision.status) == (Reason.ROUTE_NOT_AVAILABLE, 403)
    await gate.close()


async def test_git_over_http_under_a_relative_url_root() -> None:
    gate = await a_gate(relative_url_root="/gitlab")
    headers = [("Authorization", basic("gitlab-ci-token", APP))]
    assert (
        await gate.evaluate(a_request("GET", "/gitlab/acme/app.git/info/refs", headers=headers))
    ).allowed
    assert (
        await gate.evaluate(a_request("GET", "/gitlab/api/v4/projects/10/releases", APP))
    ).allowed
    denied = await gate.evaluate(a_request("GET", "/api/v4/projects/10/releases", APP))
    assert denied.reason is Reason.ROUTE_NOT_AVAILABLE
    await gate.close()


async def test_requiring_a_job_token() -> None:
    gate = await a_gate(require_job_token=True)
    decision = await gate.evaluate(a_request("GET", f"{API}/projects/10/releases"))
    assert (decision.reason, decision.status, decision.message) == (
        Reason.TOKEN_REQUIRED,
        401,
        "401 Unauthorized",
    )
    await gate.close()


async def test_a_credential_conflict_is_400_and_names_the_carriers(gate: Gate) -> None:
    view = a_request("GET", f"{API}/projects/10/releases?job_token={TOOL}", APP)
    decision = await gate.evaluate(view)
    assert (decision.reason, decision.status) == (Reason.CREDENTIAL_CONFLICT, 400)
    assert "job_token parameter" in decision.message
    assert "JOB-TOKEN header" in decision.message
    assert APP not in decision.message
    assert TOOL not in decision.message


async def test_body_tokens_are_authorized(gate: Gate) -> None:
    form = a_request(
        "POST",
        f"{API}/projects/20/releases",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        body=f"name=v1&job_token={WORKER}".encode(),
    )
    assert gate.needs_body(with_content_length(form))
    decision = await gate.evaluate(form)
    assert decision.reason is Reason.INSUFFICIENT_PERMISSIONS
    assert decision.audit.job_id == 5003
    as_json = a_request(
        "POST",
        f"{API}/projects/10/releases",
        headers=[("Content-Type", "application/json")],
        body=b'{"job_token": "' + APP.encode() + b'", "name": "v1"}',
    )
    assert (await gate.evaluate(as_json)).reason is Reason.OWN_PROJECT
    broken = a_request(
        "POST",
        f"{API}/projects/10/releases",
        headers=[("Content-Type", "application/json")],
        body=b"{",
    )
    assert (await gate.evaluate(broken)).status == 400


def with_content_length(view):  # type: ignore[no-untyped-def]
    from gateway.core.request import RequestView

    headers = view.headers.copy()
    headers["Content-Length"] = str(len(view.body or b""))
    return RequestView(view.method, view.target, headers, None)


def test_needs_body_only_for_bodies_rails_would_parse() -> None:
    from multidict import CIMultiDict

    from gateway.core.request import RequestView

    gate = Gate.__new__(Gate)
    gate.table = RouteTable.compile([])  # no route: no Workhorse body-file route either

    def view(method: str, **headers: str) -> RequestView:
        return RequestView(
            method, "/x", CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
        )

    assert gate.needs_body(view("POST", Content_Type="application/json", Content_Length="10"))
    assert gate.needs_body(
        view("PUT", Content_Type="application/x-www-form-urlencoded", Transfer_Encoding="chunked")
    )
    assert gate.needs_body(view("POST", Content_Length="5"))  # Rack: POST without a type is a form
    assert not gate.needs_body(view("POST", Content_Type="application/json", Content_Length="0"))
    assert not gate.needs_body(
        view("PUT", Content_Type="application/octet-stream", Content_Length="9")
    )
    assert not gate.needs_body(view("GET"))


async def test_every_decision_carries_an_audit_without_the_token(gate: Gate) -> None:
    decision = await gate.evaluate(a_request("POST", f"{API}/projects/20/deployments", APP))
    audit = decision.audit
    assert audit.fingerprint is not None
    assert audit.fingerprint.startswith("sha256:")
    assert (audit.job_id, audit.source_project, audit.target) == (
        5001,
        "acme/app",
        "#20 acme/platform/deployer",
    )
    assert audit.route == "POST /projects/:id/deployments"
    assert audit.required == ("admin_deployments", "admin_environments")
    assert "admin_deployments" in audit.granted
    assert "read_packages" in audit.granted
    assert APP not in repr(decision)


# ---- the pure function, for what the route table cannot show


def a_job(project_id: int = 1, path: str = "g/src") -> Job:
    return Job("d" * 64, 1, Project(project_id, path))


@pytest.mark.parametrize(
    ("ref", "known"),
    [("99", None), ("X/Y", None), ("99", Project(99, "x/y"))],
)
def test_own_project_even_when_the_store_does_not_know_it(ref: str, known: Project | None) -> None:
    decision = policy.decide(
        a_job(99, "x/y"),
        policy.Accessed(ref, known),
        None,
        policy.Access("GET /p", ("admin_x",)),
        Audit(),
    )
    assert decision.reason is Reason.OWN_PROJECT


def test_no_policies_on_a_controllable_route_with_a_fine_grained_entry() -> None:
    entry = AllowlistEntry(
        EntryKind.PROJECT, "g/src", 1, default_permissions=False, policies=("read_jobs",)
    )
    allowlist = Allowlist(2, True, (entry,))
    decision = policy.decide(
        a_job(), policy.Accessed("2", Project(2, "g/dst")), allowlist, policy.Access("X"), Audit()
    )
    assert decision.message == "403 Forbidden - This action is unauthorized for CI/CD job tokens."


def test_ancestor_groups_are_nearest_first() -> None:
    entries = (
        AllowlistEntry(EntryKind.GROUP, "a", default_permissions=False, policies=("read_jobs",)),
        AllowlistEntry(
            EntryKind.GROUP, "a/b", default_permissions=False, policies=("read_releases",)
        ),
    )
    allowlist = Allowlist(2, True, entries)
    nearest = allowlist.nearest(Project(1, "A/B/c/proj"))
    assert nearest is not None
    assert nearest.source == "a/b"
    assert allowlist.nearest(Project(1, "ab/proj")) is None  # a group covers paths below it only


@pytest.mark.parametrize(
    ("words", "sentence"),
    [([], ""), (["a"], "a"), (["a", "b"], "a and b"), (["a", "b", "c"], "a, b, and c")],
)
def test_to_sentence_is_rubys(words: list[str], sentence: str) -> None:
    assert policy.to_sentence(words) == sentence


@pytest.mark.parametrize(
    "target",
    [
        f"{API}/projects/%D9%A1%D9%A0/releases",  # Arabic-Indic "10": a path to GitLab, not #10
        f"{API}/projects/%C2%B2%C2%B0/releases",
        f"{API}/projects/99999999999999999999999/releases",
        f"{API}/projects/-10/releases",
    ],
)
async def test_unicode_digits_and_impossible_ids_are_no_project(gate: Gate, target: str) -> None:
    decision = await gate.evaluate(a_request("GET", target, APP))
    assert (decision.reason, decision.status) == (Reason.NOT_ALLOWLISTED, 403)
    assert gate.store.healthy


@pytest.mark.parametrize("job", ["%C2%B2", "99999999999999999999999", "%D9%A5%D9%A0%D9%A0%D9%A0"])
async def test_impossible_job_ids_are_unresolved(gate: Gate, job: str) -> None:
    decision = await gate.evaluate(a_request("GET", f"{API}/jobs/{job}/artifacts", APP))
    assert decision.reason in (Reason.TARGET_UNRESOLVED, Reason.BAD_TARGET)
    assert gate.store.healthy
