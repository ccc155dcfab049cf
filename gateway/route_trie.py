"""The per-method segment trie `RouteTable` compiles, and the walk that matches decoded path
segments against it.

Depth-first, most specific first, backtracking: literal > literal + `.json` (Grape's `(.json)`
format suffix, lib/grape/path.rb) > mixed `:param.ext` > `:param` > `*splat` (lazy: fewest
segments first, like Mustermann's `.*?`). Splats only try the ends the rest of the trie can
complete, so matching stays linear in the path's length (tests/security/test_redos.py).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.route_facts import Derive, TargetRule
from gateway.route_templates import Segment, SegmentKind
from gateway.route_values import Route, RouteMatch, Target, TargetKind

__all__ = ["Caps", "Leaf", "Node", "build_match", "walk"]

# Captures in path order: a param's decoded text, or a splat's (start, end) segment span.
Caps = list[str | tuple[int, int]]


@dataclass(slots=True)
class Leaf:
    route: Route
    names: tuple[str, ...]
    rule: TargetRule
    target: Target | None = None  # precomputed when the rule needs no parameter
    kind: TargetKind = TargetKind.UNRESOLVED
    ref_param: str = ""
    plain: bool = False  # the target's ref is a parameter as is
    spans: bool = False  # a splat among the captures

    def __post_init__(self) -> None:
        if self.rule.param is None:
            self.target = Target(self.rule.kind)
        self.kind, self.ref_param = self.rule.kind, self.rule.param or ""
        self.plain = self.rule.param is not None and self.rule.derive is Derive.PARAM


# The hot path builds its frozen values through their slot descriptors instead of the
# dataclass __init__ (same fields, ~2x faster); `Target(...)`/`RouteMatch(...)` stay the public
# way to build them.
_object_new = object.__new__
_set_kind = Target.__dict__["kind"].__set__
_set_ref = Target.__dict__["ref"].__set__
_set_route = RouteMatch.__dict__["route"].__set__
_set_params = RouteMatch.__dict__["params"].__set__
_set_target = RouteMatch.__dict__["target"].__set__


def build_match(leaf: Leaf, caps: Caps, segs: list[str]) -> RouteMatch:
    names = leaf.names
    if leaf.spans:
        texts = [cap if isinstance(cap, str) else "/".join(segs[cap[0] : cap[1]]) for cap in caps]
    else:
        texts = caps  # type: ignore[assignment]  # spans are the only non-str captures
    # dict(zip()) costs 4x a literal for the usual one or two params
    if len(names) == 1:
        params = {names[0]: texts[0]}
    elif len(names) == 2:
        params = {names[0]: texts[0], names[1]: texts[1]}
    else:
        params = dict(zip(names, texts, strict=True))
    target = leaf.target
    if target is None:
        ref = params[leaf.ref_param] if leaf.plain else None
        target = _new_target(leaf.kind, ref) if ref is not None else leaf.rule.resolve(params)
    found = _object_new(RouteMatch)
    _set_route(found, leaf.route)
    _set_params(found, params)
    _set_target(found, target)
    return found


def _new_target(kind: TargetKind, ref: str) -> Target:
    target = _object_new(Target)
    _set_kind(target, kind)
    _set_ref(target, ref)
    return target


_BRANCHING, _LITERALS_ONLY, _PARAM_ONLY = 0, 1, 2
_UNBOUNDED = sys.maxsize


@dataclass(slots=True, eq=False)
class Node:
    literal: dict[str, Node] = field(default_factory=dict)
    mixed: list[tuple[re.Pattern[str], Node]] = field(default_factory=list)
    param: Node | None = None
    splat: Node | None = None
    leaf: Leaf | None = None
    mode: int = _BRANCHING  # set by `seal` once the trie is built
    min_rest: int = 0  # fewest segments a route below needs from here (set by `seal`)
    max_rest: int = _UNBOUNDED  # most segments (unbounded below a splat)

    def seal(self) -> None:
        """Record, bottom-up, whether this node offers a single way on (see `walk`) and how
        many segments the routes below it can still take."""
        for child in self.children():
            child.seal()
        others = bool(self.mixed) or self.splat is not None
        if not others and self.param is None and self.literal:
            self.mode = _LITERALS_ONLY
        elif not others and self.param is not None and not self.literal:
            self.mode = _PARAM_ONLY
        else:
            self.mode = _BRANCHING
        rests = [(0, 0)] if self.leaf is not None else []
        single = [*self.literal.values(), *(child for _, child in self.mixed)]
        single += [self.param] if self.param is not None else []
        rests += [(1 + child.min_rest, min(1 + child.max_rest, _UNBOUNDED)) for child in single]
        if self.splat is not None:
            rests.append((1 + self.splat.min_rest, _UNBOUNDED))
        self.min_rest = min(low for low, _ in rests)
        self.max_rest = max(high for _, high in rests)

    def children(self) -> Iterator[Node]:
        yield from self.literal.values()
        yield from (child for _, child in self.mixed)
        yield from (child for child in (self.param, self.splat) if child is not None)

    def child(self, segment: Segment) -> Node:
        if segment.kind is SegmentKind.LITERAL:
            return self.literal.setdefault(segment.text, Node())
        if segment.kind is SegmentKind.PARAM:
            self.param = self.param or Node()
            return self.param
        if segment.kind is SegmentKind.SPLAT:
            self.splat = self.splat or Node()
            return self.splat
        assert segment.regex is not None
        for regex, node in self.mixed:
            if regex.pattern == segment.regex.pattern:
                return node
        self.mixed.append((segment.regex, Node()))
        # longer literal text first: `:v.info` before a hypothetical `:v.o`
        self.mixed.sort(key=lambda item: (-len(item[0].pattern), item[0].pattern))
        return self.child(segment)


def walk(node: Node, segs: list[str], i: int, caps: Caps) -> Leaf | None:
    """Depth-first, most specific first, backtracking; `caps` collects params in order.

    Nodes with a single way on (only literals, or only a param) are walked in a loop: no
    alternative there, so no frame to come back to. A failed branch truncates `caps` itself.
    """
    n = len(segs)
    if not node.min_rest <= n - i <= node.max_rest:
        return None  # no route below this node has that many segments left
    while i < n:
        mode = node.mode
        if mode == _LITERALS_ONLY:
            child = node.literal.get(segs[i])
            if child is None or (i + 1 == n and child.leaf is None):
                return _json_literal(node, segs, i)
            node, i = child, i + 1
        elif mode == _PARAM_ONLY:
            caps.append(segs[i])
            node, i = node.param, i + 1  # type: ignore[assignment]  # mode guarantees it
        else:
            return _branch(node, segs, i, caps)
    return node.leaf


def _json_literal(node: Node, segs: list[str], i: int) -> Leaf | None:
    """Grape appends `(.json)` to every route of a single-format API (lib/grape/path.rb)."""
    seg = segs[i]
    if i + 1 == len(segs) and seg.endswith(".json"):
        child = node.literal.get(seg[:-5])
        if child is not None:
            return child.leaf
    return None


def _branch(node: Node, segs: list[str], i: int, caps: Caps) -> Leaf | None:
    """A node with alternatives: literal > literal.json > mixed > param > splat."""
    mark = len(caps)
    child = node.literal.get(segs[i])
    if child is not None:
        found = walk(child, segs, i + 1, caps)
        if found is not None:
            return found
        del caps[mark:]
    found = _json_literal(node, segs, i)
    if found is not None:
        return found
    if node.mixed:
        found = _walk_mixed(node, segs, i, caps)
        if found is not None:
            return found
    if node.param is not None:
        caps.append(segs[i])
        found = walk(node.param, segs, i + 1, caps)
        if found is not None:
            return found
        del caps[mark:]
    return _walk_splat(node.splat, segs, i, caps) if node.splat is not None else None


def _walk_mixed(node: Node, segs: list[str], i: int, caps: Caps) -> Leaf | None:
    seg = segs[i]
    for regex, child in node.mixed:
        hit = regex.fullmatch(seg)
        if hit is not None:
            values = hit.groups()
            mark = len(caps)
            caps.extend(values)
            found = walk(child, segs, i + 1, caps)
            if found is not None:
                return found
            del caps[mark:]
    if i + 1 == len(segs) and seg.endswith(".json"):  # `:v.info` + Grape's `(.json)`
        for regex, child in node.mixed:
            hit = regex.fullmatch(seg[:-5])
            if hit is not None and child.leaf is not None:
                caps.extend(hit.groups())
                return child.leaf
    return None


def _walk_splat(node: Node, segs: list[str], i: int, caps: Caps) -> Leaf | None:
    """Lazy like Mustermann's `.*?`: the fewest segments that let the rest match.

    Only the ends the rest of the trie can complete are tried (`node.min_rest`..`max_rest`
    segments must remain), and the capture is a (start, end) span joined once at the end: a
    long path costs linear time, not quadratic (tests/security/test_redos.py).
    """
    n = len(segs)
    mark = len(caps)
    for end in range(max(i + 1, n - node.max_rest), n - node.min_rest + 1):
        caps.append((i, end))
        found = walk(node, segs, end, caps)
        if found is not None:
            return found
        del caps[mark:]
    return None
