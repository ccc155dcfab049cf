"""Property: the segment trie agrees with a slow reference matcher on generated paths.

The reference enumerates every way every template shape matches a path and takes the most
specific (the lexicographically smallest per-element rank: literal < literal+`.json` < mixed <
param < splat, shorter splats first). A second, independent check: the chosen template's
GitLab-style regex (built from the raw template text) matches the raw path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_routes_overlaps import mustermann_regex

from gateway.routing.facts import SPANNING_PARAMS
from gateway.routing.table import RouteTable
from gateway.routing.targets import Refusal
from gateway.routing.templates import Segment, SegmentKind, Template
from gateway.routing.values import Route, RouteMatch

API = "/api/v4"
TABLE = RouteTable.load(REPO / "policies" / "routes.yaml")
ROUTES = list(TABLE)
LITERALS = sorted(
    {
        seg.text
        for shapes in TABLE.shapes.values()
        for shape in shapes
        for seg in shape.segments
        if seg.kind is SegmentKind.LITERAL
    }
)
VALUES = [
    "1",
    "42",
    "w",
    "group%2Fsub",
    "@scope%2Fname",
    "v1.0",
    "a+b",
    "x.json",
    "file.bin",
    "%40v",
    "caf%C3%A9",
    "v1.info",
    "latest",
    "-",
]
POOL = VALUES + LITERALS

Key = tuple[int, int, int, str]


# --------------------------------------------------------------------------- reference


def _element_matches(
    shape: Template, e: int, segs: list[str], i: int
) -> Iterator[tuple[Key, list[str], int]]:
    """Ways element `e` consumes segments from `i`: (rank key, captures, next index)."""
    element: Segment = shape.segments[e]
    final = e == len(shape.segments) - 1 and i == len(segs) - 1
    seg = segs[i]
    if element.kind is SegmentKind.LITERAL:
        if seg == element.text:
            yield (0, 0, 0, ""), [], i + 1
        if final and seg == element.text + ".json":
            yield (1, 0, 0, ""), [], i + 1
    elif element.kind is SegmentKind.MIXED:
        assert element.regex is not None
        size, pattern = -len(element.regex.pattern), element.regex.pattern
        hit = element.regex.fullmatch(seg)
        if hit:
            yield (2, 0, size, pattern), list(hit.groups()), i + 1
        hit = element.regex.fullmatch(seg[:-5]) if final and seg.endswith(".json") else None
        if hit:
            yield (2, 1, size, pattern), list(hit.groups()), i + 1
    elif element.kind is SegmentKind.PARAM:
        yield (3, 0, 0, ""), [seg], i + 1
    else:
        for end in range(i + 1, len(segs) + 1):
            yield (4, 0, end - i, ""), ["/".join(segs[i:end])], end


def _shape_matches(
    shape: Template, segs: list[str], e: int = 0, i: int = 0
) -> Iterator[tuple[list[Key], list[str]]]:
    if e == len(shape.segments):
        if i == len(segs):
            yield [], []
        return
    if i >= len(segs):
        return
    for key, caps, nxt in _element_matches(shape, e, segs, i):
        for keys, more in _shape_matches(shape, segs, e + 1, nxt):
            yield [key, *keys], caps + more


def reference_match(method: str, raw_target: str) -> tuple[Route, dict[str, str]] | None:
    path = re.sub("/+", "/", raw_target.partition("?")[0])
    if len(path) > 1:
        path = path.rstrip("/")
    if not path.startswith(API + "/"):
        return None
    segs = [unquote(seg) for seg in path[len(API) + 1 :].split("/")]
    method = "GET" if method == "HEAD" else method
    best: tuple[list[Key], Route, dict[str, str]] | None = None
    for route in ROUTES:
        if route.method != method:
            continue
        for shape in TABLE.shapes[route]:
            for keys, caps in _shape_matches(shape, segs):
                if best is None or keys < best[0]:
                    best = (keys, route, dict(zip(shape.names, caps, strict=True)))
    return None if best is None else (best[1], best[2])


# --------------------------------------------------------------------------- generation


@st.composite
def concrete_paths(draw: st.DrawFn) -> tuple[str, str]:
    """(method, raw target) built from a template shape, then mutated."""
    route = draw(st.sampled_from(ROUTES))
    shape = draw(st.sampled_from(TABLE.shapes[route]))
    segs: list[str] = []
    for element in shape.segments:
        if element.kind is SegmentKind.LITERAL:
            segs.append(element.text)
        elif element.kind is SegmentKind.MIXED:
            segs.append(re.sub(r":\w+", draw(st.sampled_from(["v1", "1.0.0", "x"])), element.text))
        elif element.kind is SegmentKind.PARAM:
            segs.append(draw(st.sampled_from(POOL)))
        else:
            segs.extend(draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        segs = _mutate(draw, segs)
    target = API + "/" + "/".join(segs)
    target = draw(
        st.sampled_from([target, target + "/", target.replace("/", "//", 2), target + "?a=%2F"])
    )
    method = draw(
        st.sampled_from([route.method, route.method, "HEAD", "GET", "PUT", "DELETE", "POST"])
    )
    return method, target


def _mutate(draw: st.DrawFn, segs: list[str]) -> list[str]:
    if not segs:
        return segs
    at = draw(st.integers(0, len(segs) - 1))
    action = draw(st.sampled_from(["drop", "dup", "swap", "json", "append"]))
    if action == "drop":
        return segs[:at] + segs[at + 1 :]
    if action == "dup":
        return segs[: at + 1] + segs[at:]
    if action == "swap":
        return [*segs[:at], draw(st.sampled_from(POOL)), *segs[at + 1 :]]
    if action == "json":
        return [*segs[:-1], segs[-1] + ".json"]
    return [*segs[:at], segs[at] + "x", *segs[at + 1 :]]


# --------------------------------------------------------------------------- properties


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(concrete_paths())
def test_the_trie_agrees_with_the_reference(case: tuple[str, str]) -> None:
    method, target = case
    found = TABLE.match(method, target)
    assert not isinstance(found, Refusal), found
    expected = reference_match(method, target)
    if expected is None:
        assert found is None
        return
    assert isinstance(found, RouteMatch)
    assert (found.route.name, dict(found.params)) == (expected[0].name, expected[1])


@settings(max_examples=300, deadline=None)
@given(concrete_paths())
def test_a_match_is_a_match_for_gitlabs_regex_too(case: tuple[str, str]) -> None:
    method, target = case
    found = TABLE.match(method, target)
    path = re.sub("/+", "/", target.partition("?")[0])
    rest = (path.rstrip("/") if len(path) > 1 else path)[len(API) :]
    method = "GET" if method == "HEAD" else method
    if isinstance(found, RouteMatch):
        regex = mustermann_regex(
            found.route.path, SPANNING_PARAMS.get(found.route.path, frozenset())
        )
        assert regex.fullmatch(rest), (found.route.name, rest)
        return
    for route in ROUTES:
        if route.method == method and "(/)(*" not in route.path:  # the one narrowing we make
            regex = mustermann_regex(route.path, SPANNING_PARAMS.get(route.path, frozenset()))
            assert not regex.fullmatch(rest), (route.name, rest)
