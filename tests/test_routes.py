"""The compiled route table: every row of GitLab's page matches, precedence, targets, refusals."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import REPO

from gateway.errors import PolicyFileError
from gateway.routing.table import RouteTable
from gateway.routing.targets import Refusal, RefusalReason, check_target
from gateway.routing.templates import SegmentKind, parse_template
from gateway.routing.values import METHODS, Route, RouteMatch, Target, TargetKind

ROUTES_FILE = REPO / "policies" / "routes.yaml"
API = "/api/v4"


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return RouteTable.load(ROUTES_FILE)


def a_route(method: str, path: str, *permissions: str) -> Route:
    return Route(method, path, tuple(permissions), bool(permissions), f"{method} {path}")


def matched(result: RouteMatch | Refusal | None) -> RouteMatch:
    assert isinstance(result, RouteMatch), f"expected a match, got {result!r}"
    return result


# --------------------------------------------------------------------------- every row

# Concrete values per parameter name: (raw, decoded). Project ids come in both spellings.
VALUES = {
    "package_name": ("@scope%2Fname", "@scope/name"),
    "package_username": ("group+sub+proj", "group+sub+proj"),
    "file_name": ("file-1.0.bin", "file-1.0.bin"),
    "module_version": ("v1.2.3", "v1.2.3"),
}
PROJECT_IDS = [("42", "42"), ("group%2Fsub%2Fproject", "group/sub/project")]
MULTI = ("dir/sub%2Fx/file.txt", "dir/sub/x/file.txt")  # a trailing splat spans segments


@dataclass(frozen=True)
class Sample:
    route: Route
    path: str  # after the API prefix
    params: dict[str, str]
    last: SegmentKind  # kind of the shape's last segment


def samples_for(route: Route, project_id: tuple[str, str]) -> list[Sample]:
    """One concrete path per shape of the template (optional groups present and absent)."""
    last_splat = route.path.rfind("*")
    samples = []
    for shape in parse_template(route.path):
        parts, params = [], {}
        for segment in shape.segments:
            raw, decoded = _value(route, segment.names, segment.kind, project_id, last_splat)
            if segment.kind is SegmentKind.LITERAL:
                parts.append(segment.text)
                continue
            if segment.kind is SegmentKind.MIXED:
                parts.append(re.sub(r":\w+", raw, segment.text))
            else:
                parts.append(raw)
            params[segment.names[0]] = decoded
        last = shape.segments[-1].kind
        samples.append(Sample(route, "/" + "/".join(parts), params, last))
    return samples


def _value(
    route: Route,
    names: tuple[str, ...],
    kind: SegmentKind,
    project_id: tuple[str, str],
    last_splat: int,
) -> tuple[str, str]:
    if not names:
        return "", ""
    name = names[0]
    if name == "id":
        return project_id
    if name in VALUES:
        return VALUES[name]
    if kind is SegmentKind.SPLAT and route.path.index("*" + name) == last_splat:
        return MULTI
    return f"{name}-7", f"{name}-7"


def expected_target(route: Route, params: dict[str, str]) -> Target:
    """Written independently of gateway.routing.table.TARGET_RULES (same GitLab facts)."""
    path = route.path
    if path.startswith("/projects/:id/"):
        return Target(TargetKind.PROJECT, params["id"])
    if path.startswith(("/groups/:id/", "/group/:id/")):
        return Target(TargetKind.GROUP, params["id"])
    if path.startswith("/jobs/:id/"):
        return Target(TargetKind.JOB, params["id"])
    if path in ("/job", "/job/allowed_agents"):
        return Target(TargetKind.OWN)
    if path.startswith(("/packages/conan/v1/conans/:", "/packages/conan/v1/files/")):
        return Target(TargetKind.PROJECT, params["package_username"].replace("+", "/"))
    if path.startswith("/packages/conan/v1/"):
        return Target(TargetKind.NONE)
    if path.startswith("/packages/maven/"):
        return Target(TargetKind.PROJECT, params["path"].rpartition("/")[0])
    assert path.startswith(("/packages/npm/", "/internal/dast/")), path
    return Target(TargetKind.UNRESOLVED)


def all_samples() -> list[Sample]:
    table = RouteTable.load(ROUTES_FILE)
    found = []
    for route in table:
        ids = PROJECT_IDS if ":id" in route.path else PROJECT_IDS[:1]
        for project_id in ids:
            found.extend(samples_for(route, project_id))
    return found


SAMPLES = all_samples()


def test_the_table_has_every_row_of_the_page(table: RouteTable) -> None:
    assert len(table) == 150
    assert len({route.name for route in table}) == 150


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.route.method} {s.path}")
def test_every_row_matches_its_own_concrete_path(table: RouteTable, sample: Sample) -> None:
    found = matched(table.match(sample.route.method, API + sample.path))
    assert found.route == sample.route
    assert dict(found.params) == sample.params
    assert found.target == expected_target(sample.route, sample.params)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.route.method} {s.path}")
def test_equivalent_spellings_match_alike(table: RouteTable, sample: Sample) -> None:
    method = sample.route.method
    expected = table.match(method, API + sample.path)
    squeezed = API + sample.path.replace("/", "//")
    assert table.match(method, squeezed) == expected
    assert table.match(method, API + sample.path + "/") == expected
    assert table.match(method, API + sample.path + "?private_token=x&a=%0A") == expected
    if method == "GET":
        assert table.match("HEAD", API + sample.path) == expected
    assert table.match(method.lower(), API + sample.path) is None


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.route.method} {s.path}")
def test_json_suffix(table: RouteTable, sample: Sample) -> None:
    found = matched(table.match(sample.route.method, API + sample.path + ".json"))
    if sample.last in (SegmentKind.LITERAL, SegmentKind.MIXED):
        assert found.route == sample.route  # Grape's `(.json)` suffix
        assert dict(found.params) == sample.params
    else:
        last = list(found.params.values())[-1]
        assert last.endswith(".json")  # a final param absorbs it


@pytest.mark.parametrize("sample", SAMPLES[::7], ids=lambda s: f"{s.route.method} {s.path}")
def test_other_methods_never_borrow_a_route(table: RouteTable, sample: Sample) -> None:
    for method in (*METHODS, "OPTIONS", "TRACE", "CONNECT", "FOO"):
        found = table.match(method, API + sample.path)
        if method == sample.route.method:
            continue
        assert found is None or (isinstance(found, RouteMatch) and found.route.method == method)
    assert table.match("OPTIONS", API + sample.path) is None


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/projects",
        "/projects/1",
        "/projects/1/unknown",
        "/projects/1/releases/v1/unknown/x",
        "/projects/1/deployments/1/2/3",
        "/groups/1/-/packages/unknown",
        "/user",
        "/v3/projects/1/releases",
        "/packages/conan/v1",
        "/job/other",
    ],
)
def test_unknown_paths_have_no_route(table: RouteTable, path: str) -> None:
    for method in METHODS:
        assert table.match(method, API + path) is None


def test_paths_outside_the_prefix_have_no_route(table: RouteTable) -> None:
    assert table.match("GET", "/projects/1/releases") is None
    assert table.match("GET", "/api/v44/projects/1/releases") is None
    assert table.match("GET", "/api/v4x/projects/1/releases") is None
    assert table.match("GET", "/api/v4") is None
    assert table.match("GET", "/api/v4/") is None


# --------------------------------------------------------------------------- spot checks

SPOT = [
    (
        "GET",
        "/projects/group%2Fsub%2Fproject/releases",
        "GET /projects/:id/releases",
        {"id": "group/sub/project"},
        Target(TargetKind.PROJECT, "group/sub/project"),
    ),
    (
        "PUT",
        "/projects/7/packages/generic/pkg/1.2.3/sub/dir/file.bin",
        "PUT /projects/:id/packages/generic/:package_name/*package_version/(*path/):file_name",
        {
            "id": "7",
            "package_name": "pkg",
            "package_version": "1.2.3",
            "path": "sub/dir",
            "file_name": "file.bin",
        },
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "PUT",
        "/projects/7/packages/generic/pkg/1.2.3/sub/dir/file.bin/authorize",
        "PUT /projects/:id/packages/generic/:package_name/*package_version/(*path/):file_name/authorize",
        {
            "id": "7",
            "package_name": "pkg",
            "package_version": "1.2.3",
            "path": "sub/dir",
            "file_name": "file.bin",
        },
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "GET",
        "/projects/7/packages/generic/pkg/1.2.3/file.bin",
        "GET /projects/:id/packages/generic/:package_name/*package_version/(*path/):file_name",
        {"id": "7", "package_name": "pkg", "package_version": "1.2.3", "file_name": "file.bin"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "GET",
        "/projects/7/packages/npm/-/package/@scope%2Fpkg/dist-tags",
        "GET /projects/:id/packages/npm/-/package/*package_name/dist-tags",
        {"id": "7", "package_name": "@scope/pkg"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "GET",
        "/projects/7/packages/npm/@scope%2fpkg",
        "GET /projects/:id/packages/npm/*package_name",
        {"id": "7", "package_name": "@scope/pkg"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "GET",
        "/projects/7/packages/npm/@scope%2Fpkg/-/@scope/pkg-1.0.0.tgz",
        "GET /projects/:id/packages/npm/*package_name/-/*file_name",
        {"id": "7", "package_name": "@scope/pkg", "file_name": "@scope/pkg-1.0.0.tgz"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "PUT",
        "/packages/npm/-/package/@scope%2Fpkg/dist-tags/latest",
        "PUT /packages/npm/-/package/*package_name/dist-tags/:tag",
        {"package_name": "@scope/pkg", "tag": "latest"},
        Target(TargetKind.UNRESOLVED),
    ),
    (
        "GET",
        "/packages/conan/v1/conans/zlib/1.3/my-group+sub+proj/stable/packages/abc123/download_urls",
        "GET /packages/conan/v1/conans/:package_name/:package_version/:package_username/:package_channel/packages/:conan_package_reference/download_urls",
        {
            "package_name": "zlib",
            "package_version": "1.3",
            "package_username": "my-group+sub+proj",
            "package_channel": "stable",
            "conan_package_reference": "abc123",
        },
        Target(TargetKind.PROJECT, "my-group/sub/proj"),
    ),
    ("GET", "/packages/conan/v1/ping", "GET /packages/conan/v1/ping", {}, Target(TargetKind.NONE)),
    (
        "GET",
        "/packages/conan/v1/conans/search",
        "GET /packages/conan/v1/conans/search",
        {},
        Target(TargetKind.NONE),
    ),
    (
        "GET",
        "/packages/maven/my-group/my-project/com/example/app/1.0/app-1.0.jar",
        "GET /packages/maven/*path/:file_name",
        {"path": "my-group/my-project/com/example/app/1.0", "file_name": "app-1.0.jar"},
        Target(TargetKind.PROJECT, "my-group/my-project/com/example/app"),
    ),
    (
        "GET",
        "/packages/maven/app/app-1.0.jar",
        "GET /packages/maven/*path/:file_name",
        {"path": "app", "file_name": "app-1.0.jar"},
        Target(TargetKind.UNRESOLVED),
    ),
    (
        "GET",
        "/projects/7/packages/go/example.com/mod/@v/v1.0.0.info",
        "GET /projects/:id/packages/go/*module_name/@v/:module_version.info",
        {"id": "7", "module_name": "example.com/mod", "module_version": "v1.0.0"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "GET",
        "/projects/7/packages/go/example.com/mod/@v/list",
        "GET /projects/:id/packages/go/*module_name/@v/list",
        {"id": "7", "module_name": "example.com/mod"},
        Target(TargetKind.PROJECT, "7"),
    ),
    ("GET", "/job", "GET /job", {}, Target(TargetKind.OWN)),
    ("GET", "/job/allowed_agents", "GET /job/allowed_agents", {}, Target(TargetKind.OWN)),
    (
        "GET",
        "/jobs/99/artifacts",
        "GET /jobs/:id/artifacts",
        {"id": "99"},
        Target(TargetKind.JOB, "99"),
    ),
    (
        "GET",
        "/group/my-group%2Fsub/-/packages/composer/packages",
        "GET /group/:id/-/packages/composer/packages",
        {"id": "my-group/sub"},
        Target(TargetKind.GROUP, "my-group/sub"),
    ),
    (
        "POST",
        "/internal/dast/site_validations/5/transition",
        "POST /internal/dast/site_validations/:id/transition",
        {"id": "5"},
        Target(TargetKind.UNRESOLVED),
    ),
    (
        "DELETE",
        "/projects/7/environments/review_apps",
        "DELETE /projects/:id/environments/review_apps",
        {"id": "7"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "DELETE",
        "/projects/7/environments/12",
        "DELETE /projects/:id/environments/:environment_id",
        {"id": "7", "environment_id": "12"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "GET",
        "/projects/7/releases/permalink/latest",
        "GET /projects/:id/releases/permalink/latest(/)(*suffix_path)",
        {"id": "7"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "GET",
        "/projects/7/releases/permalink/latest/downloads/bin/app",
        "GET /projects/:id/releases/permalink/latest(/)(*suffix_path)",
        {"id": "7", "suffix_path": "downloads/bin/app"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "GET",
        "/projects/7/releases/v1.0.json",
        "GET /projects/:id/releases/:tag_name",
        {"id": "7", "tag_name": "v1.0.json"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "GET",
        "/projects/7/releases.json",
        "GET /projects/:id/releases",
        {"id": "7"},
        Target(TargetKind.PROJECT, "7"),
    ),
    (
        "HEAD",
        "/projects/7/jobs/artifacts/main/raw/dist/app.tar.gz?job=build",
        "GET /projects/:id/jobs/artifacts/:ref_name/raw/*artifact_path",
        {"id": "7", "ref_name": "main", "artifact_path": "dist/app.tar.gz"},
        Target(TargetKind.PROJECT, "7"),
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "route", "params", "target"), SPOT, ids=[s[1] for s in SPOT]
)
def test_spot_checks(
    table: RouteTable, method: str, path: str, route: str, params: dict[str, str], target: Target
) -> None:
    found = matched(table.match(method, API + path))
    assert found.route.name == route
    assert dict(found.params) == params
    assert found.target == target


def test_container_registry_routes_are_own_project_only(table: RouteTable) -> None:
    registry = [route for route in table if "/registry/repositories" in route.path]
    assert len(registry) == 6
    assert all(route.own_project_only and not route.controllable for route in registry)
    assert not any(route.own_project_only for route in table if route not in registry)
    found = matched(table.match("DELETE", API + "/projects/7/registry/repositories/3/tags/v1"))
    assert found.route.own_project_only


def test_none_rows_are_not_controllable(table: RouteTable) -> None:
    uncontrolled = [route for route in table if not route.controllable]
    assert len(uncontrolled) == 25
    assert all(route.permissions == () for route in uncontrolled)
    assert all(route.permissions for route in table if route.controllable)


# --------------------------------------------------------------------------- precedence


def synthetic(*templates: str, method: str = "GET") -> RouteTable:
    return RouteTable.compile([a_route(method, template, "read_jobs") for template in templates])


@pytest.mark.parametrize(
    ("templates", "path", "winner", "params"),
    [
        (("/a/:x", "/a/b"), "/a/b", "/a/b", {}),
        (("/a/:x", "/a/b"), "/a/c", "/a/:x", {"x": "c"}),
        (("/a/:x", "/a/:v.info"), "/a/1.0.info", "/a/:v.info", {"v": "1.0"}),
        (("/a/:x", "/a/:v.info"), "/a/1.0.mod", "/a/:x", {"x": "1.0.mod"}),
        (("/a/:x/c", "/a/*s"), "/a/b/c", "/a/:x/c", {"x": "b"}),
        (("/a/:x/c", "/a/*s"), "/a/b/d", "/a/*s", {"s": "b/d"}),
        (("/a/b/c", "/a/:x/d"), "/a/b/d", "/a/:x/d", {"x": "b"}),  # backtracking
        (("/a/*s/:f",), "/a/x/y/z", "/a/*s/:f", {"s": "x/y", "f": "z"}),
        (("/a/*s/b/*t",), "/a/x/b/y/b/z", "/a/*s/b/*t", {"s": "x", "t": "y/b/z"}),  # lazy
        (("/a/*s", "/a/*s/-/*f"), "/a/x/-/y", "/a/*s/-/*f", {"s": "x", "f": "y"}),
        (("/a/(:x/)b",), "/a/b", "/a/(:x/)b", {}),
        (("/a/(:x/)b",), "/a/1/b", "/a/(:x/)b", {"x": "1"}),
        (("/a/bin-:arch",), "/a/bin-amd64", "/a/bin-:arch", {"arch": "amd64"}),
    ],
)
def test_the_most_specific_template_wins(
    templates: tuple[str, ...], path: str, winner: str, params: dict[str, str]
) -> None:
    found = matched(synthetic(*templates).match("GET", API + path))
    assert found.route.path == winner
    assert dict(found.params) == params


def test_a_splat_glued_to_text_is_not_guessed() -> None:
    table = synthetic("/r/latest(/)(*suffix)")
    assert matched(table.match("GET", API + "/r/latest")).params == {}
    assert matched(table.match("GET", API + "/r/latest/x/y")).params == {"suffix": "x/y"}
    assert table.match("GET", API + "/r/latestx") is None


def test_indistinguishable_templates_are_a_config_error() -> None:
    with pytest.raises(PolicyFileError, match=r"GET /a/:y and GET /a/:x match the same paths"):
        synthetic("/a/:x", "/a/:y")
    RouteTable.compile([a_route("GET", "/a/:x", "read_jobs"), a_route("PUT", "/a/:y", "read_jobs")])


@pytest.mark.parametrize("template", ["a/b", "/a/(b", "/a/b)", "/a b", "/a/:x:y", "/a/{x}", "/"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(PolicyFileError):
        synthetic(template)


def test_unknown_methods_are_refused() -> None:
    with pytest.raises(PolicyFileError, match="method must be one of"):
        RouteTable.compile([a_route("get", "/a", "read_jobs")])


# --------------------------------------------------------------------------- prefix


def test_relative_url_root_and_custom_prefix() -> None:
    table = RouteTable.load(ROUTES_FILE, relative_url_root="/gitlab/", api_prefix="/api/v4/")
    assert table.prefix == "/gitlab/api/v4"
    assert matched(table.match("GET", "/gitlab/api/v4/projects/1/releases")).params == {"id": "1"}
    assert matched(table.match("GET", "//gitlab//api/v4/projects/1/releases/")).params == {
        "id": "1"
    }
    assert table.match("GET", "/api/v4/projects/1/releases") is None
    assert table.in_api("/gitlab/api/v4/projects/1")
    assert not table.in_api("/api/v4/projects/1")


def test_an_empty_prefix_matches_at_the_root() -> None:
    table = RouteTable.load(ROUTES_FILE, api_prefix="")
    assert (
        matched(table.match("GET", "/projects/1/releases")).route.path == "/projects/:id/releases"
    )


@pytest.mark.parametrize(
    ("target", "inside"),
    [
        ("/api/v4", True),
        ("/api/v4/", True),
        ("/api/v4/projects/1?x=1", True),
        ("//api//v4//anything", True),
        ("/api/v4/no/such/route", True),
        ("/api%2Fv4/projects/1", True),  # a reader decoding %2F would see the API
        ("/api/v44/projects", False),
        ("/api/v4x", False),
        ("/group/project.git/info/refs?service=git-upload-pack", False),
        ("/", False),
    ],
)
def test_in_api(table: RouteTable, target: str, inside: bool) -> None:
    assert table.in_api(target) is inside


# --------------------------------------------------------------------------- refusals

P = "/api/v4/projects/1/releases"
REFUSED_FOR_EVERY_REQUEST = [
    ("http://example.com/api/v4/projects/1/releases", RefusalReason.NOT_ORIGIN_FORM),
    ("*", RefusalReason.NOT_ORIGIN_FORM),
    ("", RefusalReason.NOT_ORIGIN_FORM),
    ("api/v4/projects/1/releases", RefusalReason.NOT_ORIGIN_FORM),
    (P + "#frag", RefusalReason.FRAGMENT),
    (P + "?a=1#frag", RefusalReason.FRAGMENT),
    (P + "%23", None),  # an encoded '#' is data
    (P + "\x00", RefusalReason.CONTROL_BYTE),
    (P + "?q=\n", RefusalReason.CONTROL_BYTE),
    (P + "\x7f", RefusalReason.CONTROL_BYTE),
    ("/api/v4/projects/1%00/releases", RefusalReason.CONTROL_BYTE),
    ("/api/v4/projects/1%0a/releases", RefusalReason.CONTROL_BYTE),
    ("/api/v4/projects/1%1F/releases", RefusalReason.CONTROL_BYTE),
    ("/api/v4/projects/1%7F/releases", RefusalReason.CONTROL_BYTE),
    ("/api/v4/projects\\1/releases", RefusalReason.BACKSLASH),
    ("/api/v4/projects/1%5c/releases", RefusalReason.BACKSLASH),
    ("/api/v4/projects/1%5C/releases", RefusalReason.BACKSLASH),
    ("/api/v4/projects/./1/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/1/releases/..", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/1/../2/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/%2e/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/.%2e/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/%2e./releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/%2E%2E/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/..;x=1/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/.;/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/%252e%252e/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/%252E/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/group%2F..%2Fother/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/..%2Fother/releases", RefusalReason.DOT_SEGMENT),
    # nested encodings a reader decoding twice (or leniently) sees as `..`, `\\` or NUL
    ("/api/v4/projects/%25%32%65%25%32%65/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/%25%32%45/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/%2%65%2%65/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/%2%65./releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/.%2%65/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/%%32%65%%32%65/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/..%255C/releases", RefusalReason.DOT_SEGMENT),
    ("/api/v4/projects/a%255Cb/releases", RefusalReason.BACKSLASH),
    ("/api/v4/projects/1/releases/%2500", RefusalReason.CONTROL_BYTE),
    ("/api/v4/projects/1/releases/...", None),
    ("/api/v4/projects/1/releases/.hidden", None),
    ("/api/v4/projects/1/releases/v1..2", None),
]
REFUSED_BY_MATCH = [
    ("/api/v4/projects/%ZZ/releases", RefusalReason.BAD_ESCAPE),
    ("/api/v4/projects/1/releases/%4", RefusalReason.BAD_ESCAPE),
    ("/api/v4/projects/1/releases/%", RefusalReason.BAD_ESCAPE),
    ("/api/v4/projects/1/releases/%FF", RefusalReason.BAD_ESCAPE),  # not UTF-8
    ("/api/v4/projects/a%252Fb/releases", RefusalReason.DOUBLE_ENCODING),
    ("/api/v4/projects/a%252eb/releases", RefusalReason.DOUBLE_ENCODING),
    ("/api/v4/projects/a%2523b/releases", RefusalReason.DOUBLE_ENCODING),  # `#` as data: token only
    ("/%61pi/v4/projects/1/releases", RefusalReason.ENCODED_UNRESERVED),
    ("/api/v4/projects/1/releases/v1%7E", RefusalReason.ENCODED_UNRESERVED),
    ("/api/v4/projects/1/releases/v1%2e0", RefusalReason.ENCODED_UNRESERVED),
    ("/api/v4/projects/1/r%65leases", RefusalReason.ENCODED_UNRESERVED),
    ("/api/v4/projects/1/releases/v%5F1", RefusalReason.ENCODED_UNRESERVED),
    ("/api/v4/projects/1/releases/v%2D1", RefusalReason.ENCODED_UNRESERVED),
    ("/api/v4/projects/1/releases/v%301", RefusalReason.ENCODED_UNRESERVED),
    ("/api/v4/projects/1/releases/é", RefusalReason.NON_ASCII),
    ("/api/v4/projects/1/releases?q=é", RefusalReason.NON_ASCII),
]


@pytest.mark.parametrize(("target", "reason"), REFUSED_FOR_EVERY_REQUEST)
def test_check_target_refuses_ambiguous_forms(target: str, reason: RefusalReason | None) -> None:
    refusal = check_target(target)
    assert (refusal.reason if refusal else None) == reason
    if refusal is not None:
        assert refusal.detail


@pytest.mark.parametrize(("target", "reason"), REFUSED_FOR_EVERY_REQUEST + REFUSED_BY_MATCH)
def test_match_refuses_everything_check_target_does_and_more(
    table: RouteTable, target: str, reason: RefusalReason | None
) -> None:
    found = table.match("GET", target)
    if reason is None:
        assert not isinstance(found, Refusal)
    else:
        assert isinstance(found, Refusal)
        assert found.reason is reason


@pytest.mark.parametrize(("target", "reason"), REFUSED_BY_MATCH)
def test_check_target_leaves_token_only_checks_to_match(target: str, reason: RefusalReason) -> None:
    assert check_target(target) is None


@pytest.mark.parametrize(
    ("target", "decoded"),
    [
        ("/api/v4/projects/group%2Fsub/releases", "group/sub"),
        ("/api/v4/projects/group%2fsub/releases", "group/sub"),
        ("/api/v4/projects/a%20b%2Bc%40d/releases", "a b+c@d"),
        ("/api/v4/projects/caf%C3%A9/releases", "café"),
        ("/api/v4/projects/a%25b/releases", "a%b"),  # `%25` before non-hex is a plain '%'
        ("/api/v4/projects/a+b/releases", "a+b"),  # '+' is not a space in a path
    ],
)
def test_parameters_are_decoded_exactly_once(table: RouteTable, target: str, decoded: str) -> None:
    assert matched(table.match("GET", target)).params["id"] == decoded


def test_encoded_literals_are_matched_by_their_decoded_text(table: RouteTable) -> None:
    found = matched(table.match("GET", API + "/projects/7/packages/go/example.com/mod/%40v/list"))
    assert found.route.path == "/projects/:id/packages/go/*module_name/@v/list"


# --------------------------------------------------------------------------- the file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    return path


ENTRY = (
    "- method: GET\n  path: /projects/:id/releases\n  permissions: [read_releases]\n"
    "  controllable: true\n  description: List Releases\n"
)


def test_a_minimal_file_loads(tmp_path: Path) -> None:
    table = RouteTable.load(write(tmp_path, f"version: 1\nsource: test\nroutes:\n{ENTRY}"))
    assert [route.name for route in table] == ["GET /projects/:id/releases"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\nsource: [unclosed\n", r"routes\.yaml:\d+: invalid YAML"),
        ("version: 2\nsource: t\nroutes:\n" + ENTRY, r"routes\.yaml: version: Input should be 1"),
        (
            "version: 1\nsource: t\nroutes: []\n",
            r"routes\.yaml: routes: List should have at least 1",
        ),
        (
            "version: 1\nsource: t\nroutes:\n"
            + ENTRY
            + ENTRY.replace("GET", "PUT").replace("List", "x")
            + "  extra: 1\n",
            r"routes\.yaml:9: routes\[1\] \(PUT /projects/:id/releases\): extra: Extra inputs are not permitted",
        ),
        (
            "version: 1\nsource: t\nroutes:\n" + ENTRY.replace("read_releases", "read_everything"),
            r"routes\.yaml:4: routes\[0\] \(GET /projects/:id/releases\): permissions: .*unknown GitLab job-token policy read_everything",
        ),
        (
            "version: 1\nsource: t\nroutes:\n"
            + ENTRY.replace("controllable: true", "controllable: false"),
            r"routes\.yaml:4: routes\[0\] \(GET /projects/:id/releases\): controllable must be true exactly when",
        ),
        (
            "version: 1\nsource: t\nroutes:\n" + ENTRY.replace("GET", "FETCH"),
            r"routes\[0\] \(FETCH /projects/:id/releases\): method: Input should be",
        ),
        (
            "version: 1\nsource: t\nroutes:\n" + ENTRY.replace("/releases", "/(releases"),
            r"routes\.yaml: unbalanced '\(' in template",
        ),
        ("- just a list\n", r"routes\.yaml: file: Input should be a valid dictionary"),
    ],
)
def test_bad_files_name_the_file_and_the_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyFileError, match=message):
        RouteTable.load(write(tmp_path, text))


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read route file"):
        RouteTable.load(tmp_path / "absent.yaml")


def test_decoding_helpers_agree_with_the_standard_library() -> None:
    from gateway.routing.targets import decode_segment

    for text in ["a%2Fb", "%40scope%2fname", "x%20y%2B", "caf%C3%A9", "%e2%82%ac"]:
        assert decode_segment(text) == unquote(text, errors="strict")


def test_the_fast_path_agrees_with_the_full_checks(table: RouteTable) -> None:
    targets = [API + sample.path for sample in SAMPLES]
    targets += [target for target, _ in REFUSED_FOR_EVERY_REQUEST + REFUSED_BY_MATCH]
    targets += [
        t + suffix for t in targets[:40] for suffix in ("?a=%2F&b=/.x", "/", ".json", "//x")
    ]
    for target in targets:
        for method in ("GET", "HEAD", "PUT"):
            root = table._roots.get("GET" if method == "HEAD" else method)
            assert table.match(method, target) == table._match_slow(root, target), (method, target)


def test_the_fast_path_reads_encoded_slashes_like_the_full_checks(table: RouteTable) -> None:
    # `%2F` in every param and splat (`-7` ends every sample value), in both hex cases, and
    # before a dot: the one-pass decoding in `match` against the per-segment one.
    targets = []
    for sample in SAMPLES:
        for spelling in ("%2F", "%2f", "%2F.", "%2F%2F", "%40%2F"):
            targets.append(API + sample.path.replace("-7", "-" + spelling + "7"))
    for target in targets:
        for method in ("GET", "PUT", "POST", "DELETE"):
            root = table._roots[method]
            assert table.match(method, target) == table._match_slow(root, target), (method, target)


def test_a_param_keeps_its_encoded_slashes_as_slashes(table: RouteTable) -> None:
    found = matched(table.match("GET", API + "/projects/a%2Fb%2Fc/releases/v1%2F2"))
    assert dict(found.params) == {"id": "a/b/c", "tag_name": "v1/2"}
    assert found.target == Target(TargetKind.PROJECT, "a/b/c")


def test_matches_are_ordinary_frozen_values(table: RouteTable) -> None:
    found = matched(table.match("GET", API + "/projects/group%2Fsub/releases/v1"))
    again = matched(table.match("GET", API + "/projects/group%2Fsub/releases/v1"))
    assert type(found) is RouteMatch
    assert type(found.target) is Target
    assert found == again
    assert hash(found.target) == hash(Target(TargetKind.PROJECT, "group/sub"))
    with pytest.raises(AttributeError):
        found.target.ref = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        found.params = {}  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a",
        "%",
        "%%",
        "%2",
        "%2%65",
        "%zz%41",
        "%25%32%65",
        "%2e%2E",
        "%00%7f",
        "%5C",
        "caf%C3%A9",
        "%C3",
        "%ff%41",
        "%e2%82%ac",
        "é%41",
        "a%2Fb%2f..%3Bx",
    ],
)
def test_the_lenient_decoder_agrees_with_the_standard_library(text: str) -> None:
    from gateway.routing.targets import lenient_unquote

    assert lenient_unquote(text) == unquote(text)
