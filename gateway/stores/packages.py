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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway.errors import StoreUnavailable
from gateway.route_values import TargetKind
from gateway.stores.cache import MISS, Lru

__all__ = ["PER_PAGE", "PackageLookup", "PackageQuery", "query_for"]

PER_PAGE = 100  # GitLab's maximum page size; a second page means "too many to judge"

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

    @property
    def ref(self) -> str | None:
        return self.group

    @property
    def needs_lookup(self) -> bool:
        return self.group is not None and bool(self.candidates)


def query_for(
    template: str, params: dict[str, str] | Any, group: str | None
) -> PackageQuery | None:
    """The lookup a group/instance package route needs, or None for routes resolved otherwise."""
    if template == _MAVEN_GROUP and group is not None:
        path = params["path"]
        head, _, tail = path.rpartition("/")
        # GitLab matches the package's metadatum path: `<name>/<version>` for a versioned
        # package, `<name>` for the versionless metadata package.
        candidates: tuple[tuple[str, str | None], ...] = ((path, None),)
        if head:
            candidates = ((head, tail), (path, None))
        return PackageQuery(group, "maven", candidates)
    if template in _NPM_GROUP and group is not None:
        return PackageQuery(group, "npm", ((params["package_name"], None),))
    if template in _NPM_AUDITS:
        return PackageQuery(None, "npm", ())
    if template in _NPM_INSTANCE:
        name = params["package_name"]
        scope = name[1:].partition("/")[0] if name.startswith("@") and "/" in name else ""
        if not scope:
            # Current GitLab finds no namespace for an unscoped name (404 or the public
            # registry), but older GitLab looked the name up across the instance
            # (`::Packages::Package.npm.with_name(name)`): which one is upstream is unknown.
            return None
        return PackageQuery(scope, "npm", ((name, None),))
    return None


class PackageLookup:
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
        self.base = base_url.rstrip("/") + relative_url_root + api_prefix
        self._token = token
        self.timeout, self.ttl = timeout, ttl
        self._cache = Lru(size)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def invalidate(self) -> None:
        self._cache.clear()

    def peek(self, query: PackageQuery) -> tuple[int, ...] | object:
        """The cached project ids, or MISS."""
        cached: tuple[int, ...] | object = self._cache.get(query)
        return cached

    async def projects(self, query: PackageQuery) -> tuple[int, ...]:
        """The distinct ids of the projects holding the package (empty: no such package)."""
        cached = self._cache.get(query)
        if cached is not MISS:
            return cached  # type: ignore[no-any-return]
        if query.group is None or not query.needs_lookup:
            return ()
        found: set[int] = set()
        for name, version in query.candidates:
            for package in await self._ask(query.group, query.package_type, name):
                if package.get("name") == name and (
                    version is None or package.get("version") == version
                ):
                    found.add(_project_id(package))
        ids = tuple(sorted(found))
        if ids:
            self._cache.put(query, ids, self.ttl)
        return ids

    async def _ask(self, group: str, package_type: str, name: str) -> list[dict[str, Any]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        url = f"{self.base}/groups/{quote(group, safe='')}/packages"
        params = {
            "package_type": package_type,
            "package_name": name,
            "per_page": str(PER_PAGE),
            "exclude_subgroups": "false",
        }
        try:
            async with self._session.get(
                url, params=params, headers={"PRIVATE-TOKEN": self._token}, allow_redirects=False
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


def _project_id(package: dict[str, Any]) -> int:
    try:
        return int(package["project_id"])
    except (KeyError, TypeError, ValueError):
        raise StoreUnavailable("package lookup: a package without project_id") from None
