"""`policy.decide` for public and internal targets, the enforced allowlist and git push, as a
table (the pure function; tests/test_visibility.py runs the same rules through a gateway)."""

from __future__ import annotations

import pytest

from gateway.core import policy, visibility
from gateway.core.decision import Audit, Reason
from gateway.routing.table import RouteTable
from gateway.settings import DEFAULT_ROUTES
from gateway.stores.grants import (
    FEATURES,
    Allowlist,
    AllowlistEntry,
    EntryKind,
    Job,
    Project,
    Visibility,
)

SOURCE = Project(1, "src/group/app")
JOB = Job("d" * 64, 9, SOURCE)
ENABLED, PRIVATE, DISABLED = 20, 10, 0


def target(visibility: Visibility, **features: int) -> Project:
    return Project(2, "dst/lib", visibility, tuple(sorted(features.items())))


def decide(
    project: Project | None,
    access: policy.Access,
    allowlist: Allowlist | None = None,
    *,
    enforce: bool = False,
) -> tuple[Reason, str]:
    accessed = policy.Accessed("2", project)
    decision = policy.decide(JOB, accessed, allowlist, access, Audit(), enforce_allowlist=enforce)
    return decision.reason, decision.message


RELEASES = policy.Access("GET releases", ("read_releases",))
MAVEN = policy.Access("GET maven", ("read_packages",), public_features=("package_registry",))
ARTIFACT = policy.Access("GET raw", ("read_jobs",), public_features=("repository", "builds"))
NONE_ROUTE = policy.Access("GET ping", (), controllable=False)
CLONE = policy.Access("git git-upload-pack", (), controllable=False, git=True)
PUSH = policy.Access(
    "git git-receive-pack", ("admin_repositories",), controllable=True, git=True, push=True
)
PUBLIC, INTERNAL = Visibility.PUBLIC, Visibility.INTERNAL
NOT_ALLOWED = (
    "403 Forbidden - Authentication by CI/CD job token not allowed from app to project #2."
)


def insufficient(permission: str) -> str:
    return (
        "403 Forbidden - Insufficient permissions to access this resource in project #2. "
        f"The following token permission is required: {permission}."
    )


@pytest.mark.parametrize(
    ("project", "access", "reason", "message"),
    [
        (target(PUBLIC, repository=ENABLED), CLONE, Reason.PUBLIC_ACCESS, ""),
        (target(INTERNAL, repository=30), CLONE, Reason.PUBLIC_ACCESS, ""),
        (target(PUBLIC, repository=PRIVATE), CLONE, Reason.NOT_ALLOWLISTED, NOT_ALLOWED),
        (target(PUBLIC), CLONE, Reason.NOT_ALLOWLISTED, NOT_ALLOWED),  # unlisted = members only
        (target(PUBLIC, repository=ENABLED), PUSH, Reason.NOT_ALLOWLISTED, NOT_ALLOWED),
        (target(PUBLIC), NONE_ROUTE, Reason.PUBLIC_ACCESS, ""),
        (target(INTERNAL, package_registry=ENABLED), MAVEN, Reason.PUBLIC_ACCESS, ""),
        (
            target(PUBLIC, package_registry=DISABLED),
            MAVEN,
            Reason.INSUFFICIENT_PERMISSIONS,
            insufficient("read_packages"),
        ),
        (
            target(PUBLIC, repository=ENABLED, builds=PRIVATE),
            ARTIFACT,
            Reason.INSUFFICIENT_PERMISSIONS,
            insufficient("read_jobs"),
        ),
        (target(PUBLIC, repository=ENABLED, builds=30), ARTIFACT, Reason.PUBLIC_ACCESS, ""),
        (target(PUBLIC), RELEASES, Reason.INSUFFICIENT_PERMISSIONS, insufficient("read_releases")),
        (
            target(PUBLIC),
            policy.Access("POST x", ()),
            Reason.NO_PERMISSIONS_GRANTED,
            "403 Forbidden - This action is unauthorized for CI/CD job tokens.",
        ),
        (
            target(Visibility.PRIVATE, repository=ENABLED),
            CLONE,
            Reason.NOT_ALLOWLISTED,
            NOT_ALLOWED,
        ),
        (
            None,
            CLONE,
            Reason.NOT_ALLOWLISTED,
            "403 Forbidden - Authentication by CI/CD job token not allowed from app to project #2.",
        ),
    ],
)
def test_a_source_the_allowlist_does_not_admit(
    project: Project | None, access: policy.Access, reason: Reason, message: str
) -> None:
    assert decide(project, access) == (reason, message)
    empty = Allowlist(2, True, ())
    assert decide(project, access, empty) == (reason, message)


def test_an_admitting_entry_wins_over_visibility() -> None:
    entry = AllowlistEntry(EntryKind.PROJECT, SOURCE.key, SOURCE.id, False, ("read_releases",))
    allowlist = Allowlist(2, True, (entry,))
    assert decide(target(PUBLIC), RELEASES, allowlist)[0] is Reason.POLICIES_GRANTED
    assert decide(target(PUBLIC), MAVEN, allowlist)[0] is Reason.INSUFFICIENT_PERMISSIONS
    # publicly_accessible_feature? comes before the entry's policies
    open_registry = target(PUBLIC, package_registry=ENABLED)
    assert decide(open_registry, MAVEN, allowlist)[0] is Reason.PUBLIC_ACCESS
    private_registry = target(Visibility.PRIVATE, package_registry=ENABLED)
    assert decide(private_registry, MAVEN, allowlist)[0] is Reason.INSUFFICIENT_PERMISSIONS


def test_an_allowlist_that_is_off() -> None:
    off = Allowlist(2, False, ())
    assert decide(target(Visibility.PRIVATE), RELEASES, off)[0] is Reason.ALLOWLIST_DISABLED
    assert decide(target(Visibility.PRIVATE), CLONE, off)[0] is Reason.GIT_HTTP
    assert decide(target(Visibility.PRIVATE), PUSH, off) == (
        Reason.INSUFFICIENT_PERMISSIONS,
        "403 Forbidden - You are not allowed to push code to this project.",
    )
    # enforced: off counts as on, with its entries; visibility rules apply again
    assert decide(target(Visibility.PRIVATE), RELEASES, off, enforce=True)[0] is (
        Reason.NOT_ALLOWLISTED
    )
    assert decide(target(PUBLIC), NONE_ROUTE, off, enforce=True)[0] is Reason.PUBLIC_ACCESS
    entry = AllowlistEntry(EntryKind.GROUP, "src", None, False, ("admin_repositories",))
    with_entry = Allowlist(2, False, (entry,))
    assert decide(target(Visibility.PRIVATE), PUSH, with_entry, enforce=True)[0] is Reason.GIT_HTTP
    assert decide(target(Visibility.PRIVATE), PUSH, with_entry)[0] is (
        Reason.INSUFFICIENT_PERMISSIONS
    )


def test_the_source_is_named_by_its_own_path_segment() -> None:
    assert Project(5, "a/b/c-d").slug == "c-d"
    assert Project(5, "top").slug == "top"


def test_the_public_feature_rows_name_known_features_and_real_routes() -> None:
    shipped = RouteTable.load(DEFAULT_ROUTES, api_prefix="/api/v4", relative_url_root="")
    names = {(route.method, route.path) for route in shipped.routes}
    for (method, template), features in visibility.PUBLIC_FEATURES.items():
        assert set(features) <= FEATURES, (method, template)
        assert template.startswith("/"), template
    # the seed table's routes among them (the others belong to newer pages)
    assert ("GET", "/projects/:id/packages/maven/*path/:file_name") in names
    assert ("GET", "/projects/:id/jobs/artifacts/:ref_name/raw/*artifact_path") in names
    assert visibility.public_features("HEAD", "/jobs/:id/artifacts") == ("repository", "builds")
