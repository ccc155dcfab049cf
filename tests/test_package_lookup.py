"""Group and instance package routes resolved by the package's project (issue 10, point 5).

A real gateway in front of a GitLab-like upstream that answers the packages API
(`GET /api/v4/groups/:id/packages`) for the operator's read token and records everything else
it receives. GitLab checks the package's project on these routes (lib/api/maven_packages.rb,
lib/api/concerns/packages/npm_namespace_endpoints.rb); so does the gateway, after asking.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from fixtures.proxy import call

APP = "glcbt-pkg-app"  # job 8001 of acme/app (#10), read_packages on acme/pkgs
TOOL = "glcbt-pkg-tool"  # job 8002 of other/tool (#12), on no allowlist
LOOKUP_TOKEN = "glpat-operator-read-token"

GRANTS = """
projects:
  - {id: 10, path: acme/app}
  - {id: 12, path: other/tool}
  - {id: 40, path: acme/pkgs}
  - {id: 41, path: acme/more-pkgs}
jobs:
  - {token: glcbt-pkg-app, job_id: 8001, project: acme/app}
  - {token: glcbt-pkg-tool, job_id: 8002, project: other/tool}
allowlists:
  - project: acme/pkgs
    entries:
      - {source: acme/app, default_permissions: false, policies: [read_packages]}
"""

PACKAGES = {
    "acme": [
        {
            "id": 1,
            "name": "com/acme/lib",
            "version": "1.0",
            "package_type": "maven",
            "project_id": 40,
        },
        {
            "id": 2,
            "name": "com/acme/lib",
            "version": None,
            "package_type": "maven",
            "project_id": 40,
        },
        {"id": 3, "name": "@acme/ui", "version": "2.1.0", "package_type": "npm", "project_id": 40},
        {
            "id": 4,
            "name": "@acme/ui-kit",
            "version": "1.0.0",
            "package_type": "npm",
            "project_id": 41,
        },
        {
            "id": 5,
            "name": "@acme/twice",
            "version": "1.0.0",
            "package_type": "npm",
            "project_id": 40,
        },
        {
            "id": 6,
            "name": "@acme/twice",
            "version": "1.0.1",
            "package_type": "npm",
            "project_id": 41,
        },
    ],
}


@dataclass
class GitLabLike:
    url: str = ""
    lookups: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    received: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
async def a_gitlab() -> AsyncIterator[GitLabLike]:
    gitlab = GitLabLike()

    async def packages(request: web.Request) -> web.Response:
        group = unquote(request.match_info["group"])
        gitlab.lookups.append(
            (group, dict(request.query), request.headers.get("PRIVATE-TOKEN", ""))
        )
        if request.headers.get("PRIVATE-TOKEN") != LOOKUP_TOKEN:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        if group == "broken":
            return web.json_response({"message": "500 Internal Server Error"}, status=500)
        if group not in PACKAGES:
            return web.json_response({"message": "404 Group Not Found"}, status=404)
        wanted_type, name = request.query["package_type"], request.query["package_name"]
        # GitLab's `package_name` filter is a substring match (search_by_name).
        found = [
            p for p in PACKAGES[group] if p["package_type"] == wanted_type and name in p["name"]
        ]
        return web.json_response(found, headers={"X-Next-Page": ""})

    async def anything(request: web.Request) -> web.Response:
        gitlab.received.append((request.method, request.raw_path))
        return web.json_response({"raw_path": request.raw_path})

    app = web.Application()
    app.router.add_get("/api/v4/groups/{group}/packages", packages)
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gitlab.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield gitlab
    await runner.cleanup()


@pytest.fixture
def a_grants_file(tmp_path: Path) -> str:
    path = tmp_path / "grants.yaml"
    path.write_text(GRANTS)
    return f"file://{path}"


async def start(a_gateway: Any, gitlab: GitLabLike, store: str, **overrides: Any) -> Any:
    overrides.setdefault("package_lookup_token", LOOKUP_TOKEN)
    return await a_gateway(gitlab.url, store=store, **overrides)


MAVEN_JAR = "/api/v4/groups/acme/-/packages/maven/com/acme/lib/1.0/lib-1.0.jar"
MAVEN_METADATA = "/api/v4/groups/acme/-/packages/maven/com/acme/lib/maven-metadata.xml"
NPM_INSTANCE = "/api/v4/packages/npm/@acme%2Fui"
NPM_GROUP = "/api/v4/groups/acme/-/packages/npm/@acme%2Fui"
NPM_TAGS = "/api/v4/packages/npm/-/package/@acme%2Fui/dist-tags"


@pytest.mark.parametrize("target", [MAVEN_JAR, MAVEN_METADATA, NPM_INSTANCE, NPM_GROUP, NPM_TAGS])
async def test_an_admitted_source_reaches_the_upstream_unchanged(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str, target: str
) -> None:
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": APP})
    assert answer.status == 200, answer.body
    assert a_gitlab.received == [("GET", target)]
    assert all(token == LOOKUP_TOKEN for _, _, token in a_gitlab.lookups)  # never the job's


@pytest.mark.parametrize("target", [MAVEN_JAR, MAVEN_METADATA, NPM_INSTANCE, NPM_GROUP])
async def test_a_source_the_packages_project_does_not_admit_is_refused(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str, target: str
) -> None:
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": TOOL})
    assert answer.status == 403
    assert answer.json() == {
        "message": "403 Forbidden - Authentication by CI/CD job token not allowed from tool "
        "to project #40."
    }
    assert a_gitlab.received == []


async def test_the_packages_projects_policies_apply(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str
) -> None:
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    answer = await call(
        "PUT", gateway.url + NPM_TAGS + "/latest", headers={"JOB-TOKEN": APP}, data=b'"2.1.0"'
    )
    assert answer.status == 403
    assert answer.headers["X-Gateway-Reason"] == "insufficient_permissions"
    assert "project #40" in answer.json()["message"]
    assert a_gitlab.received == []


async def test_no_such_package_is_gitlabs_answer(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str
) -> None:
    """GitLab checks the project only `if package`: otherwise 404 or the public registry."""
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    for target in (
        "/api/v4/groups/acme/-/packages/maven/org/other/x/2.0/x-2.0.jar",
        "/api/v4/packages/npm/@acme%2Fnothing",
    ):
        answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": TOOL})
        assert answer.status == 200, (target, answer.body)
    assert len(a_gitlab.received) == 2


@pytest.mark.parametrize("lookup", [LOOKUP_TOKEN, None])
async def test_an_unscoped_instance_npm_name_stays_unresolved(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str, lookup: str | None
) -> None:
    """Current GitLab finds no namespace for it; older GitLab looked the name up across the
    instance. The gateway cannot tell which GitLab it fronts."""
    gateway = await start(a_gateway, a_gitlab, a_grants_file, package_lookup_token=lookup)
    answer = await call(
        "GET", gateway.url + "/api/v4/packages/npm/leftpad", headers={"JOB-TOKEN": APP}
    )
    assert answer.status == 403
    assert answer.headers["X-Gateway-Reason"] == "target_unresolved"
    assert a_gitlab.received == []


async def test_a_package_in_several_projects_stays_unresolved(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str
) -> None:
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    answer = await call(
        "GET", gateway.url + "/api/v4/packages/npm/@acme%2Ftwice", headers={"JOB-TOKEN": APP}
    )
    assert answer.status == 403
    assert answer.headers["X-Gateway-Reason"] == "target_unresolved"
    assert a_gitlab.received == []


async def test_a_failing_lookup_fails_closed(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str
) -> None:
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    for target in (
        "/api/v4/groups/broken/-/packages/maven/com/acme/lib/1.0/lib-1.0.jar",
        "/api/v4/groups/unknown/-/packages/npm/@unknown%2Fui",  # 404: not "no package"
    ):
        answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": APP})
        assert answer.status == 503
        assert answer.headers["X-Gateway-Reason"] == "store_unavailable"
    bad_token = await start(a_gateway, a_gitlab, a_grants_file, package_lookup_token="wrong")
    answer = await call("GET", bad_token.url + MAVEN_JAR, headers={"JOB-TOKEN": APP})
    assert answer.status == 503
    assert a_gitlab.received == []


async def test_answers_are_cached(a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str) -> None:
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    for _ in range(3):
        answer = await call("GET", gateway.url + NPM_INSTANCE, headers={"JOB-TOKEN": APP})
        assert answer.status == 200
    assert len(a_gitlab.lookups) == 1
    assert a_gitlab.lookups[0][:2] == (
        "acme",
        {
            "package_type": "npm",
            "package_name": "@acme/ui",
            "per_page": "100",
            "exclude_subgroups": "false",
        },
    )


async def test_without_a_lookup_token_they_stay_unresolved(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str
) -> None:
    gateway = await start(a_gateway, a_gitlab, a_grants_file, package_lookup_token=None)
    answer = await call("GET", gateway.url + MAVEN_JAR, headers={"JOB-TOKEN": APP})
    assert answer.status == 403
    assert answer.headers["X-Gateway-Reason"] == "target_unresolved"
    assert a_gitlab.lookups == []
    assert a_gitlab.received == []


@pytest.mark.parametrize("lookup", [LOOKUP_TOKEN, None])
@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/api/v4/packages/npm/-/npm/v1/security/advisories/bulk"),
        ("POST", "/api/v4/groups/acme/-/packages/npm/-/npm/v1/security/audits/quick"),
    ],
)
async def test_routes_where_gitlab_finds_no_project_need_no_lookup(
    a_gateway: Any,
    a_gitlab: GitLabLike,
    a_grants_file: str,
    lookup: str | None,
    method: str,
    target: str,
) -> None:
    """npm audits carry no package name: GitLab checks no project (it forwards to the public
    registry or answers 404); so does the gateway."""
    gateway = await start(a_gateway, a_gitlab, a_grants_file, package_lookup_token=lookup)
    answer = await call(
        method, gateway.url + target, headers={"JOB-TOKEN": TOOL}, json={"leftpad": ["1.0.0"]}
    )
    assert answer.status == 200, answer.body
    assert a_gitlab.received == [(method, target)]
    assert a_gitlab.lookups == []
