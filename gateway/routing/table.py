"""GitLab's job-token route table, compiled once at start-up; `match` answers in a few microseconds.

CONTRACT (other modules rely on these names; the implementation may change freely):
- `RouteTable`, the one name this module exports; the values it deals in are imported from the
  module that defines them (`gateway.routing.values`: `Route`, `Target`, `TargetKind`,
  `RouteMatch`; `gateway.routing.targets`: `Refusal`, `RefusalReason`, `check_target`; a
  `Refusal` becomes a Decision only through `gateway.core.decision.bad_target`).
- `RouteTable.load(path, supplementary=None) -> RouteTable` (raises `PolicyFileError`),
  `RouteTable.compile(routes)`.
- `RouteTable.match(method, raw_target) -> RouteMatch | Refusal | None`: None = no route.
- `RouteTable.in_api(raw_target) -> bool`; `targets.check_target(raw_target) -> Refusal | None`.
- `RouteTable.overlaps()`: pairs of templates some path matches both ways (template intersection).

How a request-target is read (GitLab: Grape + Mustermann, see docs/reference section 6):
1. Refusals first (`check_target` subset for every request, then the stricter checks).
2. The path (before `?`) is normalized like `Grape::Router.normalize_path` (ruby-grape/grape
   lib/grape/router.rb): duplicate slashes squeezed, trailing slashes stripped.
3. The configured prefix (relative URL root + API prefix) is removed; the rest is split on
   literal `/` and each segment is percent-decoded exactly once (so `group%2Fsub%2Fproject` and
   `@scope%2Fname` stay one segment, as with GitLab's `NO_SLASH_URL_PART_REGEX = %r{[^/]+}`).
4. A per-method segment trie is walked depth-first: literal > literal + `.json` (Grape's
   `(.json)` format suffix, lib/grape/path.rb) > mixed `:param.ext` > `:param` > `*splat`
   (lazy: fewest segments first, like Mustermann's `.*?`), backtracking on failure. HEAD uses
   the GET routes (Grape's `mount_in` adds a HEAD twin of every GET route). Splats only try the
   ends the rest of the trie can complete: matching stays linear in the path's length.

Where each part lives (this module keeps the table):
- `gateway.routing.values`: Route, Target, TargetKind, RouteMatch, METHODS.
- `gateway.routing.targets`: check_target and the stricter checks, percent-decoding (steps 1 and 3).
- `gateway.routing.templates`: Grape template parsing (`parse_template`, Segment, Template).
- `gateway.routing.trie`: the segment trie and its walk (step 4), building the RouteMatch.
- `gateway.routing.facts`: GitLab facts with their sources (target rules, spanning params,
  own-project-only routes).
- `gateway.routing.file`: the routes.yaml and routes-supplementary.yaml schemas and their error
  messages; `RouteTable.load(..., supplementary=...)` compiles both into one trie.
- `gateway.routing.overlaps`: template intersection for `overlaps`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from gateway.errors import PolicyFileError
from gateway.routing import file as route_file
from gateway.routing.facts import (
    SPANNING_PARAMS,
    target_rule_for,
)
from gateway.routing.overlaps import Overlap, find_overlaps
from gateway.routing.targets import (
    ANY_BAD_ESCAPE,
    Refusal,
    RefusalReason,
    decode_segment,
    strict_refusal,
)
from gateway.routing.templates import Template, parse_template
from gateway.routing.trie import Caps, Leaf, Node, build_match, walk
from gateway.routing.values import METHODS, Route, RouteMatch, TargetKind

__all__ = ["RouteTable"]


class RouteTable:
    """The compiled route table. Build with `load` or `compile`; immutable afterwards."""

    __slots__ = (
        "_methods",
        "_plain",
        "_prefix",
        "_prefix_slash",
        "_roots",
        "_start",
        "routes",
        "shapes",
    )

    def __init__(self, routes: tuple[Route, ...], prefix: str) -> None:
        self.routes = routes
        self._prefix = prefix
        self._prefix_slash = prefix + "/"
        self._start = len(prefix) + 1
        self._plain = re.compile(re.escape(self._prefix_slash) + _PLAIN_REST)
        self._roots: dict[str, Node] = {}
        self.shapes: dict[Route, tuple[Template, ...]] = {}
        for route in routes:
            self._add(route)
        for root in self._roots.values():
            root.seal()
        # HEAD uses the GET routes (Grape's `mount_in` adds a HEAD twin of every GET route).
        self._methods = (
            {**self._roots, "HEAD": self._roots["GET"]} if "GET" in self._roots else {**self._roots}
        )

    # ---- construction

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        api_prefix: str = "/api/v4",
        relative_url_root: str = "",
        supplementary: Path | str | None = None,
    ) -> RouteTable:
        """Read, validate and compile a route file, and the supplementary route file beside it
        when given (policies/routes-supplementary.yaml), into one trie. Raises PolicyFileError
        naming the file, the line and the entry (`routes[3] GET /x`) when anything is wrong, and
        when a supplementary route repeats or shadows a generated one (same method and paths):
        the generated table must stay the only source for the routes it lists."""
        path = Path(path)
        routes = route_file.read_routes(path)
        source = str(path)
        if supplementary is not None:
            extra = route_file.read_supplementary(Path(supplementary))
            _check_supplementary(routes, extra, Path(supplementary))
            routes = [*routes, *extra]
            source = f"{path} + {supplementary}"
        return cls.compile(
            routes, api_prefix=api_prefix, relative_url_root=relative_url_root, source=source
        )

    @classmethod
    def compile(
        cls,
        routes: Iterable[Route],
        *,
        api_prefix: str = "/api/v4",
        relative_url_root: str = "",
        source: str = "routes",
    ) -> RouteTable:
        """Compile routes into per-method segment tries. Routes are taken as given (`load` adds
        the GitLab facts the page does not carry, such as `own_project_only`); target rules and
        spanning params come from TARGET_RULES and SPANNING_PARAMS. Raises PolicyFileError for a
        bad template, an unknown method, or two routes no path can tell apart."""
        prefix = relative_url_root.rstrip("/") + api_prefix.rstrip("/")
        if prefix and not prefix.startswith("/"):
            raise PolicyFileError(f"{source}: prefix must start with '/': {prefix!r}")
        try:
            return cls(tuple(routes), prefix)
        except ValueError as exc:
            raise PolicyFileError(f"{source}: {exc}") from None

    def _add(self, route: Route) -> None:
        if route.method not in METHODS:
            raise ValueError(f"{route.name}: method must be one of {', '.join(METHODS)}")
        shapes = parse_template(route.path, SPANNING_PARAMS.get(route.path, frozenset()))
        rule = target_rule_for(route.path)
        self.shapes[route] = shapes
        for shape in shapes:
            if rule.param is not None and rule.param not in shape.names:
                raise ValueError(f"{route.name}: target rule needs :{rule.param}")
            node = self._roots.setdefault(route.method, Node())
            for segment in shape.segments:
                node = node.child(segment)
            if node.leaf is not None and node.leaf.route is not route:
                raise ValueError(f"{route.name} and {node.leaf.route.name} match the same paths")
            node.leaf = node.leaf or Leaf.for_shape(route, shape, rule)

    # ---- matching

    @property
    def prefix(self) -> str:
        return self._prefix

    def match(self, method: str, raw_target: str) -> RouteMatch | Refusal | None:
        """Match a request. `raw_target` is the raw request-target (percent-encoded, maybe with
        a query) exactly as received. Returns a Refusal for ambiguous forms, None when no route
        matches (wrong method, unknown path, not under the prefix), else the RouteMatch."""
        root = self._methods.get(method)
        # Fast path, a few C-level scans: a path under the prefix with no `#`, `\`, controls,
        # non-ASCII, dot segments or slashes to squeeze.
        plain = self._plain.fullmatch(raw_target)
        if plain is None or root is None:
            return self._match_slow(root, raw_target)
        rest = plain[1]
        # slashes to squeeze, or dot segments (`"." in` first: a one-byte search is cheaper)
        if "//" in rest or ("." in rest and "/." in rest):
            return self._match_slow(root, raw_target)
        if "%" not in rest:
            segs = rest.split("/")
        else:
            # `%2F` (project paths, npm scopes) decoded in one pass: the separators become
            # SEPARATOR, then `%2F` becomes `/`. Any other escape (`%2f` too) takes the long way.
            swapped = rest.replace("/", SEPARATOR).replace("%2F", "/")
            if "%" in swapped or ("." in swapped and "/." in swapped):
                return self._match_decoded(root, raw_target, rest)  # other escapes, or dots
            segs = swapped.split(SEPARATOR)
        caps: Caps = []
        leaf = walk(root, segs, 0, caps)
        return None if leaf is None else build_match(leaf, caps, segs)

    def _match_decoded(self, root: Node, raw_target: str, rest: str) -> RouteMatch | Refusal | None:
        """`match` for a plain target with escapes other than `%2F`: each segment is decoded
        on its own, unless an escape is refused or hides dots (then `_match_slow`)."""
        if ANY_BAD_ESCAPE.search(rest) is not None or "F." in rest or "f." in rest:
            return self._match_slow(root, raw_target)  # refused, or dots behind `%2F`
        try:
            segs = [decode_segment(seg) if "%" in seg else seg for seg in rest.split("/")]
        except UnicodeDecodeError:
            return Refusal(RefusalReason.BAD_ESCAPE, "percent-escapes do not decode to UTF-8")
        caps: Caps = []
        leaf = walk(root, segs, 0, caps)
        return None if leaf is None else build_match(leaf, caps, segs)

    def _match_slow(self, root: Node | None, raw_target: str) -> RouteMatch | Refusal | None:
        """`match` for targets that need refusal checks, normalization or decoding."""
        refusal = strict_refusal(raw_target)
        if refusal is not None:
            return refusal
        segs = self._segments(raw_target) if root is not None else None
        if root is None or segs is None:
            return None
        if "%" in raw_target:
            try:
                segs = [decode_segment(seg) if "%" in seg else seg for seg in segs]
            except UnicodeDecodeError:
                return Refusal(RefusalReason.BAD_ESCAPE, "percent-escapes do not decode to UTF-8")
        caps: Caps = []
        leaf = walk(root, segs, 0, caps)
        return None if leaf is None else build_match(leaf, caps, segs)

    def in_api(self, raw_target: str) -> bool:
        """Is the path under relative URL root + API prefix (after slash squeezing)? A prefix
        spelled with `%2F` counts as inside, so the caller treats it as an API path with no
        route rather than as a non-API path."""
        path = _normalize(raw_target.partition("?")[0])
        if "%2" in path:
            path = _normalize(path.replace("%2F", "/").replace("%2f", "/"))
        prefix = self._prefix
        return not prefix or path == prefix or path.startswith(prefix + "/")

    def _segments(self, raw_target: str) -> list[str] | None:
        """Segments after the prefix (still encoded), or None outside the prefix or at its root."""
        start = self._start  # len(prefix) + 1
        if raw_target.startswith(self._prefix_slash):
            end = raw_target.find("?", start)
            rest = raw_target[start:] if end < 0 else raw_target[start:end]
            if rest and rest[0] != "/" and rest[-1] != "/" and "//" not in rest:
                return rest.split("/")
        end = raw_target.find("?")
        path = _normalize(raw_target if end < 0 else raw_target[:end])
        if not path.startswith(self._prefix_slash) or len(path) == start:
            return None
        return path[start:].split("/")

    # ---- analysis

    def overlaps(self) -> list[Overlap]:
        """Every pair of routes (same method) some path matches both ways, with a witness path
        from template intersection (not sampling) and the route `match` picks for it."""
        return find_overlaps(self)

    def target_kind(self, route: Route) -> TargetKind:
        return target_rule_for(route.path).kind

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)


def _check_supplementary(generated: list[Route], extra: list[Route], path: Path) -> None:
    """A supplementary route may not repeat a generated one (same method and template), nor
    another supplementary one; overlapping shapes are caught when the trie is built."""
    seen = {(route.method, route.path) for route in generated}
    for route in extra:
        key = (route.method, route.path)
        if key in seen:
            raise PolicyFileError(f"{path}: {route.name} conflicts with the generated route table")
        seen.add(key)


_SLASHES = re.compile("//+")
# After the prefix: a path of printable ASCII without `#`, `\` or `?`, starting with neither
# `.` nor `/` and not ending with `/`; then any query of printable ASCII without `#` and `\`.
# One character class, no group repeated per segment: `re` then needs no backtracking stack,
# and two substring tests in `match` rule out `//` and `/.` (empty and dot segments) for less.
_PATH = r"(?![./])([\x20-\x22\x24-\x3e\x40-\x5b\x5d-\x7e]++)(?<!/)"
_PLAIN_REST = _PATH + r"(?:\?[\x20-\x22\x24-\x5b\x5d-\x7e]*+)?"


# Stands for the literal `/` separators while `%2F` is decoded in `match`: a request-target
# that reaches that point has no control bytes.
SEPARATOR = "\x00"


def _normalize(path: str) -> str:
    """Grape::Router.normalize_path: squeeze `/`, strip trailing `/` (ruby-grape/grape router.rb)."""
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    return path
