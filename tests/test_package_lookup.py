"""Group and instance package routes resolved by the package's project (issue 10, point 5).

A real gateway in front of a GitLab-like upstream that answers the packages API
(`GET /api/v4/groups/:id/packages`) for the operator's read token and records everything else
it receives. GitLab checks the package's project on these routes (lib/api/maven_packages.rb,
lib/api/concerns/packages/npm_namespace_endpoints.rb); so does the gateway, after asking.

The upstream filters its listing like GitLab's `Packages::GroupPackagesFinder` (no packages of
repository-disabled projects, no versionless packages unless `include_versionless`, displayable
statuses only unless `status`), and answers the package routes themselves, for the operator's
token, like GitLab's route finders (every installable package of the namespace's projects;
404 or the public-registry redirect when there is none, `404 Project Not Found` on dist-tags).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from fixtures.proxy import call

from gateway.errors import StoreUnavailable
from gateway.stores.packages import PackageLookup, PackageQuery

APP = "glcbt-pkg-app"  # job 8001 of acme/app (#10), read_packages on acme/pkgs
TOOL = "glcbt-pkg-tool"  # job 8002 of other/tool (#12), on no allowlist
LOOKUP_TOKEN = "glpat-operator-read-token"

GRANTS = """
projects:
  - {id: 10, path: acme/app}
  - {id: 12, path: other/tool}
  - {id: 40, path: acme/pkgs}
  - {id: 41, path: acme/more-pkgs}
  - {id: 42, path: acme/norepo}
jobs:
  - {token: glcbt-pkg-app, job_id: 8001, project: acme/app}
  - {token: glcbt-pkg-tool, job_id: 8002, project: other/tool}
allowlists:
  - project: acme/pkgs
    entries:
      - {source: acme/app, default_permissions: false, policies: [read_packages]}
  - project: acme/norepo
    entries:
      - {source: acme/app, default_permissions: false, policies: [read_packages]}
"""
REPOSITORY_DISABLED = {42}  # acme/norepo: its repository feature is disabled

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
        # Installable, but hidden from the packages API's default listing: status hidden
        # (DISPLAYABLE_STATUSES), or a project whose repository feature is disabled.
        {
            "id": 7,
            "name": "@acme/hidden-ui",
            "version": "1.0.0",
            "package_type": "npm",
            "project_id": 40,
            "status": "hidden",
        },
        {
            "id": 8,
            "name": "@acme/norepo-ui",
            "version": "1.0.0",
            "package_type": "npm",
            "project_id": 42,
        },
        {
            "id": 9,
            "name": "com/acme/secret",
            "version": "1.0",
            "package_type": "maven",
            "project_id": 42,
        },
        # Versionless only (a Maven plugin group's metadata): not listed by default.
        {
            "id": 11,
            "name": "com/acme/plugins",
            "version": None,
            "package_type": "maven",
            "project_id": 40,
        },
        # Not installable: GitLab's routes never serve it.
        {
            "id": 10,
            "name": "@acme/broken-ui",
            "version": "1.0.0",
            "package_type": "npm",
            "project_id": 41,
            "status": "error",
        },
    ],
}
DISPLAYABLE = {"default", "error", "deprecated"}  # app/models/packages/package.rb
INSTALLABLE = {"default", "hidden", "deprecated"}


def _listed(package: dict[str, Any], query: Any) -> bool:
    """Packages::GroupPackagesFinder's filters (app/finders/packages/group_packages_finder.rb)."""
    status = package.get("status", "default")
    if package["project_id"] in REPOSITORY_DISABLED:
        return False  # with_feature_available_for_user(:repository, ...)
    if package["version"] is None and not query.get("include_versionless"):
        return False  # filter_with_version
    wanted = query.get("status")
    return status == wanted if wanted else status in DISPLAYABLE  # filter_by_status


def _route_finds(group: str, package_type: str, name: str, version: str | None) -> bool:
    """GitLab's route finders: every installable package of the namespace's projects."""
    return any(
        p["package_type"] == package_type
        and p["name"] == name
        and p["version"] == version
        and p.get("status", "default") in INSTALLABLE
        for p in PACKAGES.get(group, [])
    )


def _any_version(group: str, name: str) -> bool:
    return any(
        _route_finds(group, "npm", name, p["version"])
        for p in PACKAGES.get(group, [])
        if p["name"] == name
    )


MAVEN_ROUTE = re.compile(r"/api/v4/groups/([^/]+)/-/packages/maven/(.+)/([^/]+)")
NPM_ROUTE = re.compile(
    r"/api/v4/(?:groups/([^/]+)/-/)?packages/npm/(?:-/package/)?([^/]+)(/dist-tags(?:/[^/]+)?)?"
)


@dataclass
class GitLabLike:
    url: str = ""
    lookups: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    lookup_paths: list[str] = field(default_factory=list)
    received: list[tuple[str, str]] = field(default_factory=list)
    probes: list[tuple[str, str]] = field(default_factory=list)  # the operator token's requests
    forwarding: bool = True  # *_package_requests_forwarding (the public-registry redirect)

    def route(self, method: str, raw_path: str) -> web.Response:
        """GitLab's answer to the operator's token on a group/instance package route."""
        path = unquote(raw_path)  # Maven paths have slashes; npm names keep their %2F
        if path.startswith("/redirect/"):
            raise web.HTTPFound(path.removeprefix("/redirect/"))
        if path.startswith("/api/v4/groups/probe-broken/"):
            return web.json_response({"message": "500 Internal Server Error"}, status=500)
        maven = MAVEN_ROUTE.fullmatch(path)
        if maven:
            group, pkg_path, file_name = maven.groups()
            head, _, tail = pkg_path.rpartition("/")
            if _route_finds(group, "maven", head, tail) or _route_finds(
                group, "maven", pkg_path, None
            ):
                return web.Response(body=b"jar bytes")
            if self.forwarding:  # redirect_registry_request -> registry_url
                raise web.HTTPFound(f"https://repo.maven.apache.org/maven2/{pkg_path}/{file_name}")
            return web.json_response({"message": "404 Not Found"}, status=404)
        npm = NPM_ROUTE.fullmatch(raw_path)
        if npm:
            group, name, tags = (unquote(part) if part else part for part in npm.groups())
            namespace = group or name[1:].partition("/")[0]
            found = _any_version(namespace, name)
            if tags:  # `project` -> not_found!('Project'), no redirect
                if found:
                    return web.json_response({"latest": "1.0.0"})
                return web.json_response({"message": "404 Project Not Found"}, status=404)
            if found:
                return web.json_response({"name": name})
            if self.forwarding:
                raise web.HTTPFound(f"https://registry.npmjs.org/{name}")
            return web.json_response({"message": "404 Packages Not Found"}, status=404)
        return web.json_response({"message": "404 Not Found"}, status=404)


@pytest.fixture
async def a_gitlab() -> AsyncIterator[GitLabLike]:
    gitlab = GitLabLike()

    async def packages(request: web.Request) -> web.Response:
        group = unquote(request.match_info["group"])
        gitlab.lookup_paths.append(request.raw_path)
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
            {"status": "default", **p}
            for p in PACKAGES[group]
            if p["package_type"] == wanted_type and name in p["name"] and _listed(p, request.query)
        ]
        return web.json_response(found, headers={"X-Next-Page": ""})

    async def anything(request: web.Request) -> web.Response:
        if request.headers.get("PRIVATE-TOKEN") == LOOKUP_TOKEN:
            gitlab.probes.append((request.method, request.raw_path))
            return gitlab.route(request.method, request.raw_path)
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
    asked = {
        "package_type": "npm",
        "package_name": "@acme/ui",
        "per_page": "100",
        "exclude_subgroups": "false",
        "include_versionless": "true",
    }
    # Once as listed by default, once for hidden packages (`filter_by_status`).
    assert [lookup[:2] for lookup in a_gitlab.lookups] == [
        ("acme", asked),
        ("acme", {**asked, "status": "hidden"}),
    ]
    assert a_gitlab.probes == []  # a package found needs no confirmation


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


# ---- F1: a package the packages API does not list is not "no package" (regressions)

GROUP_TAGS = "/api/v4/groups/acme/-/packages/npm/-/package/{}/dist-tags"
INSTANCE_TAGS = "/api/v4/packages/npm/-/package/{}/dist-tags"


@pytest.mark.parametrize("tags", [GROUP_TAGS, INSTANCE_TAGS])
async def test_a_hidden_packages_dist_tags_apply_its_projects_policies(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str, tags: str
) -> None:
    """Hidden packages are installable (INSTALLABLE_STATUSES): GitLab's `project` finds them,
    the default listing does not show them; the lookup asks for them by status."""
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    target = tags.format("@acme%2Fhidden-ui") + "/latest"
    answer = await call("PUT", gateway.url + target, headers={"JOB-TOKEN": APP}, data=b'"1.0.0"')
    assert answer.status == 403, answer.body
    assert answer.headers["X-Gateway-Reason"] == "insufficient_permissions"
    assert "project #40" in answer.json()["message"]
    assert a_gitlab.received == []


@pytest.mark.parametrize(
    ("method", "target", "token"),
    [
        ("DELETE", INSTANCE_TAGS.format("@acme%2Fnorepo-ui") + "/latest", APP),
        ("PUT", GROUP_TAGS.format("@acme%2Fnorepo-ui") + "/latest", APP),
        ("GET", GROUP_TAGS.format("@acme%2Fnorepo-ui"), TOOL),
        ("GET", INSTANCE_TAGS.format("@acme%2Fnorepo-ui"), TOOL),
        ("GET", "/api/v4/packages/npm/@acme%2Fnorepo-ui", TOOL),
        ("GET", "/api/v4/groups/acme/-/packages/npm/@acme%2Fnorepo-ui", TOOL),
        ("GET", "/api/v4/groups/acme/-/packages/maven/com/acme/secret/1.0/secret-1.0.jar", TOOL),
    ],
)
async def test_a_package_gitlabs_route_finds_but_the_api_hides_is_refused(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str, method: str, target: str, token: str
) -> None:
    """A repository-disabled project's packages are not listed (GroupPackagesFinder), but
    GitLab's route finders serve them: GitLab's own route, asked with the read token, finds
    the package, and the gateway cannot tell whose project it is: refused."""
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    answer = await call(method, gateway.url + target, headers={"JOB-TOKEN": token}, data=b'"1"')
    assert answer.status == 403, answer.body
    assert answer.headers["X-Gateway-Reason"] == "target_unresolved"
    assert a_gitlab.received == []
    # The probe is the route itself (GET dist-tags for the tag routes), with the read token.
    probe = target.rpartition("/")[0] if target.endswith("/latest") else target
    assert a_gitlab.probes == [("GET", probe)]


async def test_a_versionless_maven_package_is_found(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str
) -> None:
    """`filter_with_version` hides versionless packages unless `include_versionless`."""
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    target = "/api/v4/groups/acme/-/packages/maven/com/acme/plugins/maven-metadata.xml"
    answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": TOOL})
    assert answer.status == 403
    assert answer.headers["X-Gateway-Reason"] == "not_allowlisted"
    assert a_gitlab.probes == []
    assert all(query["include_versionless"] == "true" for _, query, _ in a_gitlab.lookups)


async def test_a_package_gitlab_does_not_serve_is_no_package(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str
) -> None:
    """An `error` package is listed (displayable) but not installable: not the package."""
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    target = "/api/v4/packages/npm/@acme%2Fbroken-ui"
    answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": TOOL})
    assert answer.status == 200, answer.body
    assert a_gitlab.received == [("GET", target)]
    assert a_gitlab.probes == [("GET", target)]


@pytest.mark.parametrize("forwarding", [True, False])
async def test_no_package_confirmed_by_gitlabs_route_is_forwarded(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str, forwarding: bool
) -> None:
    """GitLab's route answers 404 or redirects to the public registry: no package, forwarded."""
    a_gitlab.forwarding = forwarding
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    targets = [
        "/api/v4/groups/acme/-/packages/maven/org/other/x/2.0/x-2.0.jar",
        "/api/v4/packages/npm/@acme%2Fnothing",
        "/api/v4/groups/acme/-/packages/npm/@acme%2Fnothing",
    ]
    for target in targets:
        answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": TOOL})
        assert answer.status == 200, (target, answer.body)
    assert a_gitlab.received == [("GET", t) for t in targets]
    assert a_gitlab.probes == [("GET", t) for t in targets]


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", GROUP_TAGS.format("@acme%2Fnothing")),
        ("PUT", GROUP_TAGS.format("@acme%2Fnothing") + "/latest"),
        ("DELETE", INSTANCE_TAGS.format("@acme%2Fnothing") + "/latest"),
        ("GET", INSTANCE_TAGS.format("@acme%2Fnothing")),
    ],
)
async def test_dist_tags_of_no_package_are_gitlabs_404(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str, method: str, target: str
) -> None:
    """`project` -> `not_found!('Project') unless project_id`; no registry redirect there."""
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    answer = await call(method, gateway.url + target, headers={"JOB-TOKEN": APP}, data=b'"1"')
    assert answer.status == 404, answer.body
    assert answer.json() == {"message": "404 Project Not Found"}
    assert answer.headers["X-Gateway-Reason"] == "project_not_found"
    assert a_gitlab.received == []


async def test_an_unconfirmed_miss_fails_closed(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str
) -> None:
    """The route answering something else than 200/403/404/a redirect: never forwarded."""
    PACKAGES["probe-broken"] = []
    try:
        gateway = await start(a_gateway, a_gitlab, a_grants_file)
        target = "/api/v4/groups/probe-broken/-/packages/maven/com/x/1.0/x-1.0.jar"
        answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": APP})
    finally:
        del PACKAGES["probe-broken"]
    assert answer.status == 503
    assert answer.headers["X-Gateway-Reason"] == "store_unavailable"
    assert a_gitlab.received == []


def lookup_of(gitlab: GitLabLike) -> PackageLookup:
    return PackageLookup(
        gitlab.url,
        api_prefix="/api/v4",
        relative_url_root="",
        token=LOOKUP_TOKEN,
        timeout=5,
        ttl=60,
        size=10,
    )


@pytest.mark.parametrize(
    ("package_type", "probe", "found"),
    [
        ("maven", "/redirect/https://objects.example/packages/x.jar", True),
        ("maven", "/redirect/https://repo.maven.apache.org/maven2/x/1/x-1.jar", False),
        ("npm", "/redirect/https://registry.npmjs.org/@acme/x", False),
        ("maven", "/redirect/https://registry.npmjs.org/@acme/x", True),  # not Maven's registry
        ("npm", "/not-a-route", False),  # 404
    ],
)
async def test_what_gitlabs_route_answer_means(
    a_gitlab: GitLabLike, package_type: str, probe: str, found: bool
) -> None:
    """Only a 404 or the redirect to the package type's public registry
    (dependency_proxy_helpers.rb, `registry_url`) means no package; a redirect elsewhere (a
    file on object storage) is a package."""
    packages = lookup_of(a_gitlab)
    try:
        assert await packages.probe(PackageQuery("acme", package_type, (), probe=probe)) is found
    finally:
        await packages.close()
    assert a_gitlab.probes == [("GET", probe)]


# ---- F2: a scope that is no namespace path never shapes the lookup's URL (regressions)


@pytest.mark.parametrize("scope", ["..", "."])
async def test_a_dot_scope_is_no_namespace(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str, scope: str
) -> None:
    """`Namespace.top_most.by_path` finds no namespace for a path that NAMESPACE_FORMAT_REGEX
    (lib/gitlab/path_regex.rb) refuses: no package, no project, and no lookup at all."""
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    metadata = f"/api/v4/packages/npm/@{scope}%2Fui"
    answer = await call("GET", gateway.url + metadata, headers={"JOB-TOKEN": APP})
    assert answer.status == 200, answer.body
    tags = INSTANCE_TAGS.format(f"@{scope}%2Fui") + "/latest"
    answer = await call("DELETE", gateway.url + tags, headers={"JOB-TOKEN": APP})
    assert answer.status == 404
    assert answer.json() == {"message": "404 Project Not Found"}
    assert a_gitlab.received == [("GET", metadata)]
    assert a_gitlab.lookups == []
    assert a_gitlab.probes == []


@pytest.mark.parametrize(("group", "segment"), [("..", "%2E%2E"), (".", "%2E"), ("a/b", "a%2Fb")])
async def test_the_lookup_url_keeps_its_shape(
    a_gitlab: GitLabLike, group: str, segment: str
) -> None:
    packages = lookup_of(a_gitlab)
    try:
        with pytest.raises(StoreUnavailable):  # no such group: 404, refused
            await packages.projects(PackageQuery(group, "npm", (("@x/ui", None),)))
    finally:
        await packages.close()
    assert a_gitlab.received == []  # nothing reached /api/v4/packages
    assert [path.partition("?")[0] for path in a_gitlab.lookup_paths] == [
        f"/api/v4/groups/{segment}/packages"
    ]


@pytest.mark.parametrize(
    "target",
    [
        "/api/v4/groups/acme/-/packages/maven/com/../../../../user/x/1.0/x-1.0.jar",
        "/api/v4/groups/acme/-/packages/maven/com/%2E%2E/%2E%2E/x/1.0/x-1.0.jar",
        "/api/v4/packages/npm/%2E%2E",
    ],
)
async def test_the_operator_token_never_follows_a_dot_segment(
    a_gateway: Any, a_gitlab: GitLabLike, a_grants_file: str, target: str
) -> None:
    """The confirmation asks the request's own path: a path a server could normalise into
    another route is refused before any lookup, so the read token never goes there."""
    gateway = await start(a_gateway, a_gitlab, a_grants_file)
    answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": APP})
    assert answer.status in (400, 403), answer.body
    assert a_gitlab.lookups == []
    assert a_gitlab.probes == []
    assert a_gitlab.received == []
