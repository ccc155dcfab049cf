"""GitLab facts the generated page does not carry, each with the GitLab source it comes from.

- `TARGET_RULES`: which project, group or job a route's request touches (the resource GitLab
  authorizes the job token against), derived from the matched params.
- `SPANNING_PARAMS`: params GitLab declares with a `/.+/` requirement (they span segments).
- `OWN_PROJECT_ONLY_PREFIXES`: routes a job token may only use on its own project.
- `WORKHORSE_BODY_FILES`: routes whose request body Workhorse takes as an uploaded file, so
  Rails never reads parameters from it (`is_workhorse_body_file`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from gateway.routing.values import Target, TargetKind

__all__ = [
    "OWN_PROJECT_ONLY_PREFIXES",
    "SPANNING_PARAMS",
    "TARGET_RULES",
    "WORKHORSE_BODY_FILES",
    "Derive",
    "TargetRule",
    "derived_ref",
    "is_own_project_only",
    "is_workhorse_body_file",
    "target_rule_for",
]


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
        ref = derived_ref(self.derive, params[self.param])
        return Target(self.kind, ref) if ref is not None else Target(TargetKind.UNRESOLVED)


def derived_ref(derive: Derive, value: str) -> str | None:
    """The target's ref from its param's decoded value; None when GitLab finds no project."""
    if derive is Derive.CONAN_USERNAME:
        return value.replace("+", "/")
    if derive is Derive.MAVEN_PATH:
        return value.rpartition("/")[0] or None  # no project: GitLab answers 403
    return value


_CONAN_RECIPE = ":package_name/:package_version/:package_username/:package_channel"

# First rule whose prefix matches the template wins; no rule = UNRESOLVED (deny-worthy).
TARGET_RULES: tuple[TargetRule, ...] = (
    # find_project(id): numeric id or URL-encoded full path (lib/api/helpers.rb; id requirement
    # NAMESPACE_OR_PROJECT_REQUIREMENTS in lib/api/api.rb). Groups: find_group, same rule.
    TargetRule("/projects/:id", TargetKind.PROJECT, "id"),
    TargetRule("/groups/:id", TargetKind.GROUP, "id"),
    # Composer's group endpoints live under the singular `group` (lib/api/composer_packages.rb).
    TargetRule("/group/:id", TargetKind.GROUP, "id"),
    # GET /jobs/:id/artifacts: authenticate_job_via_dependent_job! then
    # authorize_job_token_policies!(current_job.project), current_job = Ci::Build.find_by_id(
    # params[:id]) (lib/api/ci/runner.rb, lib/api/ci/helpers/runner.rb); the runner routes
    # PUT /jobs/:id, PATCH /jobs/:id/trace, POST /jobs/:id/artifacts(/authorize) name the job
    # the token must belong to (`authenticate_job!`).
    TargetRule("/jobs/:id", TargetKind.JOB, "id"),
    # Runner routes that name no job: `token` is the runner's credential
    # (lib/api/ci/runner.rb `post '/request'`, `resource :runners`; `authenticate_runner!`).
    TargetRule("/jobs/request", TargetKind.NONE),
    TargetRule("/runners", TargetKind.NONE),
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
    # post ":id/(ref/:ref/)trigger/pipeline", requirements: { ref: /.+/ } (lib/api/ci/triggers.rb)
    "/projects/:id/(ref/:ref/)trigger/pipeline": frozenset({"ref"}),
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


# Routes whose body Workhorse takes as an uploaded file (`requestBodyUploader`,
# upload.RequestBody): it stores the body and hands Rails a form naming the file, so Rails never
# parses the client's body for parameters and a job token inside it authenticates nothing
# (gitlab workhorse/internal/upstream/routes.go, `configureRoutes`). Each entry: method, a
# template prefix (whole segments, as TargetRule), and the templates under it Workhorse routes
# elsewhere. Not listed: multipart uploads (`mimeMultipartUploader`: NuGet, PyPI, Helm, job
# artifacts) keep their other fields as params; `repository/commits` and `repository/files`
# bodies are read back into params (lib/api/helpers/commits_body_uploader_helper.rb).
WORKHORSE_BODY_FILES: tuple[tuple[str, str, frozenset[str]], ...] = (
    # `apiProjectPattern+/terraform/state/.*` POST -> requestBodyUploader; `.../lock` -> proxy
    (
        "POST",
        "/projects/:id/terraform/state",
        frozenset({"/projects/:id/terraform/state/:name/lock"}),
    ),
    ("PUT", "/projects/:id/packages/maven", frozenset()),  # `/packages/maven/`
    # `/packages/npm/.*` PUT; `/packages/npm/-/package/[^/]+/dist-tags/[^/]+` -> proxy
    (
        "PUT",
        "/projects/:id/packages/npm",
        frozenset({"/projects/:id/packages/npm/-/package/*package_name/dist-tags/:tag"}),
    ),
    ("PUT", "/packages/conan", frozenset()),  # `apiPattern+v4/packages/conan/`
    ("PUT", "/projects/:id/packages/conan", frozenset()),
    ("PUT", "/projects/:id/packages/generic", frozenset()),
    ("PUT", "/projects/:id/packages/ml_models", frozenset()),
    ("PUT", "/projects/:id/packages/debian", frozenset()),
    ("POST", "/projects/:id/packages/rpm", frozenset()),
    ("POST", "/projects/:id/packages/rubygems", frozenset()),
    ("PUT", "/projects/:id/packages/terraform/modules", frozenset()),
)


def is_workhorse_body_file(method: str, template: str) -> bool:
    """Does Workhorse take this route's request body as an uploaded file (never parsed by
    Rails for parameters)? See WORKHORSE_BODY_FILES."""
    return any(
        method == listed
        and TargetRule(prefix, TargetKind.PROJECT).applies_to(template)
        and template not in elsewhere
        for listed, prefix, elsewhere in WORKHORSE_BODY_FILES
    )
