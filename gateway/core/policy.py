"""GitLab's job-token authorization rules as one pure function: `decide(...) -> Decision`.

No I/O, no clock, no store: the gate resolves the job, the accessed project and its allowlist
first and hands them in. The rules and messages follow GitLab:

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
from typing import NamedTuple

from gateway.core import visibility
from gateway.core.decision import Audit, Decision, Reason, make_decision
from gateway.stores.grants import Allowlist, Job, Project, project_key

__all__ = [
    "Access",
    "Accessed",
    "accessed",
    "allow",
    "decide",
    "deny",
    "not_allowed_message",
    "to_sentence",
]

UNAUTHORIZED = "401 Unauthorized"
FORBIDDEN = "403 Forbidden - "
# Gitlab::GitAccess::ERROR_MESSAGES[:push_code] (lib/gitlab/git_access.rb)
PUSH_MESSAGE = "You are not allowed to push code to this project."
REGISTRY_MESSAGE = (
    "This project's CI/CD job token cannot be used to authenticate with the container registry "
    "of a different project."
)


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
