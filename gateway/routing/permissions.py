"""GitLab's job-token policy names: the only values a route may require or a grant may carry.

Source: `Ci::JobToken::Policies::POLICIES` in GitLab's `lib/ci/job_token/policies.rb`.
- gitlabhq/gitlabhq @ de09f039: read_/admin_ for containers, deployments, environments, jobs,
  packages, releases, secure_files, terraform_state.
- pavankalisetti009/gitlab @ 28bc3f6f: the above plus read_/admin_pipelines.
- gitlabhq/gitlabhq @ 017a6c12: adds read_merge_requests, read_repositories, read_work_items and
  moves read_/admin_containers to `DEPRECATED_POLICIES` (kept here: older pages and stored
  allowlist entries still carry them).
- skratsch-solutions/gitlabhq `doc/ci/jobs/fine_grained_permissions.md` @ 008551ba: READ_BADGES,
  ADMIN_BADGES ("Badges endpoints").
- skratsch-solutions/gitlabhq `doc/ci/jobs/fine_grained_permissions.md` @ b3c84db4 (the current
  page, tests/fixtures/pages/): uses read_/admin_pipelines, read_merge_requests,
  read_repositories, read_work_items and no name outside this set.
- `admin_repositories`: ProjectPolicy#cross_project_push_allowed_for_job_token? checks
  `policies_allowed?(project, [:admin_repositories])` (git push with a job token).
A name outside this set is an error in a route file or a grant: GitLab's own doc generator
fails the same way (`ci:job_tokens:check_policies_correctness`, lib/tasks/ci/job_tokens_task.rb).
"""

from __future__ import annotations

__all__ = ["KNOWN_POLICIES", "humanize"]

_READ_ADMIN = (
    "badges",
    "containers",
    "deployments",
    "environments",
    "jobs",
    "packages",
    "pipelines",
    "releases",
    "repositories",
    "secure_files",
    "terraform_state",
)
_READ_ONLY = ("merge_requests", "work_items")

KNOWN_POLICIES: frozenset[str] = frozenset(
    [f"{level}_{category}" for category in _READ_ADMIN for level in ("read", "admin")]
    + [f"read_{category}" for category in _READ_ONLY]
)


def humanize(policy: str) -> str:
    """The page's "Permissions" text for a policy, e.g. `admin_secure_files` -> "Secure files:
    Read and write" (GitLab's doc template: `category.humanize`, admin = "Read and write").

    Raises ValueError for a name that is not `read_*` or `admin_*`.
    """
    level, sep, category = policy.partition("_")
    if not sep or level not in ("read", "admin") or not category:
        raise ValueError(f"not a read_/admin_ policy name: {policy!r}")
    scope = "Read" if level == "read" else "Read and write"
    return f"{category.replace('_', ' ').capitalize()}: {scope}"
