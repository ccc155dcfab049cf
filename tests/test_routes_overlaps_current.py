"""Overlap analysis of the current page's table (policies/routes-current.yaml), as
test_routes_overlaps.py does for the seed's: every overlapping pair is known, with the route
GitLab's first match picks, and our winner is never more permissive than GitLab's.

The current page changes three pairs from "same authorization" to "different": two npm
metadata routes became `None` (skip_job_token_policies) next to their `read_packages`
dist-tags routes, and `GET /projects/:id/packages/:package_id/pipelines` now needs
`read_pipelines` next to npm's `read_packages` `*package_name`. Each is explained below.
"""

from __future__ import annotations

import pytest
from test_routes_overlaps import (
    API,
    GITLAB_FIRST_MATCH,
    NPM,
    key,
    more_permissive,
    mustermann_regex,
)

from gateway.routing.table import SPANNING_PARAMS, Overlap, RouteMatch, RouteTable
from gateway.settings import shipped_table

_SAME = None
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


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return RouteTable.load(shipped_table("current"))


@pytest.fixture(scope="module")
def overlaps(table: RouteTable) -> list[Overlap]:
    return table.overlaps()


def test_every_overlap_of_the_current_table_is_known(overlaps: list[Overlap]) -> None:
    assert {key(overlap) for overlap in overlaps} == set(CURRENT_FIRST_MATCH)


def test_the_pairs_with_different_authorization_are_the_explained_ones(
    overlaps: list[Overlap],
) -> None:
    significant = {key(overlap) for overlap in overlaps if overlap.significant}
    assert significant == {
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
    }
    for overlap in overlaps:
        if overlap.significant:
            gitlab_name, _ = CURRENT_FIRST_MATCH[key(overlap)]
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


def test_our_winner_is_never_more_permissive_than_gitlabs(
    table: RouteTable, overlaps: list[Overlap]
) -> None:
    by_name = {route.name: route for route in table}
    for overlap in overlaps:
        gitlab_name, source = CURRENT_FIRST_MATCH[key(overlap)]
        assert overlap.winner is not None
        if gitlab_name is None:
            assert not overlap.significant, f"GitLab's order matters now: read {source}"
            continue
        assert not more_permissive(overlap.winner, by_name[gitlab_name]), (overlap, source)
