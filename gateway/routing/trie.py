"""The per-method segment trie `RouteTable` compiles, and the walk that matches decoded path
segments against it.

Depth-first, most specific first, backtracking: literal > literal + `.json` (Grape's `(.json)`
format suffix, lib/grape/path.rb) > mixed `:param.ext` > `:param` > `*splat` (lazy: fewest
segments first, like Mustermann's `.*?`). Splats only try the ends the rest of the trie can
complete, so matching stays linear in the path's length (tests/security/test_redos.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.routing.facts import Derive, TargetRule, derived_ref
from gateway.routing.templates import Segment, SegmentKind, Template
from gateway.routing.values import Route, RouteMatch, Target, TargetKind

__all__ = ["Caps", "Leaf", "Node", "build_match", "walk"]

# Captures in path order: a param's decoded text, or a splat's (start, end) segment span.
Caps = list[str | tuple[int, int]]


@dataclass(slots=True)
class Leaf:
    """Where a route's shape ends in the trie, with what `build_match` needs precomputed."""

    route: Route
    names: tuple[str, ...]  # the capture names, in path order
    rule: TargetRule
    span_at: tuple[int, ...] = ()  # captures that are splats: (start, end) segment spans
    target: Target | None = field(init=False, default=None)  # when the rule takes no param
    kind: TargetKind = field(init=False, default=TargetKind.UNRESOLVED)
    ref_index: int = field(init=False, default=-1)  # the capture the target's ref comes from
    derived: bool = field(init=False, default=False)  # the ref is not that capture as is

    def __post_init__(self) -> None:
        rule = self.rule
        self.kind = rule.kind
        if rule.param is None:
            self.target = Target(rule.kind)
        else:  # the last capture of that name: the one the params dict keeps
            self.ref_index = len(self.names) - 1 - self.names[::-1].index(rule.param)
            self.derived = rule.derive is not Derive.PARAM

    @classmethod
    def for_shape(cls, route: Route, shape: Template, rule: TargetRule) -> Leaf:
        span_at, count = [], 0
        for segment in shape.segments:
            if segment.kind is SegmentKind.SPLAT:
                span_at.append(count)
            count += len(segment.names)
        return cls(route, shape.names, rule, tuple(span_at))


_UNRESOLVED = Target(TargetKind.UNRESOLVED)
# `tuple.__new__(RouteMatch, (...))` builds the NamedTuples without their generated `__new__`,
# as aiohttp's websocket reader builds its `WSMessage`s: ~100 ns instead of ~210 ns for three
# fields on CPython 3.11 (a frozen dataclass took ~370 ns). tests/test_values.py holds the
# results equal to the values built by keywords.
_new = tuple.__new__


def build_match(leaf: Leaf, caps: Caps, segs: list[str]) -> RouteMatch:
    """The RouteMatch for a walk that ended at `leaf` with captures `caps` over `segs` (the
    splat spans in `caps` are replaced by their text). The common cases are inline: this runs
    once per matched request."""
    if leaf.span_at:
        for index in leaf.span_at:
            span: tuple[int, int] = caps[index]  # type: ignore[assignment]  # a splat's span
            caps[index] = "/".join(segs[span[0] : span[1]])
    texts: list[str] = caps  # type: ignore[assignment]  # all joined above
    names = leaf.names
    count = len(names)
    if count == 1:  # a dict display costs half of dict(zip()) for up to three params
        params = {names[0]: texts[0]}
    elif count == 2:
        params = {names[0]: texts[0], names[1]: texts[1]}
    elif count == 3:
        params = {names[0]: texts[0], names[1]: texts[1], names[2]: texts[2]}
    else:
        params = _params(names, texts)
    target = leaf.target
    if target is None:
        if leaf.derived:
            target = _derived_target(leaf, texts[leaf.ref_index])
        else:
            target = _new(Target, (leaf.kind, texts[leaf.ref_index]))
    return _new(RouteMatch, (leaf.route, params, target))


def _derived_target(leaf: Leaf, value: str) -> Target:
    ref = derived_ref(leaf.rule.derive, value)
    return _UNRESOLVED if ref is None else Target(leaf.kind, ref)


def _params(names: tuple[str, ...], texts: list[str]) -> dict[str, str]:
    """`dict(zip(names, texts))`, checking the lengths (the trie gives every shape as many
    captures as names) without `strict=`, which costs half as much again."""
    if len(texts) != len(names):
        raise AssertionError(f"{len(texts)} captures for params {names}")
    return dict(zip(names, texts))  # noqa: B905 (lengths checked above)


# How `walk` leaves a node (set by `Node.seal`): only literals, only a param, literals then a
# param (no frame needed once the literal fails), only a splat, or anything else (`_branch`).
_LITERALS_ONLY, _PARAM_ONLY, _LITERAL_OR_PARAM, _SPLAT_ONLY, _BRANCHING = 0, 1, 2, 3, 4
# More segments than any path can have (a 2 GiB request-target), small enough to stay a
# one-digit int: CPython compares those on its fast path (sys.maxsize is not one).
_UNBOUNDED = (1 << 30) - 1


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
        self.mode = self._mode()
        rests = [(0, 0)] if self.leaf is not None else []
        single = [*self.literal.values(), *(child for _, child in self.mixed)]
        single += [self.param] if self.param is not None else []
        rests += [(1 + child.min_rest, min(1 + child.max_rest, _UNBOUNDED)) for child in single]
        if self.splat is not None:
            rests.append((1 + self.splat.min_rest, _UNBOUNDED))
        self.min_rest = min(low for low, _ in rests)
        self.max_rest = max(high for _, high in rests)

    def _mode(self) -> int:
        if self.splat is not None and not (self.literal or self.mixed or self.param):
            return _SPLAT_ONLY
        if self.mixed or self.splat is not None:
            return _BRANCHING
        if self.param is None:
            return _LITERALS_ONLY if self.literal else _BRANCHING
        return _LITERAL_OR_PARAM if self.literal else _PARAM_ONLY

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


def walk(node: Node, segs: list[str], start: int, caps: Caps) -> Leaf | None:
    """The leaf `segs[start:]` reaches from `node`, or None. Depth-first, most specific first,
    backtracking; `caps` collects the captures in path order.

    A node is left in the loop, without a frame to come back to, when no alternative remains:
    only literals, only a param, or the param after its sibling literal failed. A failed branch
    truncates `caps` itself.
    """
    n = len(segs)
    if not node.min_rest <= n - start <= node.max_rest:
        return None  # no route below this node has that many segments left
    last = n - 1
    for i in range(start, n):  # one segment per turn; the commonest modes first
        mode = node.mode
        if mode == _LITERALS_ONLY:
            child = node.literal.get(segs[i])
            if child is None or (i == last and child.leaf is None):
                return _json_literal(node, segs[i]) if i == last else None
            node = child
        elif mode == _PARAM_ONLY:
            caps.append(segs[i])
            node = node.param  # type: ignore[assignment]  # the mode guarantees it
        elif mode == _LITERAL_OR_PARAM:
            seg = segs[i]
            child = node.literal.get(seg)
            param: Node = node.param  # type: ignore[assignment]  # the mode guarantees it
            if child is not None and i != last and not param.min_rest <= last - i <= param.max_rest:
                node = child  # the param cannot complete the path, `.json` is for the last one
                continue
            if child is not None or i == last:
                found = _literal_first(node, child, segs, i, caps)
                if found is not None:
                    return found
            caps.append(seg)
            node = param
        elif mode == _BRANCHING:
            return _branch(node, segs, i, caps)
        else:
            return _walk_splat(node, segs, i, caps)
    return node.leaf


def _literal_first(
    node: Node, child: Node | None, segs: list[str], i: int, caps: Caps
) -> Leaf | None:
    """The literal child, then Grape's `.json` on the last segment; `caps` left as found."""
    if child is not None:
        mark = len(caps)
        found = walk(child, segs, i + 1, caps)
        if found is not None:
            return found
        del caps[mark:]
    return _json_literal(node, segs[i]) if i + 1 == len(segs) else None


def _json_literal(node: Node, seg: str) -> Leaf | None:
    """Grape appends `(.json)` to every route of a single-format API (lib/grape/path.rb).
    Called for the last segment only."""
    if seg.endswith(".json"):
        child = node.literal.get(seg[:-5])
        if child is not None:
            return child.leaf
    return None


def _branch(node: Node, segs: list[str], i: int, caps: Caps) -> Leaf | None:
    """A node with alternatives: literal > literal.json > mixed > param > splat."""
    mark = len(caps)
    found = _literal_first(node, node.literal.get(segs[i]), segs, i, caps)
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
    return _walk_splat(node, segs, i, caps) if node.splat is not None else None


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


def _walk_splat(parent: Node, segs: list[str], i: int, caps: Caps) -> Leaf | None:
    """Lazy like Mustermann's `.*?`: the fewest segments that let the rest match.

    Only the ends the rest of the trie can complete are tried (`node.min_rest`..`max_rest`
    segments must remain), and the capture is a (start, end) span joined once at the end: a
    long path costs linear time, not quadratic (tests/security/test_redos.py).
    """
    node: Node = parent.splat  # type: ignore[assignment]  # callers check it
    n = len(segs)
    if node.max_rest == 0:  # a trailing splat: it takes the rest of the path (i < n)
        caps.append((i, n))
        return node.leaf
    mark = len(caps)
    for end in range(max(i + 1, n - node.max_rest), n - node.min_rest + 1):
        caps.append((i, end))
        found = walk(node, segs, end, caps)
        if found is not None:
            return found
        del caps[mark:]
    return None
