"""Overlap analysis: pairs of templates some path matches both ways, and who wins.

GitLab's router is first-match in declaration order; ours is most-specific-first. For every
overlapping pair of each shipped table (the seed's, policies/routes.yaml, and the current
page's, policies/routes-current.yaml) we record which route GitLab picks (with the source that
shows the order) and check that our winner is never more permissive than GitLab's.

The current page changes three pairs from "same authorization" to "different": two npm
metadata routes became `None` (skip_job_token_policies) next to their `read_packages`
dist-tags routes, and `GET /projects/:id/packages/:package_id/pipelines` now needs
`read_pipelines` next to npm's `read_packages` `*package_name`. Each is explained below.
"""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from gateway.routing.facts import SPANNING_PARAMS
from gateway.routing.overlaps import Overlap
from gateway.routing.table import RouteTable
from gateway.routing.values import Route, RouteMatch
from gateway.settings import shipped_table

API = "/api/v4"
GENERIC = "/projects/:id/packages/generic/:package_name/*package_version/(*path/):file_name"
NPM = "/projects/:id/packages/npm"
COMPOSER = "/group/:id/-/packages/composer"
ARTIFACTS = "/projects/:id/jobs"
_NPM_ORDER = "lib/api/npm_project_packages.rb: NpmEndpoints (dist-tags) first, tarball, then *package_name last"
_NPM_CONCERN = "lib/api/concerns/packages/npm_endpoints.rb: `-/package/*package_name` namespace before `*package_name`"
_SAME = None  # equal authorization: GitLab's order cannot change the decision (asserted below)

# frozenset({route, route}) -> (the route GitLab's first match picks, where the order is seen)
GITLAB_FIRST_MATCH: dict[frozenset[str], tuple[str | None, str]] = {
    frozenset({f"PUT {GENERIC}/authorize", f"PUT {GENERIC}"}): (
        f"PUT {GENERIC}/authorize",
        "lib/api/generic_packages.rb: `put 'authorize'` is declared before `put`",
    ),
    frozenset(
        {
            "PUT /projects/:id/packages/maven/*path/:file_name/authorize",
            "PUT /projects/:id/packages/maven/*path/:file_name",
        }
    ): (
        "PUT /projects/:id/packages/maven/*path/:file_name/authorize",
        "lib/api/maven_packages.rb: the `/authorize` PUT is declared before the upload PUT",
    ),
    frozenset({f"GET {NPM}/*package_name", f"GET {NPM}/-/package/*package_name/dist-tags"}): (
        f"GET {NPM}/-/package/*package_name/dist-tags",
        _NPM_ORDER,
    ),
    frozenset({f"GET {NPM}/*package_name/-/*file_name", f"GET {NPM}/*package_name"}): (
        f"GET {NPM}/*package_name/-/*file_name",
        _NPM_ORDER,
    ),
    frozenset(
        {f"GET {NPM}/*package_name/-/*file_name", f"GET {NPM}/-/package/*package_name/dist-tags"}
    ): (
        f"GET {NPM}/-/package/*package_name/dist-tags",
        _NPM_ORDER,
    ),
    frozenset(
        {
            "GET /groups/:id/-/packages/npm/*package_name",
            "GET /groups/:id/-/packages/npm/-/package/*package_name/dist-tags",
        }
    ): (
        "GET /groups/:id/-/packages/npm/-/package/*package_name/dist-tags",
        _NPM_CONCERN,
    ),
    frozenset(
        {"GET /packages/npm/*package_name", "GET /packages/npm/-/package/*package_name/dist-tags"}
    ): (
        "GET /packages/npm/-/package/*package_name/dist-tags",
        _NPM_CONCERN,
    ),
    frozenset({f"GET {COMPOSER}/*package_name", f"GET {COMPOSER}/p/:sha"}): (
        f"GET {COMPOSER}/p/:sha",
        "lib/api/composer_packages.rb: `*package_name` is the group's last GET",
    ),
    frozenset({f"GET {COMPOSER}/*package_name", f"GET {COMPOSER}/p2/*package_name"}): (
        f"GET {COMPOSER}/p2/*package_name",
        "lib/api/composer_packages.rb: `*package_name` is the group's last GET",
    ),
    frozenset({f"GET {COMPOSER}/*package_name", f"GET {COMPOSER}/packages"}): (
        f"GET {COMPOSER}/packages",
        "lib/api/composer_packages.rb: `*package_name` is the group's last GET",
    ),
    frozenset(
        {
            f"GET {ARTIFACTS}/:job_id/artifacts/*artifact_path",
            f"GET {ARTIFACTS}/artifacts/:ref_name/download",
        }
    ): (
        f"GET {ARTIFACTS}/artifacts/:ref_name/download",
        "lib/api/ci/job_artifacts.rb: the ref_name routes are declared first",
    ),
    frozenset(
        {
            f"GET {ARTIFACTS}/:job_id/artifacts/*artifact_path",
            f"GET {ARTIFACTS}/artifacts/:ref_name/raw/*artifact_path",
        }
    ): (
        f"GET {ARTIFACTS}/artifacts/:ref_name/raw/*artifact_path",
        "lib/api/ci/job_artifacts.rb: the ref_name routes are declared first",
    ),
    frozenset(
        {
            f"GET {ARTIFACTS}/artifacts/:ref_name/download",
            f"GET {ARTIFACTS}/artifacts/:ref_name/raw/*artifact_path",
        }
    ): (
        # ref_name is `/.+/`: `artifacts/x/raw/y/download` is the download route to GitLab
        f"GET {ARTIFACTS}/artifacts/:ref_name/download",
        "lib/api/ci/job_artifacts.rb: download is declared before raw",
    ),
    frozenset(
        {"GET /projects/:id/packages/:package_id/package_files", f"GET {NPM}/*package_name"}
    ): (
        _SAME,
        "mount order of API::ProjectPackages and API::NpmProjectPackages (not needed: same policy)",
    ),
    frozenset({"GET /projects/:id/packages/:package_id/pipelines", f"GET {NPM}/*package_name"}): (
        _SAME,
        "mount order of API::ProjectPackages and API::NpmProjectPackages (not needed: same policy)",
    ),
    frozenset(
        {
            "DELETE /projects/:id/environments/:environment_id",
            "DELETE /projects/:id/environments/review_apps",
        }
    ): (
        _SAME,
        "lib/api/environments.rb (not needed: both admin_environments)",
    ),
}


DOWNLOAD = "GET /projects/:id/packages/:package_id/package_files/:package_file_id/download"
_PACKAGE_FILES = "mount order (not needed: read_packages on both)"

CURRENT_FIRST_MATCH: dict[frozenset[str], tuple[str | None, str]] = {
    **GITLAB_FIRST_MATCH,
    # Current GitLab mounts its APIs alphabetically: `mount ::API::NpmProjectPackages` comes
    # before `mount ::API::ProjectPackages` (lib/api/api.rb), so `/projects/x/packages/npm/
    # pipelines` is npm's `*package_name` (read_packages), the route we pick too.
    frozenset({"GET /projects/:id/packages/:package_id/pipelines", f"GET {NPM}/*package_name"}): (
        f"GET {NPM}/*package_name",
        "lib/api/api.rb: NpmProjectPackages is mounted before ProjectPackages",
    ),
    frozenset(
        {
            "GET /projects/:id/jobs/:job_id/artifacts/*artifact_path",
            "GET /projects/:id/jobs/:job_id/artifacts/tree",
        }
    ): (_SAME, "lib/api/ci/job_artifacts.rb (not needed: read_jobs on both)"),
    frozenset(
        {
            DOWNLOAD,
            "GET /projects/:id/packages/generic/:package_name/*package_version/(*path/):file_name",
        }
    ): (_SAME, _PACKAGE_FILES),
    frozenset({DOWNLOAD, f"GET {NPM}/*package_name/-/*file_name"}): (_SAME, _PACKAGE_FILES),
    frozenset({DOWNLOAD, "GET /projects/:id/packages/maven/*path/:file_name"}): (
        _SAME,
        _PACKAGE_FILES,
    ),
    frozenset({DOWNLOAD, f"GET {NPM}/*package_name"}): (_SAME, _PACKAGE_FILES),
}


# The pairs where GitLab's order decides (different authorization), each explained above.
SIGNIFICANT: dict[str, set[frozenset[str]]] = {
    "seed": set(),
    "current": {
        frozenset({"GET /projects/:id/packages/:package_id/pipelines", f"GET {NPM}/*package_name"}),
        frozenset(
            {
                "GET /groups/:id/-/packages/npm/*package_name",
                "GET /groups/:id/-/packages/npm/-/package/*package_name/dist-tags",
            }
        ),
        frozenset(
            {
                "GET /packages/npm/*package_name",
                "GET /packages/npm/-/package/*package_name/dist-tags",
            }
        ),
    },
}
FIRST_MATCH = {"seed": GITLAB_FIRST_MATCH, "current": CURRENT_FIRST_MATCH}
TABLES = {"seed": REPO / "policies" / "routes.yaml", "current": shipped_table("current")}


@pytest.fixture(scope="module", params=["seed", "current"])
def edition(request: pytest.FixtureRequest) -> str:
    """Which shipped table a test reads: the tests that take it run once on each."""
    return str(request.param)


@pytest.fixture(scope="module")
def seed() -> RouteTable:
    return RouteTable.load(TABLES["seed"])


@pytest.fixture(scope="module")
def table(edition: str, seed: RouteTable) -> RouteTable:
    return seed if edition == "seed" else RouteTable.load(TABLES[edition])


@pytest.fixture(scope="module")
def overlaps(table: RouteTable) -> list[Overlap]:
    return table.overlaps()


def mustermann_regex(template: str, spanning: frozenset[str] = frozenset()) -> re.Pattern[str]:
    """The template as GitLab's router reads the raw path (independent of gateway.routing.table):
    `:p` = `[^/]+` (`.+` for spanning params), `*s` = `.+?`, `( )` optional, `(.json)` suffix."""
    out, pos = "", 0
    for token in re.finditer(r"[:*]\w+|[()]", template):
        out += re.escape(template[pos : token.start()])
        text = token.group()
        if text in "()":
            out += "(?:" if text == "(" else ")?"
        elif text.startswith(":"):
            out += "(.+)" if text[1:] in spanning else "([^/]+)"
        else:
            out += "(.+?)"
        pos = token.end()
    return re.compile(out + re.escape(template[pos:]) + r"(?:\.json)?")


def key(overlap: Overlap) -> frozenset[str]:
    return frozenset({overlap.first.name, overlap.second.name})


def test_every_overlap_is_known(edition: str, overlaps: list[Overlap]) -> None:
    # A new overlap (a page update) fails here until someone reads GitLab's declaration order.
    assert {key(overlap) for overlap in overlaps} == set(FIRST_MATCH[edition])


def test_the_pairs_with_different_authorization_are_the_explained_ones(
    edition: str, overlaps: list[Overlap]
) -> None:
    significant = {key(overlap) for overlap in overlaps if overlap.significant}
    assert significant == SIGNIFICANT[edition]  # the seed's: none
    for overlap in overlaps:
        if overlap.significant:
            gitlab_name, _ = FIRST_MATCH[edition][key(overlap)]
            assert overlap.winner is not None
            assert overlap.winner.name == gitlab_name


def test_each_witness_matches_both_templates(table: RouteTable, overlaps: list[Overlap]) -> None:
    for overlap in overlaps:
        for route in (overlap.first, overlap.second):
            regex = mustermann_regex(route.path, SPANNING_PARAMS.get(route.path, frozenset()))
            assert regex.fullmatch(overlap.witness), (route.name, overlap.witness)
        found = table.match(overlap.first.method, API + overlap.witness)
        assert isinstance(found, RouteMatch)
        assert found.route == overlap.winner


def more_permissive(ours: Route, gitlab: Route) -> bool:
    if ours.controllable != gitlab.controllable:
        return not ours.controllable
    if gitlab.own_project_only and not ours.own_project_only:
        return True
    return not set(gitlab.permissions) <= set(ours.permissions)


def test_our_winner_is_never_more_permissive_than_gitlabs(
    edition: str, table: RouteTable, overlaps: list[Overlap]
) -> None:
    by_name = {route.name: route for route in table}
    for overlap in overlaps:
        gitlab_name, source = FIRST_MATCH[edition][key(overlap)]
        assert overlap.winner is not None
        if gitlab_name is None:
            assert not overlap.significant, f"GitLab's order matters now: read {source}"
            continue
        assert not more_permissive(overlap.winner, by_name[gitlab_name]), (overlap, source)


@pytest.mark.parametrize(
    ("method", "path", "winner"),
    [
        (
            "PUT",
            "/projects/1/packages/generic/pkg/1.0/file.bin/authorize",
            f"PUT {GENERIC}/authorize",
        ),
        (
            "PUT",
            "/projects/1/packages/generic/pkg/1.0/a/b/file.bin/authorize",
            f"PUT {GENERIC}/authorize",
        ),
        ("PUT", "/projects/1/packages/generic/pkg/1.0/authorize", f"PUT {GENERIC}"),
        (
            "PUT",
            "/projects/1/packages/maven/com/ex/app/1.0/app.jar/authorize",
            "PUT /projects/:id/packages/maven/*path/:file_name/authorize",
        ),
        (
            "GET",
            "/projects/1/packages/npm/-/package/@scope%2Fpkg/dist-tags",
            f"GET {NPM}/-/package/*package_name/dist-tags",
        ),
        (
            "GET",
            "/groups/g/-/packages/npm/-/package/@scope%2Fpkg/dist-tags",
            "GET /groups/:id/-/packages/npm/-/package/*package_name/dist-tags",
        ),
        (
            "GET",
            "/packages/npm/-/package/@scope%2Fpkg/dist-tags",
            "GET /packages/npm/-/package/*package_name/dist-tags",
        ),
        ("GET", "/packages/npm/@scope%2Fpkg", "GET /packages/npm/*package_name"),
        (
            "GET",
            "/projects/1/packages/npm/@scope%2Fpkg/-/pkg-1.0.0.tgz",
            f"GET {NPM}/*package_name/-/*file_name",
        ),
    ],
)
def test_the_known_traps(seed: RouteTable, method: str, path: str, winner: str) -> None:
    found = seed.match(method, API + path)
    assert isinstance(found, RouteMatch)
    assert found.route.name == winner


def synthetic(*routes: tuple[str, tuple[str, ...]]) -> RouteTable:
    return RouteTable.compile(
        [Route("GET", path, permissions, bool(permissions), path) for path, permissions in routes]
    )


def test_different_authorization_is_flagged() -> None:
    table = synthetic(("/a/:x", ("read_jobs",)), ("/a/b", ("admin_jobs",)), ("/a/c/d", ()))
    [overlap] = table.overlaps()
    assert overlap.significant
    assert overlap.witness == "/a/b"
    assert overlap.winner is not None
    assert overlap.winner.path == "/a/b"


@pytest.mark.parametrize(
    ("one", "two", "witness"),
    [
        ("/a/*s/b", "/a/c/*t", "/a/c/b"),
        ("/a/*s", "/a/b/c/d", "/a/b/c/d"),
        ("/a/*s/z", "/a/*t", "/a/w/z"),
        ("/a/x:v", "/a/:w.info", "/a/xw.info"),
        ("/a/:v.info", "/a/v1.info", "/a/v1.info"),
        ("/a/(:x/)b", "/a/c/b", "/a/c/b"),
        ("/a/b", "/a/b/c", None),
        ("/a/*s/x", "/a/y", None),
        ("/a/:v.info", "/a/:w.mod", None),
        ("/a/:v.info", "/a/x.mod", None),
    ],
)
def test_template_intersection(one: str, two: str, witness: str | None) -> None:
    table = synthetic((one, ("read_jobs",)), (two, ("admin_jobs",)))
    found = table.overlaps()
    assert [overlap.witness for overlap in found] == ([witness] if witness else [])
    for overlap in found:
        assert mustermann_regex(one).fullmatch(overlap.witness)
        assert mustermann_regex(two).fullmatch(overlap.witness)
