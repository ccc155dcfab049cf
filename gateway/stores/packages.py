"""Which project owns a package on GitLab's group and instance package routes.

GitLab resolves these routes in its database and checks the package's project:

- Maven, group level (lib/api/maven_packages.rb, `get ':id/-/packages/maven/*path/:file_name'`):
  `package = fetch_package(file_name:, group:)`, then `authorize_read_package!(package.project)`
  and `authorize_job_token_policies!(package.project)` only `if package`; no package -> 404 or
  the Maven Central forward, with no project check.
- npm, instance and group level (lib/api/concerns/packages/npm_namespace_endpoints.rb,
  lib/api/npm_instance_packages.rb, lib/api/npm_group_packages.rb): the namespace is the group
  (`:id`) or the top-level namespace named by the package's scope (`@acme/ui` -> `acme`);
  `project_id_or_nil` is the last npm package of that name in it; the metadata route is
  `skip_job_token_policies` in current GitLab and reads packages with `authorize_read_package!`,
  the dist-tags routes call `find_project!(project_id)`. No package -> the npmjs forward or 404.

The gateway cannot read GitLab's database, so it asks the upstream's packages API with an
operator-configured read token (`GET /groups/:id/packages?package_type=…&package_name=…`; the
name filter is a substring match, so answers are filtered for the exact name and version). The
answer is the set of project ids holding that package; answers are cached (bounded, `ttl`);
"no package" is not cached, so a package published since is found on the next request. Any
failure (network, timeout, an answer that is not a list, more than one page) raises
`StoreUnavailable`: the request is refused with 503, never forwarded unjudged.

That API is not the finder GitLab's routes use. `Packages::GroupPackagesFinder`
(app/finders/packages/group_packages_finder.rb, with app/finders/concerns/packages/
finder_helper.rb) drops versionless packages unless `include_versionless` (`filter_with_version`),
shows DISPLAYABLE_STATUSES only unless `status` is given (`filter_by_status`; hidden packages are
installable but not displayable, app/models/packages/package.rb), and skips projects whose
repository feature is disabled (`with_feature_available_for_user(:repository, ...)`). The route
finders (`Packages::Maven::PackageFinder` -> `packages_visible_to_user`, and
`Packages::Npm::PackageFinder#packages_for_namespace`) take every `installable` package of the
group's projects. So the lookup asks with `include_versionless=true`, asks again with
`status=hidden`, drops packages that are not installable, and an empty answer is "no package"
only when GitLab's own route agrees (`probe`): an empty listing is never trusted alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from gateway.errors import StoreUnavailable
from gateway.routing.values import TargetKind
from gateway.stores.cache import MISS, Lru
from gateway.stores.upstream_http import UpstreamClient

__all__ = ["PER_PAGE", "Miss", "PackageLookup", "PackageQuery", "query_for"]

PER_PAGE = 100  # GitLab's maximum page size; a second page means "too many to judge"

# A top-level namespace path (lib/gitlab/path_regex.rb, NAMESPACE_FORMAT_REGEX, checked whole
# as in `namespace_format_regex`): letters, digits, `_`, `-`, `.`; not starting with `-`, not
# ending in `.`, `.git` or `.atom`. `.` and `..` are no namespace: `Namespace.top_most.by_path`
# (lib/api/helpers/packages/npm.rb, `top_namespace_from`) finds none for them.
_NAMESPACE_PATH = re.compile(
    r"(?:[a-zA-Z0-9_.][a-zA-Z0-9_\-.]*[a-zA-Z0-9_\-]|[a-zA-Z0-9_])(?<!\.git)(?<!\.atom)"
)
# Statuses GitLab's routes never serve (`installable`: INSTALLABLE_STATUSES, app/models/packages/
# package.rb); a listing's package in one of them is not the package the route would find.
_NOT_INSTALLABLE = frozenset({"error", "processing", "pending_destruction"})
# Where GitLab's routes forward a request for a package it does not hold
# (lib/api/helpers/packages/dependency_proxy_helpers.rb, REGISTRY_BASE_URLS / `registry_url`).
_REGISTRY_BASE_URLS = {
    "npm": "https://registry.npmjs.org/",
    "maven": "https://repo.maven.apache.org/maven2/",
}


class Miss(Enum):
    """What GitLab does on a route when it finds no package (the lookup's answer is empty).

    FORWARD: no package name (npm audits): no lookup, no project, forwarded.
    PROBE: Maven group download, npm metadata: a 404 or the public-registry redirect, no project
    checked; the empty listing is confirmed by asking GitLab's own route (`PackageLookup.probe`).
    PROJECT_NOT_FOUND: npm dist-tags: `project` -> `not_found!('Project') unless project_id`
    (lib/api/helpers/packages/npm.rb, lib/api/concerns/packages/npm_namespace_endpoints.rb),
    no redirect: the gateway answers that 404 itself (confirmed by a probe of the GET dist-tags
    route, which finds the project the same way)."""

    FORWARD = "forward"
    PROBE = "probe"
    PROJECT_NOT_FOUND = "project_not_found"


_MAVEN_GROUP = "/groups/:id/-/packages/maven/*path/:file_name"
_NPM_GROUP = (
    "/groups/:id/-/packages/npm/*package_name",
    "/groups/:id/-/packages/npm/-/package/*package_name/dist-tags",
    "/groups/:id/-/packages/npm/-/package/*package_name/dist-tags/:tag",
)
# The audit routes carry no package name: `project_id_or_nil` finds nothing, so GitLab redirects
# to the public registry (`redirect_or_present_audit_report`, forward_to_registry: true) or answers
# 404 from `authorize_read_package!(project)`; no project is ever checked (npm_endpoints.rb).
_NPM_AUDITS = (
    "/packages/npm/-/npm/v1/security/advisories/bulk",
    "/packages/npm/-/npm/v1/security/audits/quick",
    "/groups/:id/-/packages/npm/-/npm/v1/security/advisories/bulk",
    "/groups/:id/-/packages/npm/-/npm/v1/security/audits/quick",
)
_NPM_INSTANCE = (
    "/packages/npm/*package_name",
    "/packages/npm/-/package/*package_name/dist-tags",
    "/packages/npm/-/package/*package_name/dist-tags/:tag",
)


@dataclass(frozen=True, slots=True)
class PackageQuery:
    """A package to find in a group: (name, version or None for any) alternatives.

    `kind`/`ref` make it usable where the gate expects a `Target`. No candidates (the audit
    routes) means GitLab finds no package and checks no project: `needs_lookup` is then False."""

    group: str | None
    package_type: str
    candidates: tuple[tuple[str, str | None], ...]
    kind: TargetKind = TargetKind.GROUP
    # What a miss means, and the raw path (as received, still encoded, no query) of the GitLab
    # route that confirms it. Not part of the cache key: the listing does not depend on them.
    miss: Miss = field(default=Miss.FORWARD, compare=False)
    probe: str | None = field(default=None, compare=False)

    @property
    def ref(self) -> str | None:
        return self.group

    @property
    def needs_lookup(self) -> bool:
        return self.group is not None and bool(self.candidates)


def query_for(
    template: str, params: dict[str, str] | Any, group: str | None, path: str = ""
) -> PackageQuery | None:
    """The lookup a group/instance package route needs, or None for routes resolved otherwise.

    `path` is the request's raw path (no query): the route a miss is confirmed on."""
    if template == _MAVEN_GROUP and group is not None:
        pkg_path = params["path"]
        head, _, tail = pkg_path.rpartition("/")
        # GitLab matches the package's metadatum path: `<name>/<version>` for a versioned
        # package, `<name>` for the versionless metadata package.
        candidates: tuple[tuple[str, str | None], ...] = ((pkg_path, None),)
        if head:
            candidates = ((head, tail), (pkg_path, None))
        return PackageQuery(group, "maven", candidates, miss=Miss.PROBE, probe=path)
    if template in _NPM_AUDITS:
        return PackageQuery(None, "npm", ())
    if template in _NPM_GROUP or template in _NPM_INSTANCE:
        name = params["package_name"]
        if template in _NPM_GROUP:
            if group is None:
                return None
            namespace: str | None = group
        else:
            scope = name[1:].partition("/")[0] if name.startswith("@") and "/" in name else ""
            if not scope:
                # Current GitLab finds no namespace for an unscoped name (404 or the public
                # registry), but older GitLab looked the name up across the instance
                # (`::Packages::Package.npm.with_name(name)`): which one is upstream is unknown.
                return None
            # A scope that is no namespace path: `top_namespace_from` finds no namespace, so no
            # package and no project (and the scope never reaches the lookup's URL).
            namespace = scope if _NAMESPACE_PATH.fullmatch(scope) else None
        if template.endswith("/dist-tags/:tag"):
            # The tag is one segment (NPM_ENDPOINT_REQUIREMENTS): the GET dist-tags route
            # finds the project the same way (`project`).
            return PackageQuery(
                namespace,
                "npm",
                ((name, None),) if namespace else (),
                miss=Miss.PROJECT_NOT_FOUND,
                probe=path.rpartition("/")[0],
            )
        miss = Miss.PROJECT_NOT_FOUND if template.endswith("/dist-tags") else Miss.PROBE
        return PackageQuery(
            namespace, "npm", ((name, None),) if namespace else (), miss=miss, probe=path
        )
    return None


class PackageLookup(UpstreamClient):
    def __init__(
        self,
        base_url: str,
        *,
        api_prefix: str,
        relative_url_root: str,
        token: str,
        timeout: float,
        ttl: float,
        size: int,
    ) -> None:
        super().__init__(timeout)
        self.origin = base_url.rstrip("/")
        self.base = self.origin + relative_url_root + api_prefix
        self._token = token
        self.ttl = ttl
        self._cache: Lru[PackageQuery, tuple[int, ...]] = Lru(size)

    def invalidate(self) -> None:
        self._cache.clear()

    async def projects(self, query: PackageQuery) -> tuple[int, ...]:
        """The distinct ids of the projects holding the package (empty: no such package)."""
        cached = self._cache.get(query)
        if cached is not MISS:
            return cached
        if query.group is None or not query.needs_lookup:
            return ()
        found: set[int] = set()
        for name, version in query.candidates:
            # The listing hides hidden packages unless asked for them by status
            # (`filter_by_status`); GitLab's routes serve them (INSTALLABLE_STATUSES).
            for status in (None, "hidden"):
                for package in await self._ask(query.group, query.package_type, name, status):
                    if (
                        package.get("name") == name
                        and (version is None or package.get("version") == version)
                        and package.get("status") not in _NOT_INSTALLABLE
                    ):
                        found.add(_project_id(package))
        ids = tuple(sorted(found))
        if ids:
            self._cache.put(query, ids, self.ttl)
        return ids

    async def probe(self, query: PackageQuery) -> bool:
        """Whether GitLab's own route finds a package the listing did not show.

        The route (`query.probe`, the request's raw path) is asked with the read token and no
        redirect followed; the body is never read. 404, or a redirect to the public registry
        (`redirect_registry_request`): no package. 200, 403 (the package's project refuses the
        read token), any other redirect (a file on object storage): a package. Anything else
        raises `StoreUnavailable`."""
        if query.probe is None:
            raise StoreUnavailable("package lookup: no route to confirm a miss on")
        registry = _REGISTRY_BASE_URLS.get(query.package_type)
        status, location = await self._head_of(query.probe)
        if status == 404:
            return False
        if status in (301, 302, 303, 307, 308):
            return not (registry is not None and location.startswith(registry))
        if status in (200, 403):
            return True
        raise StoreUnavailable(f"package lookup: the route answered {status}")

    async def _head_of(self, path: str) -> tuple[int, str]:
        """GET `path` on the upstream: its status and Location; the body is left unread."""
        # SECURITY: the raw path is appended to the origin as received and sent encoded=True,
        # like the forwarded request (gateway/proxy/forward.py): it cannot be joined or normalised
        # into another route.
        url = URL(self.origin + path, encoded=True)
        try:
            async with self._client().get(
                url, headers={"PRIVATE-TOKEN": self._token}, allow_redirects=False
            ) as resp:
                status, location = resp.status, resp.headers.get("Location", "")
                resp.close()  # never download the package: the status is the answer
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise StoreUnavailable(f"package lookup: {exc.__class__.__name__}") from None
        return status, location

    async def _ask(
        self, group: str, package_type: str, name: str, status: str | None = None
    ) -> list[dict[str, Any]]:
        # SECURITY: every segment percent-encoded, dots of a dot segment too, and the URL sent
        # encoded=True: a group of `..` must not turn /groups/../packages into /packages.
        url = URL(f"{self.base}/groups/{_segment(group)}/packages", encoded=True)
        # GitLab's packages API (lib/api/group_packages.rb, `get ':id/packages'`):
        # `include_versionless` and `status` as in Packages::GroupPackagesFinder.
        params = {
            "package_type": package_type,
            "package_name": name,
            "per_page": str(PER_PAGE),
            "exclude_subgroups": "false",
            "include_versionless": "true",
        }
        if status is not None:
            params["status"] = status
        try:
            async with self._client().get(
                url.with_query(params),
                headers={"PRIVATE-TOKEN": self._token},
                allow_redirects=False,
            ) as resp:
                # A 404 (no such group, or one the read token cannot see) is refused too: a
                # read token without access must not turn into "no package, forward".
                if resp.status != 200:
                    raise StoreUnavailable(f"package lookup: GET {url} answered {resp.status}")
                if resp.headers.get("X-Next-Page", "").strip():
                    raise StoreUnavailable("package lookup: more than one page of packages")
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise StoreUnavailable(f"package lookup: {exc.__class__.__name__}") from None
        if not isinstance(body, list) or not all(isinstance(p, dict) for p in body):
            raise StoreUnavailable("package lookup: the answer is not a list of packages")
        return body


def _segment(value: str) -> str:
    """`value` as one path segment that no client or server reads as a dot segment."""
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if set(value) <= {"."} else encoded


def _project_id(package: dict[str, Any]) -> int:
    try:
        return int(package["project_id"])
    except (KeyError, TypeError, ValueError):
        raise StoreUnavailable("package lookup: a package without project_id") from None
