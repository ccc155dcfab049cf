"""GitLab's rules for public and internal projects whose allowlist does not admit the source.

A job token is the job's user narrowed by `Ci::JobToken::Scope`. On a *private* project a source
the allowlist does not admit can do nothing (`ProjectPolicy`: `rule { ~project_allowed_for_job_token
}.prevent_all`), and the API answers "Authentication by CI/CD job token not allowed from …"
(`API::Helpers#handle_job_token_failure!`). On a *public or internal* project GitLab keeps a few
rights (app/policies/project_policy.rb, skratsch-solutions/gitlabhq @ 172f1417):

    rule { public_or_internal & ~project_allowed_for_job_token_by_scope }.prevent_all do
      except :build_download_code
      except :build_read_container_image
      except :read_build
      except(*::Authz::Role.get(:public_anonymous).direct_permissions(:project))
    end

so `read_project` (config/authz/roles/public_anonymous.yml) survives, `find_project!` passes its
`can?(read_project)` check, and the request reaches `authorize_job_token_policies!`
(lib/api/helpers.rb, skratsch-solutions/gitlabhq @ 1554a5ac):

    def job_token_policies_authorized?(project)
      return true if skip_job_token_policies?
      return true if publicly_accessible_feature?(project)
      current_user.ci_job_token_scope.policies_allowed?(project, job_token_policies)
    end

`policies_allowed?` is false for a source the enabled allowlist does not admit
(`Ci::JobToken::Scope#policies_allowed?` -> `inbound_accessible?`), so the answer is the policy
message, `Insufficient permissions to access this resource in project #<id>. …`, unless the route
skips policies (the page's `None`) or is a publicly accessible feature: the project is public or
internal and every feature the route names in `allow_public_access_for_enabled_project_features`
has an access level >= `ProjectFeature::ENABLED` (20). What the endpoint then returns is GitLab's
own business (its ProjectPolicy still applies): the gateway forwards.

Git over HTTP: a read needs `build_download_code`, kept above, and prevented when the repository
feature is disabled or members-only (`rule { repository_disabled }.prevent :build_download_code`;
`access_allowed_to?` answers false for a PRIVATE feature outside the scope). A push needs
`build_push_code`, which outside the scope is never granted (`push_repository_for_job_token_allowed`).

The gateway knows a route's public features from `PUBLIC_FEATURES` below (GitLab's route table page
does not carry them); a route missing there is treated as having none, which is never more
permissive than GitLab.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.stores.grants import FEATURE_LEVELS, Project

__all__ = [
    "ENABLED",
    "PUBLIC_FEATURES",
    "public_features",
    "publicly_accessible",
    "readable_repository",
]

ENABLED = FEATURE_LEVELS["enabled"]  # ProjectFeature::ENABLED

# (method, template) -> `allow_public_access_for_enabled_project_features` of that route, as read
# in GitLab's source (skratsch-solutions/gitlabhq).
PUBLIC_FEATURES: Mapping[tuple[str, str], tuple[str, ...]] = {
    # lib/api/ci/job_artifacts.rb (`get ':id/jobs/artifacts/:ref_name/raw/*artifact_path'`)
    ("GET", "/projects/:id/jobs/artifacts/:ref_name/raw/*artifact_path"): ("repository", "builds"),
    # lib/api/maven_packages.rb: the three download routes
    ("GET", "/packages/maven/*path/:file_name"): ("package_registry",),
    ("GET", "/groups/:id/-/packages/maven/*path/:file_name"): ("package_registry",),
    ("GET", "/projects/:id/packages/maven/*path/:file_name"): ("package_registry",),
    # lib/api/ci/runner.rb (`get '/:id/artifacts'`: a dependency's artifacts)
    ("GET", "/jobs/:id/artifacts"): ("repository", "builds"),
    # lib/api/ci/pipelines.rb (`get ':id/pipelines'`)
    ("GET", "/projects/:id/pipelines"): ("repository", "builds"),
    # lib/api/package_files.rb (list, and download)
    ("GET", "/projects/:id/packages/:package_id/package_files"): ("package_registry",),
    (
        "GET",
        "/projects/:id/packages/:package_id/package_files/:package_file_id/download",
    ): ("package_registry",),
    # lib/api/concerns/packages/npm_endpoints.rb (mounted at project, group and instance level)
    ("GET", "/projects/:id/packages/npm/-/package/*package_name/dist-tags"): ("package_registry",),
    ("GET", "/groups/:id/-/packages/npm/-/package/*package_name/dist-tags"): ("package_registry",),
    ("GET", "/packages/npm/-/package/*package_name/dist-tags"): ("package_registry",),
    ("POST", "/projects/:id/packages/npm/-/npm/v1/security/advisories/bulk"): ("package_registry",),
    ("POST", "/projects/:id/packages/npm/-/npm/v1/security/audits/quick"): ("package_registry",),
    # lib/api/commits.rb (`get ':id/repository/commits/:sha'`), lib/api/badges.rb
    ("GET", "/projects/:id/repository/commits/:sha"): ("repository",),
    ("GET", "/projects/:id/badges"): ("repository",),
    # lib/api/issues.rb (`get ":id/issues"`)
    ("GET", "/projects/:id/issues"): ("issues",),
}


def public_features(method: str, template: str) -> tuple[str, ...]:
    """The features a route opens to public/internal projects (HEAD is GET), or ()."""
    return PUBLIC_FEATURES.get(("GET" if method == "HEAD" else method, template), ())


def publicly_accessible(project: Project, features: tuple[str, ...]) -> bool:
    """`API::Helpers#publicly_accessible_feature?`: public or internal, at least one feature
    named, and every one at ENABLED or above."""
    if not project.public_or_internal or not features:
        return False
    return all(project.feature_level(feature) >= ENABLED for feature in features)


def readable_repository(project: Project) -> bool:
    """`build_download_code` for a source outside the scope: a public or internal project
    whose repository feature is open to everyone with access (ENABLED or PUBLIC)."""
    return project.public_or_internal and project.feature_level("repository") >= ENABLED
