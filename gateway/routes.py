"""GitLab's job-token route table, compiled once at start-up; `match` answers in a few microseconds.

CONTRACT (other modules rely on these names; the implementation below may change freely):
- `Route`, `Target`, `TargetKind`, `RouteMatch`, `Refusal`, `RefusalReason` as declared here.
- `RouteTable.load(path) -> RouteTable` (raises `PolicyFileError`), `RouteTable.compile(routes)`.
- `RouteTable.match(method, raw_target) -> RouteMatch | Refusal | None`: None = no route.
- `RouteTable.in_api(raw_target) -> bool`; module-level `check_target(raw_target) -> Refusal | None`.
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
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.errors import PolicyFileError
from gateway.permissions import KNOWN_POLICIES

__all__ = [
    "METHODS",
    "Overlap",
    "Refusal",
    "RefusalReason",
    "Route",
    "RouteMatch",
    "RouteTable",
    "Target",
    "TargetKind",
    "Template",
    "check_target",
    "parse_template",
]

# Methods the page can list. HEAD never appears in GitLab's generated page (its HEAD twins are
# added at mount time, lib/tasks/ci/job_tokens_task.rb reads the declared routes).
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class TargetKind(StrEnum):
    PROJECT = "project"  # a project id or URL-encoded full path (decoded in `ref`)
    GROUP = "group"  # a group id or full path
    JOB = "job"  # a job id whose project owns the resource (e.g. GET /jobs/:id/artifacts)
    OWN = "own"  # the token's own job/project (GET /job)
    NONE = "none"  # instance endpoint that touches no project's resources (conan ping)
    UNRESOLVED = "unresolved"  # a project owns the resource but the URL does not say which


@dataclass(frozen=True, slots=True)
class Target:
    kind: TargetKind
    ref: str | None = None  # decoded id or full path, e.g. "42" or "group/sub/project"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # the Grape template exactly as GitLab writes it, without /api/:version
    permissions: tuple[str, ...]  # GitLab policy names, lower case, e.g. ("admin_deployments",)
    controllable: bool  # False for the page's `None` rows
    description: str
    own_project_only: bool = False  # GitLab's `job_token_scope: :project` (container registry)

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    params: Mapping[str, str]  # decoded once
    target: Target


class RefusalReason(StrEnum):
    NOT_ORIGIN_FORM = "not_origin_form"
    FRAGMENT = "fragment"
    CONTROL_BYTE = "control_byte"
    BACKSLASH = "backslash"
    DOT_SEGMENT = "dot_segment"
    BAD_ESCAPE = "bad_escape"
    DOUBLE_ENCODING = "double_encoding"
    ENCODED_UNRESERVED = "encoded_unreserved"
    NON_ASCII = "non_ascii"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefusalReason
    detail: str


# --------------------------------------------------------------------------- refusals

# Fast path: a target with none of these characters (and no `/.`) needs no further checks:
# anything outside printable ASCII, `#` (0x23), `%` (0x25), `\` (0x5C).
_SUSPECT = re.compile(r"[^\x20-\x22\x24\x26-\x5b\x5d-\x7e]")
# Raw bytes no request-target may carry: a fragment, C0 controls (incl. NUL) and DEL.
_RAW_BAD = re.compile(r"[\x00-\x1f\x7f#]")
_ENCODED_SUBSET = re.compile(r"%(?:(?P<control>[01][0-9A-Fa-f]|7[Ff])|(?P<backslash>5[Cc]))")
_ENCODED_STRICT = re.compile(
    r"%(?:(?P<bad>(?![0-9A-Fa-f]{2}).{0,2})"
    r"|(?P<double>25[0-9A-Fa-f]{2})"
    # A-Z a-z 0-9 - . _ ~ : Mustermann matches literals against their encoded forms and the
    # upstream may decode them, so `%61pi` is `api` to one reader and not to another.
    r"|(?P<unreserved>[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DEde]|5[Ff]|7[Ee]))",
    re.DOTALL,
)
# A `.` or `..` segment in any spelling: raw, `%2e`, double-encoded `%252e` (any depth), ended
# by `/`, `;` (path parameters: `..;x`, Tomcat and others), their encodings, or the end; also
# after an encoded slash (`a%2F..%2Fb`), which a reader that decodes `%2F` sees as a segment.
_DOT = r"(?:\.|%(?:25)*2[Ee])"
_SEP = r"(?:/|%(?:25)*2[Ff])"
_DOT_SEGMENT = re.compile(rf"{_SEP}{_DOT}{{1,2}}(?=$|/|;|%(?:25)*(?:2[Ff]|3[Bb]))")


def _may_have_dots(path: str) -> bool:
    """Cheap pre-filter for _DOT_SEGMENT (substring tests beat a regex alternation here)."""
    return (
        "/." in path
        or "%2e" in path
        or "%2E" in path
        or "%25" in path
        or "F." in path
        or "f." in path
    )


# Second-level fast path for targets with `%` or `/.`: anything but printable ASCII other than
# `#` and `\\` needs the full classification, and so does any escape `match` refuses.
_HARD = re.compile(r"[^\x20-\x22\x24-\x5b\x5d-\x7e]")
_ANY_BAD_ESCAPE = re.compile(
    r"%(?:(?![0-9A-Fa-f]{2})|[01][0-9A-Fa-f]|7[Ff]|5[Cc]|25[0-9A-Fa-f]{2}"
    r"|[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DEde]|5[Ff]|7[Ee])"
)

_DOTS = (".", "..")
_DECODE_ROUNDS = 5  # nesting deeper than this is refused by `match` (double encoding) anyway

_REASONS = {
    "control": (RefusalReason.CONTROL_BYTE, "percent-encoded control byte"),
    "backslash": (RefusalReason.BACKSLASH, "percent-encoded backslash"),
    "bad": (RefusalReason.BAD_ESCAPE, "invalid percent-escape"),
    "double": (RefusalReason.DOUBLE_ENCODING, "double encoding"),
    "unreserved": (RefusalReason.ENCODED_UNRESERVED, "encoded unreserved character"),
}


def check_target(raw_target: str) -> Refusal | None:
    """The refusals that apply to EVERY request, with or without a token.

    Returns a Refusal for: a target not in origin-form (absolute-form, `*`, empty), `#`
    anywhere, raw control bytes (C0, DEL) anywhere, backslash in the path (raw or `%5C`),
    percent-encoded control bytes in the path, and dot segments in the path in any spelling
    (`.`, `..`, `%2e`, `.%2E`, double-encoded `%252e`, path-parameter forms `..;x`, and dots
    behind an encoded slash `a%2F..%2Fb`). Otherwise None. The query is only checked for raw
    bytes: encoded newlines are ordinary in query values.
    """
    if not raw_target.startswith("/"):
        return Refusal(RefusalReason.NOT_ORIGIN_FORM, "request-target must start with '/'")
    if _SUSPECT.search(raw_target) is None and "/." not in raw_target:
        return None
    return _subset_refusal(raw_target)


def _subset_refusal(raw_target: str) -> Refusal | None:
    bad = _RAW_BAD.search(raw_target)
    if bad is not None:
        if bad.group() == "#":
            return Refusal(RefusalReason.FRAGMENT, "'#' is not allowed in a request-target")
        return Refusal(RefusalReason.CONTROL_BYTE, f"raw control byte {bad.group()!r}")
    path = raw_target.partition("?")[0]
    if "\\" in path:
        return Refusal(RefusalReason.BACKSLASH, "backslash in the path")
    refusal = _encoded(_ENCODED_SUBSET, path)
    if refusal is not None:
        return refusal
    dots = _DOT_SEGMENT.search(path) if _may_have_dots(path) else None
    if dots is not None:
        segment = dots.group().lstrip("/")
        return Refusal(RefusalReason.DOT_SEGMENT, f"dot segment {segment!r} in the path")
    if "%" in path and _ANY_BAD_ESCAPE.search(path) is not None:
        # Only an escape of `%`, of a digit or letter, or a malformed one can hide a nested
        # encoding (`%25%32%65` -> `%2e` -> `.`; `%2%65` -> `%2e` to a lenient decoder): the
        # IIS double-decoding class (CVE-2001-0333).
        for segment in path.split("/"):
            refusal = _nested(segment) if "%" in segment else None
            if refusal is not None:
                return refusal
    return None


def _nested(segment: str) -> Refusal | None:
    """What `segment` hides from a reader that decodes again and again (leniently: malformed
    escapes kept, as many decoders do): a `.`/`..` piece between `/` or `\\` (before any `;`),
    a backslash or a control byte."""
    text = segment
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(text)
        if decoded == text:
            return None
        text = decoded
        if any(piece.partition(";")[0] in _DOTS for piece in re.split(r"[/\\]", text)):
            return Refusal(
                RefusalReason.DOT_SEGMENT, f"encoded dot segment {segment!r} in the path"
            )
        if "\\" in text:
            return Refusal(RefusalReason.BACKSLASH, f"encoded backslash in {segment!r}")
        if _RAW_BAD.search(text.replace("#", "")) is not None:
            return Refusal(RefusalReason.CONTROL_BYTE, f"encoded control byte in {segment!r}")
    return None


def _strict_refusal(raw_target: str) -> Refusal | None:
    """`check_target`, then the checks `match` adds (encodings the upstream may read otherwise)."""
    if not raw_target.startswith("/"):
        return Refusal(RefusalReason.NOT_ORIGIN_FORM, "request-target must start with '/'")
    if _SUSPECT.search(raw_target) is None and "/." not in raw_target:
        return None
    return _strict_slow(raw_target)


def _strict_slow(raw_target: str) -> Refusal | None:
    """`_strict_refusal` for a target the first fast path could not clear."""
    if raw_target[:1] == "/" and _strictly_clean(raw_target):
        return None
    refusal = check_target(raw_target)
    if refusal is not None:
        return refusal
    if not raw_target.isascii():
        return Refusal(RefusalReason.NON_ASCII, "non-ASCII bytes must be percent-encoded")
    return _encoded(_ENCODED_STRICT, raw_target.partition("?")[0])


def _strictly_clean(raw_target: str) -> bool:
    """True when none of `match`'s refusals can apply (one C-level scan per concern)."""
    if _HARD.search(raw_target) is not None:
        return False
    end = raw_target.find("?")
    path = raw_target if end < 0 else raw_target[:end]
    if "%" in path and _ANY_BAD_ESCAPE.search(path) is not None:
        return False
    return not (_may_have_dots(path) and _DOT_SEGMENT.search(path) is not None)


def _encoded(pattern: re.Pattern[str], path: str) -> Refusal | None:
    found = pattern.search(path) if "%" in path else None
    if found is None or found.lastgroup is None:
        return None
    reason, what = _REASONS[found.lastgroup]
    return Refusal(reason, f"{what} {found.group()!r} in the path")


# --------------------------------------------------------------------------- templates


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
        return _PARAM_TOKEN.sub("w", self.text) if self.kind is SegmentKind.MIXED else "w"


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
_PARAM_TOKEN = re.compile(rf"[:*]{_NAME}")
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
    tokens = _PARAM_TOKEN.findall(part)
    if not tokens:
        if not _LITERAL_OK.fullmatch(part):
            raise ValueError(f"unsupported literal segment {part!r} in {template!r}")
        return Segment(SegmentKind.LITERAL, part)
    if any(token.startswith("*") for token in tokens):
        return None  # a splat glued to text: see parse_template
    return _mixed_segment(part, template)


def _mixed_segment(part: str, template: str) -> Segment:
    pattern, names, pos = "", [], 0
    for token in _PARAM_TOKEN.finditer(part):
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


# --------------------------------------------------------------------------- GitLab facts


class Derive(StrEnum):
    PARAM = "param"  # the decoded parameter as is
    CONAN_USERNAME = "conan_username"  # `+` stands for `/` in the recipe username
    MAVEN_PATH = "maven_path"  # the full path is the package path minus its last segment


@dataclass(frozen=True, slots=True)
class TargetRule:
    """Which resource a route touches: templates starting with `prefix` (whole segments)."""

    prefix: str
    kind: TargetKind
    param: str | None = None
    derive: Derive = Derive.PARAM

    def applies_to(self, template: str) -> bool:
        return template == self.prefix or template.startswith(self.prefix + "/")

    def resolve(self, params: Mapping[str, str]) -> Target:
        if self.param is None:
            return Target(self.kind)
        value = params[self.param]
        if self.derive is Derive.CONAN_USERNAME:
            value = value.replace("+", "/")
        elif self.derive is Derive.MAVEN_PATH:
            value = value.rpartition("/")[0]
            if not value:  # GitLab finds no project and answers 403
                return Target(TargetKind.UNRESOLVED)
        return Target(self.kind, value)


_CONAN_RECIPE = ":package_name/:package_version/:package_username/:package_channel"

# First rule whose prefix matches the template wins; no rule = UNRESOLVED (deny-worthy).
TARGET_RULES: tuple[TargetRule, ...] = (
    # find_project(id): numeric id or URL-encoded full path (lib/api/helpers.rb; id requirement
    # NAMESPACE_OR_PROJECT_REQUIREMENTS in lib/api/api.rb). Groups: find_group, same rule.
    TargetRule("/projects/:id", TargetKind.PROJECT, "id"),
    TargetRule("/groups/:id", TargetKind.GROUP, "id"),
    # Composer's group endpoints live under the singular `group` (lib/api/composer_packages.rb).
    TargetRule("/group/:id", TargetKind.GROUP, "id"),
    # GET /jobs/:id/artifacts: authorize_job_token_policies!(current_job.project) (lib/api/ci/jobs.rb).
    TargetRule("/jobs/:id", TargetKind.JOB, "id"),
    # GET /job, /job/allowed_agents: the token's own job (lib/api/ci/jobs.rb, current_authenticated_job).
    TargetRule("/job", TargetKind.OWN),
    # Conan v1 instance routes: ApiHelpers#project -> find_project!(Metadatum.full_path_from(
    # package_username: ...)) = package_username.tr('+', '/')
    # (lib/api/helpers/packages/conan/api_helpers.rb, app/models/packages/conan/metadatum.rb).
    TargetRule(
        f"/packages/conan/v1/conans/{_CONAN_RECIPE}",
        TargetKind.PROJECT,
        "package_username",
        Derive.CONAN_USERNAME,
    ),
    TargetRule(
        f"/packages/conan/v1/files/{_CONAN_RECIPE}",
        TargetKind.PROJECT,
        "package_username",
        Derive.CONAN_USERNAME,
    ),
    # Conan ping, authenticate, check_credentials and instance search touch no project
    # (`None` rows: skip_job_token_policies, lib/api/concerns/packages/conan_endpoints.rb).
    TargetRule("/packages/conan/v1/ping", TargetKind.NONE),
    TargetRule("/packages/conan/v1/users", TargetKind.NONE),
    TargetRule("/packages/conan/v1/conans/search", TargetKind.NONE),
    # Maven instance download: find_project_by_path(path) = Project.find_by_full_path(
    # path.rpartition('/').first), then authorize_job_token_policies!(project)
    # (lib/api/maven_packages.rb, pavankalisetti009/gitlab @ 9d03265f).
    TargetRule("/packages/maven/*path/:file_name", TargetKind.PROJECT, "path", Derive.MAVEN_PATH),
    # :id is a DastSiteValidation id, not a project (ee/lib/api/internal/app_sec/dast/site_validations.rb).
    TargetRule("/internal/dast/site_validations", TargetKind.UNRESOLVED),
    # npm instance routes find the project from the package name in the database
    # (lib/api/npm_instance_packages.rb): no rule, so UNRESOLVED.
)

# Params GitLab declares with `requirements: { ref_name: /.+/ }`: they may span segments
# (`jobs/artifacts/feature/x/download`), so they compile like splats (lib/api/ci/job_artifacts.rb).
SPANNING_PARAMS: Mapping[str, frozenset[str]] = {
    "/projects/:id/jobs/artifacts/:ref_name/download": frozenset({"ref_name"}),
    "/projects/:id/jobs/artifacts/:ref_name/raw/*artifact_path": frozenset({"ref_name"}),
}

# Container registry routes are `job_token_scope: :project`: a job token may only reach its
# own project (lib/api/project_container_repositories.rb, `route_setting :authentication,
# job_token_allowed: true, job_token_scope: :project`).
OWN_PROJECT_ONLY_PREFIXES: tuple[str, ...] = ("/projects/:id/registry/repositories",)


def target_rule_for(template: str) -> TargetRule:
    """The rule deriving the target of `template`'s requests (UNRESOLVED when none applies)."""
    for rule in TARGET_RULES:
        if rule.applies_to(template):
            return rule
    return TargetRule(template, TargetKind.UNRESOLVED)


def is_own_project_only(template: str) -> bool:
    return any(
        TargetRule(prefix, TargetKind.PROJECT).applies_to(template)
        for prefix in OWN_PROJECT_ONLY_PREFIXES
    )


# --------------------------------------------------------------------------- the route file


class RouteEntry(BaseModel):
    """One row of policies/routes.yaml (generated by `policies import`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(pattern=r"^/\S*$")
    permissions: list[str]
    controllable: bool
    description: str = Field(min_length=1)

    @field_validator("permissions")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - KNOWN_POLICIES)
        if unknown:
            raise ValueError(f"unknown GitLab job-token policy {', '.join(unknown)}")
        return value

    def to_route(self) -> Route:
        if self.controllable != bool(self.permissions):
            raise ValueError("controllable must be true exactly when permissions are listed")
        return Route(
            method=self.method,
            path=self.path,
            permissions=tuple(self.permissions),
            controllable=self.controllable,
            description=self.description,
            own_project_only=is_own_project_only(self.path),
        )


class RouteFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    source: str
    page_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    routes: list[RouteEntry] = Field(min_length=1)


# --------------------------------------------------------------------------- the table


@dataclass(slots=True)
class _Leaf:
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


def _result(leaf: _Leaf, caps: _Caps, segs: list[str]) -> RouteMatch:
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
# Captures in path order: a param's decoded text, or a splat's (start, end) segment span.
_Caps = list[str | tuple[int, int]]


@dataclass(slots=True, eq=False)
class _Node:
    literal: dict[str, _Node] = field(default_factory=dict)
    mixed: list[tuple[re.Pattern[str], _Node]] = field(default_factory=list)
    param: _Node | None = None
    splat: _Node | None = None
    leaf: _Leaf | None = None
    mode: int = _BRANCHING  # set by `seal` once the trie is built
    min_rest: int = 0  # fewest segments a route below needs from here (set by `seal`)
    max_rest: int = _UNBOUNDED  # most segments (unbounded below a splat)

    def seal(self) -> None:
        """Record, bottom-up, whether this node offers a single way on (see `_walk`) and how
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

    def children(self) -> Iterator[_Node]:
        yield from self.literal.values()
        yield from (child for _, child in self.mixed)
        yield from (child for child in (self.param, self.splat) if child is not None)

    def child(self, segment: Segment) -> _Node:
        if segment.kind is SegmentKind.LITERAL:
            return self.literal.setdefault(segment.text, _Node())
        if segment.kind is SegmentKind.PARAM:
            self.param = self.param or _Node()
            return self.param
        if segment.kind is SegmentKind.SPLAT:
            self.splat = self.splat or _Node()
            return self.splat
        assert segment.regex is not None
        for regex, node in self.mixed:
            if regex.pattern == segment.regex.pattern:
                return node
        self.mixed.append((segment.regex, _Node()))
        # longer literal text first: `:v.info` before a hypothetical `:v.o`
        self.mixed.sort(key=lambda item: (-len(item[0].pattern), item[0].pattern))
        return self.child(segment)


@dataclass(frozen=True, slots=True)
class Overlap:
    """Two routes of one method that some path matches both ways."""

    first: Route
    second: Route
    witness: str  # a path (after the prefix) that both templates match
    winner: Route | None  # what `match` picks for the witness
    significant: bool  # different permissions, controllable, own-project-only or target kind


def _walk(node: _Node, segs: list[str], i: int, caps: _Caps) -> _Leaf | None:
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


def _json_literal(node: _Node, segs: list[str], i: int) -> _Leaf | None:
    """Grape appends `(.json)` to every route of a single-format API (lib/grape/path.rb)."""
    seg = segs[i]
    if i + 1 == len(segs) and seg.endswith(".json"):
        child = node.literal.get(seg[:-5])
        if child is not None:
            return child.leaf
    return None


def _branch(node: _Node, segs: list[str], i: int, caps: _Caps) -> _Leaf | None:
    """A node with alternatives: literal > literal.json > mixed > param > splat."""
    mark = len(caps)
    child = node.literal.get(segs[i])
    if child is not None:
        found = _walk(child, segs, i + 1, caps)
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
        found = _walk(node.param, segs, i + 1, caps)
        if found is not None:
            return found
        del caps[mark:]
    return _walk_splat(node.splat, segs, i, caps) if node.splat is not None else None


def _walk_mixed(node: _Node, segs: list[str], i: int, caps: _Caps) -> _Leaf | None:
    seg = segs[i]
    for regex, child in node.mixed:
        hit = regex.fullmatch(seg)
        if hit is not None:
            values = hit.groups()
            mark = len(caps)
            caps.extend(values)
            found = _walk(child, segs, i + 1, caps)
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


def _walk_splat(node: _Node, segs: list[str], i: int, caps: _Caps) -> _Leaf | None:
    """Lazy like Mustermann's `.*?`: the fewest segments that let the rest match.

    Only the ends the rest of the trie can complete are tried (`node.min_rest`..`max_rest`
    segments must remain), and the capture is a (start, end) span joined once at the end: a
    long path costs linear time, not quadratic (tests/security/test_redos.py).
    """
    n = len(segs)
    mark = len(caps)
    for end in range(max(i + 1, n - node.max_rest), n - node.min_rest + 1):
        caps.append((i, end))
        found = _walk(node, segs, end, caps)
        if found is not None:
            return found
        del caps[mark:]
    return None


class RouteTable:
    """The compiled route table. Build with `load` or `compile`; immutable afterwards."""

    __slots__ = ("_plain", "_prefix", "_prefix_slash", "_roots", "_start", "routes", "shapes")

    def __init__(self, routes: tuple[Route, ...], prefix: str) -> None:
        self.routes = routes
        self._prefix = prefix
        self._prefix_slash = prefix + "/"
        self._start = len(prefix) + 1
        self._plain = re.compile(re.escape(self._prefix_slash) + _PLAIN_REST)
        self._roots: dict[str, _Node] = {}
        self.shapes: dict[Route, tuple[Template, ...]] = {}
        for route in routes:
            self._add(route)
        for root in self._roots.values():
            root.seal()

    # ---- construction

    @classmethod
    def load(
        cls, path: Path | str, *, api_prefix: str = "/api/v4", relative_url_root: str = ""
    ) -> RouteTable:
        """Read, validate and compile a route file. Raises PolicyFileError naming the file,
        the line and the entry (`routes[3] GET /x`) when anything is wrong."""
        path = Path(path)
        data = _read_yaml(path)
        try:
            parsed = RouteFile.model_validate(data)
            routes = [
                _entry_route(path, data, index, entry) for index, entry in enumerate(parsed.routes)
            ]
        except ValidationError as exc:
            raise PolicyFileError(_describe(path, data, exc)) from None
        return cls.compile(
            routes, api_prefix=api_prefix, relative_url_root=relative_url_root, source=str(path)
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
            node = self._roots.setdefault(route.method, _Node())
            for segment in shape.segments:
                node = node.child(segment)
            if node.leaf is not None and node.leaf.route is not route:
                raise ValueError(f"{route.name} and {node.leaf.route.name} match the same paths")
            spans = any(segment.kind is SegmentKind.SPLAT for segment in shape.segments)
            node.leaf = node.leaf or _Leaf(route, shape.names, rule, spans=spans)

    # ---- matching

    @property
    def prefix(self) -> str:
        return self._prefix

    def match(self, method: str, raw_target: str) -> RouteMatch | Refusal | None:
        """Match a request. `raw_target` is the raw request-target (percent-encoded, maybe with
        a query) exactly as received. Returns a Refusal for ambiguous forms, None when no route
        matches (wrong method, unknown path, not under the prefix), else the RouteMatch."""
        root = self._roots.get("GET" if method == "HEAD" else method)
        # Fast path, a few C-level scans: a path under the prefix with no `#`, `\`, controls,
        # non-ASCII, dot segments, slashes to squeeze or escapes `match` refuses.
        plain = self._plain.fullmatch(raw_target)
        if plain is None or root is None:
            return self._match_slow(root, raw_target)
        rest = plain.group(1)
        segs = rest.split("/")
        if "%" in rest:
            if _ANY_BAD_ESCAPE.search(rest) is not None or "F." in rest or "f." in rest:
                return self._match_slow(root, raw_target)  # refused, or dots behind `%2F`
            try:
                segs = [_decode(seg) if "%" in seg else seg for seg in segs]
            except UnicodeDecodeError:
                return Refusal(RefusalReason.BAD_ESCAPE, "percent-escapes do not decode to UTF-8")
        caps: _Caps = []
        leaf = _walk(root, segs, 0, caps)
        return None if leaf is None else _result(leaf, caps, segs)

    def _match_slow(self, root: _Node | None, raw_target: str) -> RouteMatch | Refusal | None:
        """`match` for targets that need refusal checks, normalization or decoding."""
        refusal = _strict_refusal(raw_target)
        if refusal is not None:
            return refusal
        segs = self._segments(raw_target) if root is not None else None
        if root is None or segs is None:
            return None
        if "%" in raw_target:
            try:
                segs = [_decode(seg) if "%" in seg else seg for seg in segs]
            except UnicodeDecodeError:
                return Refusal(RefusalReason.BAD_ESCAPE, "percent-escapes do not decode to UTF-8")
        caps: _Caps = []
        leaf = _walk(root, segs, 0, caps)
        return None if leaf is None else _result(leaf, caps, segs)

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
        found = []
        for method in METHODS:
            routes = [route for route in self.routes if route.method == method]
            for index, first in enumerate(routes):
                for second in routes[index + 1 :]:
                    witness = self._common_path(first, second)
                    if witness is not None:
                        found.append(self._overlap(first, second, witness))
        return found

    def _common_path(self, first: Route, second: Route) -> str | None:
        for one in self.shapes[first]:
            for other in self.shapes[second]:
                segments = _intersect(one.segments, other.segments)
                if segments is not None:
                    return "/" + "/".join(segments)
        return None

    def _overlap(self, first: Route, second: Route, witness: str) -> Overlap:
        matched = self.match(first.method, self._prefix + witness)
        winner = matched.route if isinstance(matched, RouteMatch) else None
        kind_one, kind_two = (target_rule_for(route.path).kind for route in (first, second))
        significant = (
            set(first.permissions) != set(second.permissions)
            or first.controllable != second.controllable
            or first.own_project_only != second.own_project_only
            or kind_one != kind_two
        )
        return Overlap(first, second, witness, winner, significant)

    def target_kind(self, route: Route) -> TargetKind:
        return target_rule_for(route.path).kind

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)


_SLASHES = re.compile("//+")
# After the prefix: non-empty segments of printable ASCII without `#`, `\`, `?`, none starting
# with `.` (no dot segment, no empty segment, no trailing slash); then any query of printable
# ASCII without `#` and `\`. Possessive: a target that does not fit fails in one pass.
_PLAIN_SEGMENT = r"(?!\.)[\x20-\x22\x24-\x2e\x30-\x3e\x40-\x5b\x5d-\x7e]++"
_PLAIN_REST = rf"({_PLAIN_SEGMENT}(?:/{_PLAIN_SEGMENT})*+)(?:\?[\x20-\x22\x24-\x5b\x5d-\x7e]*+)?"
# `%XX` -> character for ASCII bytes, both hex cases; `match` has refused malformed escapes.
_ASCII_ESCAPES = {
    f"{byte:02{case}}"[:1] + f"{byte:02{case2}}"[1:]: chr(byte)
    for byte in range(0x80)
    for case in "xX"
    for case2 in "xX"
}


def _decode(segment: str) -> str:
    """Percent-decode one segment exactly once (UTF-8, strict); faster than `unquote` for ASCII."""
    if "%2" in segment:  # `%2F` (group paths, npm scopes) first: str.replace is C-fast
        segment = segment.replace("%2F", "/").replace("%2f", "/")
        if "%" not in segment:
            return segment
    head, *rest = segment.split("%")
    out = [head]
    for part in rest:
        char = _ASCII_ESCAPES.get(part[:2])
        if char is None:  # a non-ASCII byte: let the standard decoder check the UTF-8
            return unquote(segment, errors="strict")
        out.append(char)
        out.append(part[2:])
    return "".join(out)


def _normalize(path: str) -> str:
    """Grape::Router.normalize_path: squeeze `/`, strip trailing `/` (ruby-grape/grape router.rb)."""
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    return path


# --------------------------------------------------------------------------- intersection

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
    heads = [_PARAM_TOKEN.split(segment.text)[0] for segment in (one, two)]
    tails = [_PARAM_TOKEN.split(segment.text)[-1] for segment in (one, two)]
    combined = max(heads, key=len) + "w" + max(tails, key=len)
    for candidate in (one.witness(), two.witness(), combined):
        if one.regex.fullmatch(candidate) and two.regex.fullmatch(candidate):
            return candidate
    return None


# --------------------------------------------------------------------------- file helpers


# libyaml's safe loader when PyYAML has it (10x faster start-up), else the pure-Python one.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"{path}: cannot read route file: {exc}") from None
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 (a safe loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f"{mark.line + 1}" if mark is not None else "?"
        raise PolicyFileError(f"{path}:{line}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyFileError(f"{path}: invalid YAML: {exc}") from None


def _entry_route(path: Path, data: Any, index: int, entry: RouteEntry) -> Route:
    try:
        return entry.to_route()
    except ValueError as exc:
        raise PolicyFileError(f"{_where(path, data, index)}: {exc}") from None


def _describe(path: Path, data: Any, exc: ValidationError) -> str:
    """First problem of a validation error as one line: file:line: routes[i] (GET /x): field: msg."""
    error = exc.errors()[0]
    loc = list(error["loc"])
    if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
        where = _where(path, data, loc[1])
        field_name = ".".join(str(part) for part in loc[2:]) or "entry"
        return f"{where}: {field_name}: {error['msg']}"
    field_name = ".".join(str(part) for part in loc) or "file"
    return f"{path}: {field_name}: {error['msg']}"


def _where(path: Path, data: Any, index: int) -> str:
    entry = (
        data["routes"][index]
        if isinstance(data, dict) and isinstance(data.get("routes"), list)
        else None
    )
    label = f"routes[{index}]"
    if isinstance(entry, dict):
        label += f" ({entry.get('method', '?')} {entry.get('path', '?')})"
    line = _entry_line(path, index)
    return f"{path}:{line}: {label}" if line else f"{path}: {label}"


def _entry_line(path: Path, index: int) -> int | None:
    """1-based line of routes[index] in the file (re-reads it: only on the error path)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if (
            key.value == "routes"
            and isinstance(value, yaml.SequenceNode)
            and index < len(value.value)
        ):
            return int(value.value[index].start_mark.line) + 1
    return None
