"""GitLab's job-token route table, compiled once at start-up; `match` answers in about a microsecond.

CONTRACT (other modules rely on these names; the implementation below may change freely):
- `Route`, `Target`, `TargetKind`, `RouteMatch`, `Refusal`, `RefusalReason` as declared here.
- `RouteTable.load(path) -> RouteTable` (raises `PolicyFileError`), `RouteTable.compile(routes)`.
- `RouteTable.match(method, raw_target) -> RouteMatch | Refusal | None`: None = no route.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Refusal", "RefusalReason", "Route", "RouteMatch", "Target", "TargetKind"]


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
