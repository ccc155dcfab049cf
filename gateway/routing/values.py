"""The values the route table deals in: a `Route` (one row of GitLab's page), the `Target` a
request touches, and the `RouteMatch` that `RouteTable.match` returns.

All immutable: `Route` is a frozen, slotted dataclass built at start-up; `Target` and
`RouteMatch`, built per request, are NamedTuples (the cheapest immutable value to build, see
`trie.build_match`). Nothing compares them with plain tuples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

__all__ = [
    "METHODS",
    "Route",
    "RouteMatch",
    "RouteRule",
    "Target",
    "TargetKind",
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


class RouteRule(StrEnum):
    """How a route's job-token requests are decided (gateway/core/gate.py).

    `page`: the generated page's rule (policies, or allowlist only for its `None` rows).
    The others come from policies/routes-supplementary.yaml, each row citing GitLab's source:
    `allowlist`: GitLab accepts job tokens and checks the target's allowlist only (no
    fine-grained policy: like the page's `None` rows);
    `trigger`: `allowlist`, and a `token` that is not a job token is a trigger token
    (lib/api/ci/triggers.rb, Ci::PipelineTriggerService), forwarded unjudged;
    `runner_token`: the `token` parameter is a runner's credential and GitLab reads no job
    token there (lib/api/ci/runner.rb `authenticate_runner!`): forwarded unjudged;
    `own_job`: a job token acts on its own job only (lib/api/ci/helpers/runner.rb
    `authenticate_job!`), else GitLab's bare 403.
    """

    PAGE = "page"
    ALLOWLIST = "allowlist"
    TRIGGER = "trigger"
    RUNNER_TOKEN = "runner_token"  # noqa: S105 (a rule name, not a secret)
    OWN_JOB = "own_job"


class Target(NamedTuple):
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
    rule: RouteRule = RouteRule.PAGE
    # Workhorse takes the request body as an uploaded file (route_facts.WORKHORSE_BODY_FILES):
    # Rails never parses it for parameters, so the gateway does not inspect it.
    body_file: bool = False

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


class RouteMatch(NamedTuple):
    route: Route
    params: Mapping[str, str]  # decoded once
    target: Target
