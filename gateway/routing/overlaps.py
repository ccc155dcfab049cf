"""Overlap analysis: pairs of routes (same method) that some path matches both ways.

Found by template intersection, not sampling: each shape is a sequence of segments (a splat is
"one segment, then any more"), and two shapes overlap when one segment list satisfies both.
The witness path is then matched to record which route the table picks for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.routing.facts import target_rule_for
from gateway.routing.templates import PARAM_TOKEN, Segment, SegmentKind
from gateway.routing.values import METHODS, Route, RouteMatch

if TYPE_CHECKING:
    from gateway.routing.table import RouteTable

__all__ = ["Overlap", "find_overlaps"]


@dataclass(frozen=True, slots=True)
class Overlap:
    """Two routes of one method that some path matches both ways."""

    first: Route
    second: Route
    witness: str  # a path (after the prefix) that both templates match
    winner: Route | None  # what `match` picks for the witness
    significant: bool  # different permissions, controllable, own-project-only or target kind


def find_overlaps(table: RouteTable) -> list[Overlap]:
    """Every pair of routes (same method) some path matches both ways, with a witness path
    from template intersection and the route `table.match` picks for it."""
    found = []
    for method in METHODS:
        routes = [route for route in table.routes if route.method == method]
        for index, first in enumerate(routes):
            for second in routes[index + 1 :]:
                witness = _common_path(table, first, second)
                if witness is not None:
                    found.append(_overlap(table, first, second, witness))
    return found


def _common_path(table: RouteTable, first: Route, second: Route) -> str | None:
    for one in table.shapes[first]:
        for other in table.shapes[second]:
            segments = _intersect(one.segments, other.segments)
            if segments is not None:
                return "/" + "/".join(segments)
    return None


def _overlap(table: RouteTable, first: Route, second: Route, witness: str) -> Overlap:
    matched = table.match(first.method, table.prefix + witness)
    winner = matched.route if isinstance(matched, RouteMatch) else None
    kind_one, kind_two = (target_rule_for(route.path).kind for route in (first, second))
    significant = (
        set(first.permissions) != set(second.permissions)
        or first.controllable != second.controllable
        or first.own_project_only != second.own_project_only
        or kind_one != kind_two
    )
    return Overlap(first, second, witness, winner, significant)


_Key = tuple[int, int]


def _intersect(one: Sequence[Segment], two: Sequence[Segment]) -> list[str] | None:
    """A segment list both shapes match, or None. Splats are "one segment, then any more"."""
    memo: dict[_Key, list[str] | None] = {}
    return _meet(_starred(one), _starred(two), 0, 0, memo)


def _starred(shape: Sequence[Segment]) -> list[Segment | None]:
    """A splat becomes one any-segment element followed by None (= zero or more segments)."""
    out: list[Segment | None] = []
    for segment in shape:
        out.append(segment)
        if segment.kind is SegmentKind.SPLAT:
            out.append(None)
    return out


def _meet(
    a: list[Segment | None],
    b: list[Segment | None],
    i: int,
    j: int,
    memo: dict[_Key, list[str] | None],
) -> list[str] | None:
    if (i, j) in memo:
        return memo[(i, j)]
    memo[(i, j)] = None
    result: list[str] | None = None
    if i == len(a) and j == len(b):
        result = []
    elif i < len(a) and a[i] is None:
        result = _meet(a, b, i + 1, j, memo)
        if result is None:
            result = _star_eats(a, b, i, j, memo, flip=False)
        if result is None and j < len(b) and b[j] is None:
            result = _meet(a, b, i, j + 1, memo)
    elif j < len(b) and b[j] is None:
        result = _meet(a, b, i, j + 1, memo)
        if result is None:
            result = _star_eats(b, a, j, i, memo, flip=True)
    elif i < len(a) and j < len(b):
        one, two = a[i], b[j]
        segment = _meet_segment(one, two) if one is not None and two is not None else None
        rest = _meet(a, b, i + 1, j + 1, memo) if segment is not None else None
        result = [segment, *rest] if segment is not None and rest is not None else None
    memo[(i, j)] = result
    return result


def _star_eats(
    star_side: list[Segment | None],
    other: list[Segment | None],
    i: int,
    j: int,
    memo: dict[_Key, list[str] | None],
    *,
    flip: bool,
) -> list[str] | None:
    """The zero-or-more element at star_side[i] consumes one concrete element of other[j]."""
    if j >= len(other) or other[j] is None:
        return None
    element = other[j]
    assert element is not None
    rest = (
        _meet(other, star_side, j + 1, i, memo) if flip else _meet(star_side, other, i, j + 1, memo)
    )
    return None if rest is None else [element.witness(), *rest]


def _meet_segment(one: Segment, two: Segment) -> str | None:
    if one.kind > two.kind:
        one, two = two, one
    if two.kind in (SegmentKind.PARAM, SegmentKind.SPLAT):
        return one.witness()
    if one.kind is SegmentKind.LITERAL:
        if two.kind is SegmentKind.LITERAL:
            return one.text if one.text == two.text else None
        return one.text if two.regex is not None and two.regex.fullmatch(one.text) else None
    return _meet_mixed(one, two)


def _meet_mixed(one: Segment, two: Segment) -> str | None:
    """A segment two mixed patterns both match: try each witness, then longest head + tail."""
    if one.regex is None or two.regex is None:
        return None
    heads = [PARAM_TOKEN.split(segment.text)[0] for segment in (one, two)]
    tails = [PARAM_TOKEN.split(segment.text)[-1] for segment in (one, two)]
    combined = max(heads, key=len) + "w" + max(tails, key=len)
    for candidate in (one.witness(), two.witness(), combined):
        if one.regex.fullmatch(candidate) and two.regex.fullmatch(candidate):
            return candidate
    return None
