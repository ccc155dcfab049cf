"""Grape path templates, as GitLab declares its API routes, parsed into segment shapes.

`parse_template("/projects/:id/packages/generic/:package_name/*package_version/(*path/):file_name")`
expands the optional groups and returns one `Template` per concrete shape, each a tuple of
`Segment`s the route trie compiles: literals, `:param`, `*splat`, and mixed segments such as
`:module_version.info` (a param with literal text in the same segment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

__all__ = ["PARAM_TOKEN", "Segment", "SegmentKind", "Template", "parse_template"]


class SegmentKind(IntEnum):
    """Per-segment specificity: lower wins (GitLab declares specific routes first)."""

    LITERAL = 0
    MIXED = 1  # a param with literal text in the same segment, e.g. `:module_version.info`
    PARAM = 2
    SPLAT = 3


@dataclass(frozen=True, slots=True)
class Segment:
    kind: SegmentKind
    text: str  # the template text of the segment
    names: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None  # MIXED only; fullmatch on the decoded segment

    def witness(self) -> str:
        """A concrete segment this element matches (params filled with `w`)."""
        if self.kind is SegmentKind.LITERAL:
            return self.text
        return PARAM_TOKEN.sub("w", self.text) if self.kind is SegmentKind.MIXED else "w"


@dataclass(frozen=True, slots=True)
class Template:
    """One concrete shape of a Grape template (optional groups expanded)."""

    segments: tuple[Segment, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for segment in self.segments for name in segment.names)

    def __str__(self) -> str:
        return "/" + "/".join(segment.text for segment in self.segments)


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
PARAM_TOKEN = re.compile(rf"[:*]{_NAME}")
_LITERAL_OK = re.compile(r"[A-Za-z0-9\-._~!$&'+,;=@]+")


def parse_template(template: str, spanning: frozenset[str] = frozenset()) -> tuple[Template, ...]:
    """Expand a Grape path template into its concrete shapes (sorted by their text).

    `:name` is one segment (or one or more when `name` is in `spanning`, for params GitLab
    declares with a `/.+/` requirement), `*name` one or more segments, `( ... )` optional.
    Raises ValueError
    for a template that is not a path, has unbalanced parentheses or an unsupported segment.
    A splat glued to literal text in one segment (`latest*suffix_path`, produced by
    `latest(/)(*suffix_path)`) is left out: that shape is refused (fail closed) rather than
    guessed; `latest` and `latest/*suffix_path` are kept.
    """
    if not template.startswith("/") or any(ch.isspace() for ch in template):
        raise ValueError(f"template must start with '/' and contain no spaces: {template!r}")
    shapes: dict[str, Template] = {}
    for expanded in _expand_optionals(template):
        text = re.sub("/+", "/", expanded).rstrip("/") or "/"
        parsed = _parse_shape(text, template, spanning)
        if parsed is not None:
            shapes.setdefault(str(parsed), parsed)
    if not shapes:
        raise ValueError(f"template has no supported shape: {template!r}")
    return tuple(sorted(shapes.values(), key=lambda shape: str(shape)))


def _expand_optionals(text: str) -> list[str]:
    """`a(b)c` -> [`abc`, `ac`]; nested and repeated groups expand recursively."""
    start = text.find("(")
    if start < 0:
        if ")" in text:
            raise ValueError(f"unbalanced ')' in template: {text!r}")
        return [text]
    depth = 0
    for end in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0:
            inner, rest = text[start + 1 : end], text[end + 1 :]
            tails = _expand_optionals(rest)
            heads = [text[:start] + option for option in [*_expand_optionals(inner), ""]]
            return [head + tail for head in heads for tail in tails]
    raise ValueError(f"unbalanced '(' in template: {text!r}")


def _parse_shape(text: str, template: str, spanning: frozenset[str]) -> Template | None:
    segments = []
    for part in text.strip("/").split("/") if text != "/" else []:
        segment = _parse_segment(part, template, spanning)
        if segment is None:
            return None
        segments.append(segment)
    if not segments:
        raise ValueError(f"template matches only the API root: {template!r}")
    return Template(tuple(segments))


def _parse_segment(part: str, template: str, spanning: frozenset[str]) -> Segment | None:
    whole = re.fullmatch(rf"([:*])({_NAME})", part)
    if whole is not None:
        single = whole.group(1) == ":" and whole.group(2) not in spanning
        kind = SegmentKind.PARAM if single else SegmentKind.SPLAT
        return Segment(kind, part, (whole.group(2),))
    tokens = PARAM_TOKEN.findall(part)
    if not tokens:
        if not _LITERAL_OK.fullmatch(part):
            raise ValueError(f"unsupported literal segment {part!r} in {template!r}")
        return Segment(SegmentKind.LITERAL, part)
    if any(token.startswith("*") for token in tokens):
        return None  # a splat glued to text: see parse_template
    return _mixed_segment(part, template)


def _mixed_segment(part: str, template: str) -> Segment:
    pattern, names, pos = "", [], 0
    for token in PARAM_TOKEN.finditer(part):
        literal = part[pos : token.start()]
        if not _LITERAL_OK.fullmatch(literal or "x"):
            raise ValueError(f"unsupported segment {part!r} in {template!r}")
        pattern += re.escape(literal) + "(.+?)"
        names.append(token.group()[1:])
        pos = token.end()
    if pattern.endswith("(.+?)") and pos == len(part) and len(names) > 1:
        raise ValueError(f"adjacent params cannot be split in {part!r} of {template!r}")
    pattern += re.escape(part[pos:])
    return Segment(SegmentKind.MIXED, part, tuple(names), re.compile(pattern, re.DOTALL))
