"""GitLab's job-token authorization rules as pure functions; the gate gathers the facts.

No I/O, no clock, no store: the gate (gateway/core/gate.py) looks the facts up one at a time
and asks these functions after each, in this order:

    route_rule(rule, route, credential)                  the route's own rule, before any lookup
    judge_job(credential, job, target, access, now)      the token: invalid, revoked, expired
                                                         (401), the runner and trigger routes'
                                                         rules, the token's own project -> a
                                                         Decision, or the valid Job to go on with
    unresolved(credential, job, target, found, access)   no project to judge (none found, or no
                                                         such package) -> a Decision
    allowlist_of(job, accessed)                          whose allowlist decides (None: no need)
    decide(job, accessed, allowlist, access, audit)      the verdict on another project

The token's rules follow `Ci::AuthJobFinder` (app/finders/ci/auth_job_finder.rb),
`Gitlab::Auth::AuthFinders#find_user_from_job_token` (lib/gitlab/auth/auth_finders.rb) and,
on the runner routes, `authenticate_job!` (lib/api/ci/helpers/runner.rb); each line cites its
source. The rules and messages of `decide` follow GitLab:

- `Ci::JobToken::Scope#policies_allowed?` (app/models/ci/job_token/scope.rb): the job's own
  project is never restricted (`self_referential?`); an allowlist that is off ("All groups and
  projects") admits everyone without fine-grained checks; otherwise the source must be on the
  accessed project's allowlist, and its nearest entry either has `default_permissions` or grants
  every policy of the route (`(policies - scope.expanded_job_token_policies).empty?`).
- `API::Helpers#find_project!`, `#handle_job_token_failure!`,
  `#job_token_policies_unauthorized_message` (lib/api/helpers.rb): the order of the checks and
  the 403 texts; `forbidden!(reason)` renders `403 Forbidden - <reason>`.
- `skip_job_token_policies` routes (the page's `None`) get no policy check, but the allowlist
  still applies (`ProjectPolicy#project_allowed_for_job_token_by_scope`, app/policies/project_policy.rb).
- Cross-project git push: `ProjectPolicy#cross_project_push_allowed_for_job_token?`
  (app/policies/project_policy.rb) requires `project.ci_inbound_job_token_scope_enabled?` and
  `policies_allowed?(project, [:admin_repositories])`: never with the allowlist off.
- The instance setting `enforce_ci_inbound_job_token_scope_enabled` (application settings; on by
  the 18.0 migration `EnableCiJobTokenAllowlistSetting`) makes `Project
  #ci_inbound_job_token_scope_enabled?` true whatever the project says (spec/models/project_spec.rb
  "#ci_inbound_job_token_scope_enabled?"): `enforce_allowlist` mirrors it.
- Public and internal projects the allowlist does not admit: `gateway.core.visibility`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Protocol

from gateway.core import tokens, visibility
from gateway.core.decision import Audit, Decision, Reason, gitlab_message, make_audit, make_decision
from gateway.routing.values import RouteRule, TargetKind
from gateway.stores.grants import Allowlist, Job, Project, project_key

__all__ = [
    "Access",
    "Accessed",
    "Aim",
    "NoPackage",
    "accessed",
    "allow",
    "allowlist_of",
    "decide",
    "deny",
    "job_audit",
    "judge_job",
    "not_allowed_message",
    "route_rule",
    "target_audit",
    "to_sentence",
    "unresolved",
]

UNAUTHORIZED = gitlab_message(401)
FORBIDDEN = gitlab_message(403) + " - "  # followed by GitLab's reason
# Gitlab::GitAccess::ERROR_MESSAGES[:push_code] (lib/gitlab/git_access.rb)
PUSH_MESSAGE = "You are not allowed to push code to this project."
REGISTRY_MESSAGE = (
    "This project's CI/CD job token cannot be used to authenticate with the container registry "
    "of a different project."
)
# `forbidden!` without a reason (lib/api/ci/helpers/runner.rb `authenticate_job!`).
JOB_FORBIDDEN = gitlab_message(403)
NOT_PROCESSING = gitlab_message(403, "Job is not processing on runner")
UNRESOLVED = gitlab_message(
    403,
    "The gateway cannot tell which project's resources this endpoint returns, "
    "so CI/CD job tokens cannot use it.",
)
# GitLab's answer on the npm dist-tags routes when the namespace holds no such package:
# `not_found!('Project') unless project_id` (lib/api/helpers/packages/npm.rb, `project`);
# `not_found!(resource)` renders "404 <resource> Not Found" (lib/api/helpers.rb), not the
# "<status> <phrase> - <detail>" form of `gitlab_message`.
PROJECT_NOT_FOUND = "404 Project Not Found"
# The carriers GitLab's runner routes read a job token from: `params[:token] ||
# env['HTTP_JOB_TOKEN']` (lib/api/ci/helpers/runner.rb `job_token`).
_RUNNER_CARRIERS = frozenset({tokens.Carrier.TOKEN_PARAM, tokens.Carrier.JOB_TOKEN_HEADER})


class Aim(Protocol):
    """What a request touches, as far as the rules care: a route's `Target`
    (gateway/routing/values.py) or a package to find (gateway/stores/packages.py)."""

    @property
    def kind(self) -> TargetKind: ...

    @property
    def ref(self) -> str | None: ...


class NoPackage(Enum):
    """A group or instance package route whose package the lookup did not find
    (gateway/stores/packages.py `Miss`): what GitLab answers then."""

    # GitLab checks the package's project only `if package` (lib/api/maven_packages.rb,
    # npm_namespace_endpoints.rb): it answers 404 or forwards to the public registry.
    FORWARD = "forward"
    # npm dist-tags: `project` -> `not_found!('Project')`, no public-registry redirect
    # (lib/api/helpers/packages/npm.rb): GitLab's 404, answered by the gateway.
    PROJECT_NOT_FOUND = "project_not_found"


@dataclass(frozen=True, slots=True)
class Access:
    """What a request needs: the route's policies (AND), or a git-over-HTTP operation."""

    name: str
    permissions: tuple[str, ...] = ()
    controllable: bool = True
    own_project_only: bool = False
    git: bool = False
    push: bool = False  # git-receive-pack (and LFS uploads)
    # `allow_public_access_for_enabled_project_features` of the route (gateway.core.visibility)
    public_features: tuple[str, ...] = ()
    # How the route is decided beyond policies (RouteRule value; "page" for the page's rows).
    rule: str = "page"


class Accessed(NamedTuple):
    """The project a request touches, as named (`ref`) and as the store knows it (or not).

    A NamedTuple (immutable, equal by value), built once per request by `accessed`."""

    ref: str
    project: Project | None = None

    @property
    def label(self) -> str:
        """GitLab names the target `project #<id>`; an unknown path is shown as given."""
        project = self.project  # read once: a NamedTuple field read is not a slot's
        if project is not None:
            return f"#{project.id}"
        return f"#{self.ref}" if isinstance(project_key(self.ref), int) else self.ref

    def is_project(self, source: Project) -> bool:
        """Same project: numeric ids, or full paths case-insensitively (find_by_full_path)."""
        project = self.project
        if project is not None:
            return project.id == source.id
        key = project_key(self.ref)
        return key == source.id if isinstance(key, int) else key == source.key


def accessed(ref: str, project: Project | None) -> Accessed:
    """`Accessed(ref, project)` for the hot path (one per request): `tuple.__new__`, as in
    gateway/core/decision.py's hot-path constructors (~100 ns instead of ~200)."""
    return tuple.__new__(Accessed, (ref, project))


def deny(reason: Reason, message: str, audit: Audit) -> Decision:
    return make_decision(False, reason, message, audit)


def allow(reason: Reason, audit: Audit) -> Decision:
    return make_decision(True, reason, "", audit)


def to_sentence(words: Sequence[str]) -> str:
    """Ruby's Array#to_sentence: "a", "a and b", "a, b, and c"."""
    if len(words) <= 1:
        return "".join(words)
    if len(words) == 2:
        return f"{words[0]} and {words[1]}"
    return ", ".join(words[:-1]) + f", and {words[-1]}"


def decide(
    job: Job,
    accessed: Accessed,
    allowlist: Allowlist | None,
    access: Access,
    audit: Audit,
    *,
    enforce_allowlist: bool = False,
) -> Decision:
    """The verdict for `job` touching `accessed` through `access`.

    `allowlist` is the accessed project's inbound allowlist; None (a project the store does not
    know, or one without a configured allowlist) counts as enabled with no entries: fail closed.
    `enforce_allowlist` (GitLab's `enforce_ci_inbound_job_token_scope_enabled`) treats an
    allowlist that is off as on, with its entries.
    """
    if accessed.is_project(job.project):
        return allow(Reason.GIT_HTTP if access.git else Reason.OWN_PROJECT, audit)
    if access.own_project_only:
        return deny(Reason.REGISTRY_OTHER_PROJECT, FORBIDDEN + REGISTRY_MESSAGE, audit)
    if allowlist is not None and not allowlist.enabled and not enforce_allowlist:
        if access.push:
            # ProjectPolicy#cross_project_push_allowed_for_job_token?: the allowlist must be on.
            return deny(Reason.INSUFFICIENT_PERMISSIONS, FORBIDDEN + PUSH_MESSAGE, audit)
        return allow(Reason.GIT_HTTP if access.git else Reason.ALLOWLIST_DISABLED, audit)
    entry = allowlist.nearest(job.project) if allowlist is not None else None
    if entry is None:
        project = accessed.project
        if project is not None and project.public_or_internal:
            return _public(job, project, accessed, access, audit)
        return deny(Reason.NOT_ALLOWLISTED, FORBIDDEN + not_allowed_message(job, accessed), audit)
    granted = ("default_permissions",) if entry.default_permissions else entry.granted_sorted
    audit = audit.with_granted(granted)
    if not access.controllable:
        return allow(Reason.GIT_HTTP if access.git else Reason.UNCONTROLLED_ENDPOINT, audit)
    if entry.default_permissions:
        return allow(Reason.GIT_HTTP if access.git else Reason.DEFAULT_PERMISSIONS, audit)
    project = accessed.project
    if project is not None and visibility.publicly_accessible(project, access.public_features):
        # `job_token_policies_authorized?` asks `publicly_accessible_feature?` before the
        # entry's policies: an admitted source without them is allowed there too.
        return allow(Reason.PUBLIC_ACCESS, audit)
    return _policies(access, accessed, entry.granted, audit)


def not_allowed_message(job: Job, accessed: Accessed) -> str:
    """`API::Helpers#handle_job_token_failure!` (lib/api/helpers.rb):
    `format("Authentication by CI/CD job token not allowed from %{source_project_path} to project
    #%{target_project_id}.", source_project_path: source_project.path, …)`, where `path` is
    Rails' `Project#path`, the source's own path segment (`app` for `acme/app`)."""
    return (
        f"Authentication by CI/CD job token not allowed from {job.project.slug} "
        f"to project {accessed.label}."
    )


def _public(
    job: Job, project: Project, accessed: Accessed, access: Access, audit: Audit
) -> Decision:
    """A public or internal project whose allowlist does not admit the source
    (gateway.core.visibility has the rules and their sources)."""
    if access.git:
        if not access.push and visibility.readable_repository(project):
            return allow(Reason.PUBLIC_ACCESS, audit)  # build_download_code
        return deny(Reason.NOT_ALLOWLISTED, FORBIDDEN + not_allowed_message(job, accessed), audit)
    if not access.controllable:
        return allow(Reason.PUBLIC_ACCESS, audit)  # skip_job_token_policies
    if visibility.publicly_accessible(project, access.public_features):
        return allow(Reason.PUBLIC_ACCESS, audit)  # publicly_accessible_feature?
    # policies_allowed? is false outside the scope: job_token_policies_unauthorized_message
    return _policies(access, accessed, frozenset(), audit)


def _policies(
    access: Access, accessed: Accessed, granted: frozenset[str], audit: Audit
) -> Decision:
    required = access.permissions
    if not required:
        message = "This action is unauthorized for CI/CD job tokens."
        return deny(Reason.NO_PERMISSIONS_GRANTED, FORBIDDEN + message, audit)
    if all(permission in granted for permission in required):
        return allow(Reason.GIT_HTTP if access.git else Reason.POLICIES_GRANTED, audit)
    noun = "permission is" if len(required) == 1 else "permissions are"
    message = (
        f"Insufficient permissions to access this resource in project {accessed.label}. "
        f"The following token {noun} required: {to_sentence(required)}."
    )
    return deny(Reason.INSUFFICIENT_PERMISSIONS, FORBIDDEN + message, audit)


# ---- the token's rules, and a target with no project to judge


def route_rule(rule: RouteRule, route: str, credential: tokens.Credential) -> Decision | None:
    """A decision the route's rule makes before any lookup, else None."""
    if rule is RouteRule.RUNNER_TOKEN:
        # GitLab reads no job token on these routes: `token` is the runner's own credential
        # (lib/api/ci/helpers/runner.rb `current_runner` = Ci::Runner.find_by_token(params[:token]))
        return allow(Reason.RUNNER_TOKEN, Audit(credential.fingerprint, route=route))
    if rule is RouteRule.OWN_JOB and credential.carrier not in _RUNNER_CARRIERS:
        # `job_token` is `params[:token] || env['HTTP_JOB_TOKEN']`: a token anywhere else leaves
        # it empty, and `job.valid_token?("")` fails: `forbidden!` (authenticate_job!).
        audit = Audit(credential.fingerprint, route=route)
        return deny(Reason.JOB_TOKEN_MISMATCH, JOB_FORBIDDEN, audit)
    return None


def judge_job(
    credential: tokens.Credential, job: Job | None, target: Aim, access: Access, now: float
) -> Decision | Job:
    """The verdict the token alone decides, else its job (valid: go on to the target).

    `job` is what the store (or the upstream) knows of the token: None for nothing."""
    if access.rule != "page":
        ruled = _job_route(credential, job, target, access, now)
        if ruled is not None:
            return ruled
    if job is None:
        return deny(Reason.TOKEN_INVALID, UNAUTHORIZED, job_audit(credential, None, None, access))
    if job.revoked:
        # GitLab answers a token whose job may no longer use it (finished, erased) with the
        # same 401 as an unknown one: Ci::AuthJobFinder#validate_job! raises, and
        # Gitlab::Auth::AuthFinders#find_user_from_job_token turns that into UnauthorizedError
        # (app/finders/ci/auth_job_finder.rb, lib/gitlab/auth/auth_finders.rb). Same answer
        # here; only the log reason (`token_revoked`) tells the operator why.
        audit = job_audit(credential, job if job.job_id else None, None, access)
        return deny(Reason.TOKEN_REVOKED, UNAUTHORIZED, audit)
    if job.expired(now):
        return deny(Reason.TOKEN_EXPIRED, UNAUTHORIZED, job_audit(credential, job, None, access))
    kind = target.kind
    if kind is TargetKind.OWN:
        # The job's own project is never restricted (Ci::JobToken::Scope `self_referential?`).
        project = job.project
        audit = job_audit(credential, job, _label(project), access, project.id)
        return allow(Reason.OWN_PROJECT, audit)
    if kind is TargetKind.NONE and not access.permissions:
        return allow(Reason.UNCONTROLLED_ENDPOINT, job_audit(credential, job, None, access))
    return job


def unresolved(
    credential: tokens.Credential,
    job: Job,
    target: Aim,
    found: NoPackage | None,
    access: Access,
) -> Decision:
    """The verdict when no project can be judged: no such package (`found`), or a target the
    gateway cannot place (None): refused, never more permissive than GitLab."""
    audit = job_audit(credential, job, target.ref, access)
    if found is NoPackage.PROJECT_NOT_FOUND:
        return deny(Reason.PROJECT_NOT_FOUND, PROJECT_NOT_FOUND, audit)
    if found is NoPackage.FORWARD:
        return allow(Reason.PACKAGE_NOT_FOUND, audit)
    return deny(Reason.TARGET_UNRESOLVED, UNRESOLVED, audit)


def target_audit(
    credential: tokens.Credential, job: Job, accessed: Accessed, access: Access
) -> Audit:
    """The audit of `job` touching `accessed`, for `decide`."""
    project = accessed.project
    if project is not None:
        return job_audit(credential, job, _label(project), access, project.id)
    return job_audit(credential, job, accessed.ref, access)


def allowlist_of(job: Job, accessed: Accessed) -> int | None:
    """The project whose allowlist `decide` needs: a known project other than the job's own.
    None: no allowlist is read (the job's own project, or one the store does not know, which
    counts as an allowlist with no entries)."""
    project = accessed.project
    if project is not None and not accessed.is_project(job.project):
        return project.id
    return None


def job_audit(
    credential: tokens.Credential,
    job: Job | None,
    target: str | None,
    access: Access,
    target_id: int | None = None,
) -> Audit:
    """The audit of a job-token request: the token, its job and project (when known), the
    target as named, the route and what it requires."""
    fingerprint, route, required = credential.fingerprint, access.name, access.permissions
    if job is None:
        return make_audit(fingerprint, None, None, target, route, required, ())
    source = job.project.path or None
    source_id = job.project.id or None
    return make_audit(
        fingerprint, job.job_id, source, target, route, required, (), source_id, target_id
    )


def _job_route(
    credential: tokens.Credential, job: Job | None, target: Aim, access: Access, now: float
) -> Decision | None:
    """The trigger and own-job routes' rules once the job is known (None: decide as usual)."""
    if access.rule == RouteRule.TRIGGER.value:
        # A job the store knows (revoked or not) makes the value a job token: judged as usual.
        if job is not None or credential.carrier is not tokens.Carrier.TOKEN_PARAM:
            return None
        if tokens.JOB_TOKEN_PREFIX in credential.secret:
            # A job token GitLab does not know (`glcbt-`, or an instance's `<prefix>glcbt-`):
            # 401 as anywhere else. Trigger tokens are `glptt-` or 40 hex digits, never this.
            return None
        # Ci::PipelineTriggerService#execute tries `trigger_from_token` first: a `token` that
        # is no job token is a pipeline trigger token, GitLab's own credential to judge. A job
        # token goes on to `create_pipeline_from_job`: `can?(job.user, :read_project, project)`
        # under the job's token scope, i.e. the allowlist (app/services/ci/pipeline_trigger_service.rb).
        return allow(Reason.TRIGGER_TOKEN, job_audit(credential, None, target.ref, access))
    if access.rule != RouteRule.OWN_JOB.value:
        return None
    if job is None or job.revoked:
        # authenticate_job!: `forbidden! unless job.valid_token?(job_token)`: 403, not 401.
        audit = job_audit(credential, None, target.ref, access)
        return deny(Reason.JOB_TOKEN_MISMATCH, JOB_FORBIDDEN, audit)
    audit = job_audit(credential, job, target.ref, access)
    if target.ref != str(job.job_id):
        # The token belongs to another job than params[:id] (authenticate_job! /
        # job_from_token: `current_job == Ci::AuthJobFinder.new(token: job_token).execute!`).
        return deny(Reason.JOB_TOKEN_MISMATCH, JOB_FORBIDDEN, audit)
    if job.expired(now):
        # Its own job, no longer running: Ci::AuthJobFinder::NotRunningJobError ->
        # job_forbidden!(job, 'Job is not processing on runner').
        return deny(Reason.JOB_TOKEN_MISMATCH, NOT_PROCESSING, audit)
    return allow(Reason.OWN_JOB, audit)


def _label(project: Project) -> str:
    return f"#{project.id} {project.path}"
