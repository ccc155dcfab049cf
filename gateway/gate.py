"""The decision core's entry point: extract -> match -> resolve -> decide, with no aiohttp in sight.

CONTRACT used by the proxy (`gateway.handler`), the `check` command and future decision endpoints:
    gate = await Gate.open(settings)          # loads the route table, opens the token store
    gate.needs_body(view) -> bool             # may the body carry params (form/JSON/multipart)?
    await gate.evaluate(view) -> Decision     # never raises for a request; store faults -> 503 Decision
    await gate.ready() -> tuple[bool, str]    # route table loaded and store reachable, with detail
    await gate.reload() -> None               # SIGHUP: re-read route table/store; ConfigError keeps old
    await gate.close() -> None

Order of work (cheap first): target refusals, token extraction, route match and git recognition
use no I/O; a request without a job token is decided there, and so is a job token on a route
job tokens cannot use. Only then is the job resolved (cache, then store, then optionally the
upstream), then the accessed project and its allowlist, and `policy.decide` rules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway import gitpath, policy, routes, tokens
from gateway.decision import Audit, Decision, Reason, make_audit
from gateway.errors import PolicyFileError, StoreUnavailable
from gateway.grants import Job, Project, project_key
from gateway.request import RequestView
from gateway.route_facts import TOKEN_EXCHANGE_PATHS
from gateway.routes import Refusal, Route, RouteTable, Target, TargetKind
from gateway.settings import Settings
from gateway.stores import Store, open_store
from gateway.stores.cache import MISS, CachedStore
from gateway.stores.file import FileStore
from gateway.stores.upstream import UpstreamValidator

__all__ = ["Gate"]

log = logging.getLogger(__name__)

UNAUTHORIZED = policy.UNAUTHORIZED  # GitLab's 401 body, defined once in gateway/policy.py
NOT_AVAILABLE = (
    "403 Forbidden - This endpoint is not available to CI/CD job tokens through this gateway."
)
CONAN_EXCHANGE_REFUSED = (
    "403 Forbidden - The gateway cannot judge the Conan token this endpoint would issue for a "
    "CI/CD job token; use the job token itself (HTTP Basic) with Conan."
)
UNRESOLVED = (
    "403 Forbidden - The gateway cannot tell which project's resources this endpoint returns, "
    "so CI/CD job tokens cannot use it."
)
STORE_DOWN = "503 Service Unavailable - The token store cannot answer; try again later."
# CONNECT never reaches the gate (the handler refuses it); a TRACE body is read like any other:
# Rack would parse a form body whatever the method.
_METHODS_WITHOUT_BODY = frozenset({"CONNECT"})


class Gate:
    """One per process (or per app): owns the route table, the cached store and the validator."""

    def __init__(
        self,
        settings: Settings,
        table: RouteTable,
        store: CachedStore,
        validator: UpstreamValidator | None = None,
    ) -> None:
        self.settings = settings
        self.table = table
        self.store = store
        self.validator = validator
        self._root = settings.relative_url_root
        # What each route of `table` requires, built once per route (by id, checked by identity).
        self._access: dict[int, tuple[Route, policy.Access]] = {}

    @classmethod
    async def open(cls, settings: Settings, *, store: Store | None = None) -> Gate:
        """Load the route table and open the store (given, or from `settings.store`).

        Raises ConfigError for a bad route table, store URL or grants file. A store that is
        down does not stop start-up: the gate answers 503 and `ready()` says why until it is back.
        """
        table = RouteTable.load(
            settings.routes,
            api_prefix=settings.api_prefix,
            relative_url_root=settings.relative_url_root,
        )
        backend = store or open_store(settings.store, timeout=settings.store_timeout)
        if isinstance(backend, FileStore):
            await backend.check()
        cached = CachedStore(
            backend,
            size=settings.cache_size,
            ttl=settings.cache_ttl,
            timeout=settings.store_timeout,
        )
        cached.start()
        try:
            await cached.poll()
        except StoreUnavailable as exc:
            log.warning("token store unavailable at start-up: %s", exc)
        return cls(settings, table, cached, _validator(settings))

    # ---- the contract

    def needs_body(self, view: RequestView) -> bool:
        """True for a form, JSON or multipart body Rails would read params from (any method
        can carry one). Framing headers may already be gone from the view (Transfer-Encoding
        is hop-by-hop), so only an explicit `Content-Length: 0` means "no body".

        The caller then evaluates a view with the body buffered, or, for a multipart/form-data
        body too large to buffer, evaluates the headers alone and checks the parts as they
        stream with `gateway.bodyguard.Guard` (the proxy does; see gateway/handler.py)."""
        if view.method in _METHODS_WITHOUT_BODY:
            return False
        if tokens.body_kind(view.headers, view.method) is None:
            return False
        return view.headers.get("Content-Length", "").strip() != "0"

    async def evaluate(self, view: RequestView) -> Decision:
        """The verdict for one request; never raises for a request (store faults -> 503)."""
        started = self._start(view)
        if isinstance(started, Decision):
            return started  # everything came from the cache: no await, no suspension
        return await self._authorize(*started)

    def evaluate_now(self, view: RequestView) -> Decision | None:
        """`evaluate`'s verdict when it needs no I/O (decided before any lookup, or every value
        from the cache), else None: then `await evaluate(view)`. For callers that answer cache
        hits without a Task (the decision listener, gateway/authz); never raises for a request."""
        started = self._start(view)
        return started if isinstance(started, Decision) else None

    def _start(
        self, view: RequestView
    ) -> Decision | tuple[tokens.Credential, policy.Access, Target, _Lookup]:
        """The verdict when no I/O is needed, else what `_authorize` needs to fetch."""
        found: tokens.Extraction | Decision
        try:
            found = tokens.extract(view)
        except tokens.BodyError as exc:
            found = Decision(False, Reason.BAD_BODY, f"400 Bad request - {exc}")
        if isinstance(found, tokens.Credential):
            # `RouteTable.match` refuses every target `check_target` refuses (and more).
            planned = self._plan(view, found)
            if isinstance(planned, Decision):
                return planned  # refused before any store lookup
            decided = self._resolve(found, *planned)
            if isinstance(decided, Decision):
                return decided
            return found, *planned, decided
        refusal = routes.check_target(view.target)
        if refusal is not None:
            return _bad_target(refusal)
        if isinstance(found, Decision):
            return found
        if found is None:
            if self.settings.require_job_token:
                return policy.deny(Reason.TOKEN_REQUIRED, UNAUTHORIZED, Audit())
            return Decision(allowed=True, reason=Reason.NO_TOKEN)
        if isinstance(found, tokens.Conflict):
            message = f"400 Bad request - Conflicting credentials: {found.detail}."
            return policy.deny(Reason.CREDENTIAL_CONFLICT, message, Audit())
        return policy.deny(Reason.TOKEN_INVALID, UNAUTHORIZED, Audit())  # Malformed

    async def ready(self) -> tuple[bool, str]:
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            return False, f"token store unavailable: {exc}"
        return True, f"{len(self.table)} routes, {self.store.store.kind} store reachable"

    async def reload(self) -> None:
        """Re-read the route table and a file store; drop caches. Each part is replaced only
        when its new version is valid; a ConfigError says what was kept, for the caller to log."""
        settings = self.settings
        self.table = RouteTable.load(
            settings.routes,
            api_prefix=settings.api_prefix,
            relative_url_root=settings.relative_url_root,
        )
        self._access = {}
        backend = self.store.store
        if isinstance(backend, FileStore):
            await backend.reload()
        self.store.invalidate()
        if self.validator is not None:
            self.validator.invalidate()
        if isinstance(backend, FileStore) and backend.error is not None:
            raise PolicyFileError(f"{backend.error} (the previous grants stay in force)")

    async def close(self) -> None:
        await self.store.close()
        if self.validator is not None:
            await self.validator.close()

    # ---- the stages

    async def _authorize(
        self,
        credential: tokens.Credential,
        access: policy.Access,
        target: Target,
        lookup: _Lookup,
    ) -> Decision:
        """`_resolve`, asking the store for each value the cache did not have."""
        known: dict[str, Any] = {}
        try:
            while True:
                known[lookup.what] = await self._fetch(lookup, credential, target)
                decided = self._resolve(credential, access, target, **known)
                if isinstance(decided, Decision):
                    return decided
                lookup = decided
        except StoreUnavailable as exc:
            log.warning("token store unavailable: %s", exc)
            audit = _audit(credential, None, None, access)
            return policy.deny(Reason.STORE_UNAVAILABLE, STORE_DOWN, audit)

    async def _fetch(self, lookup: _Lookup, credential: tokens.Credential, target: Target) -> Any:
        if lookup.what == "job":
            return await self._job(credential, lookup.cached)
        if lookup.what == "accessed":
            return await self._accessed(target)
        return await self.store.fetch(lookup.cached)

    def _plan(
        self, view: RequestView, credential: tokens.Credential
    ) -> Decision | tuple[policy.Access, Target]:
        found = self.table.match(view.method, view.target)
        if isinstance(found, Refusal):
            return _bad_target(found, Audit(credential.fingerprint))
        if found is not None:
            route = found.route
            if route.path in TOKEN_EXCHANGE_PATHS:
                return policy.deny(
                    Reason.ROUTE_NOT_AVAILABLE,
                    CONAN_EXCHANGE_REFUSED,
                    Audit(credential.fingerprint),
                )
            cached = self._access.get(id(route))  # what the route requires, built once
            if cached is None or cached[0] is not route:
                cached = self._access[id(route)] = (route, _access(route))
            return cached[1], found.target
        not_available = policy.deny(
            Reason.ROUTE_NOT_AVAILABLE, NOT_AVAILABLE, Audit(credential.fingerprint)
        )
        if self.table.in_api(view.target):
            return not_available
        git = self._git(view)
        if git is None or not self.settings.git_http:
            return not_available
        # Cross-project push needs admin_repositories (ProjectPolicy
        # #cross_project_push_allowed_for_job_token?); reads need the allowlist only.
        required = ("admin_repositories",) if git.push else ()
        access = policy.Access(f"git {git.operation}", required, controllable=git.push, git=True)
        return access, Target(TargetKind.PROJECT, git.project)

    def _git(self, view: RequestView) -> gitpath.GitAccess | None:
        path, _, query = view.target.partition("?")
        if self._root:
            if not path.startswith(self._root + "/"):
                return None
            path = path[len(self._root) :]
        return gitpath.parse(view.method, path, query)

    def _resolve(
        self,
        credential: tokens.Credential,
        access: policy.Access,
        target: Target,
        job: Job | object | None = MISS,
        accessed: policy.Accessed | object | None = MISS,
        allowlist: Any = MISS,  # Allowlist | None, or MISS
    ) -> Decision | _Lookup:
        """The decision from what is known: the values given (fetched from the store), else the
        cache's. Returns the `_Lookup` of the first value neither has (no I/O here)."""
        store = self.store
        if job is MISS:
            job = store.peek_job(credential.digest)
            if not isinstance(job, Job) and (job is not None or self.validator is not None):
                return _Lookup("job", job)
        if not isinstance(job, Job) or job.revoked:
            audit = _audit(credential, None, None, access)
            return policy.deny(Reason.TOKEN_INVALID, UNAUTHORIZED, audit)
        if job.expired(store.wall()):
            audit = _audit(credential, job, None, access)
            return policy.deny(Reason.TOKEN_EXPIRED, UNAUTHORIZED, audit)
        kind = target.kind
        if kind is TargetKind.OWN:
            audit = _audit(credential, job, _label(job.project), access)
            return policy.allow(Reason.OWN_PROJECT, audit)
        if kind is TargetKind.NONE and not access.permissions:
            audit = _audit(credential, job, None, access)
            return policy.allow(Reason.UNCONTROLLED_ENDPOINT, audit)
        if accessed is MISS:
            accessed = self._peek_accessed(target)
            if accessed is MISS:
                return _Lookup("accessed")
        if not isinstance(accessed, policy.Accessed):
            audit = _audit(credential, job, target.ref, access)
            return policy.deny(Reason.TARGET_UNRESOLVED, UNRESOLVED, audit)
        project = accessed.project
        audit = _audit(credential, job, _label(project) if project else accessed.ref, access)
        if project is not None and not accessed.is_project(job.project):
            if allowlist is MISS:
                allowlist = store.peek(("allowlist", project.id))
                if allowlist is MISS:
                    return _Lookup("allowlist", ("allowlist", project.id))
        else:
            allowlist = None
        return policy.decide(job, accessed, allowlist, access, audit)

    async def _job(self, credential: tokens.Credential, cached: object) -> Job | None:
        job = cached
        if job is MISS:
            job = await self.store.fetch_job(credential.digest)
        if job is not None or self.validator is None:
            return job  # type: ignore[return-value]
        validated = await self.validator.job(credential.digest, credential.secret)
        if validated is None:
            return None
        # A job revoked in the store stays revoked whatever the upstream says.
        known = await self._lookup("job_id", validated.job_id)
        return known if isinstance(known, Job) and known.revoked else validated

    def _peek_accessed(self, target: Target) -> policy.Accessed | object:
        """The accessed project from the cache alone (MISS when the store must be asked)."""
        if target.kind is TargetKind.PROJECT and target.ref is not None:
            project = self.store.peek(("project", target.ref.lower()))
            if isinstance(project, Project) or project is None:
                return policy.accessed(target.ref, project)
        return MISS

    async def _accessed(self, target: Target) -> policy.Accessed | None:
        ref = target.ref
        if ref is None:
            return None
        if target.kind is TargetKind.PROJECT:
            project = await self._lookup("project", ref.lower())
            return policy.Accessed(ref, project if isinstance(project, Project) else None)
        job_id = project_key(ref)  # a job id reads like a project id: ASCII digits, a bigint
        if target.kind is TargetKind.JOB and isinstance(job_id, int):
            owner = await self._lookup("job_id", job_id)
            if isinstance(owner, Job) and owner.project.id:
                return policy.Accessed(str(owner.project.id), owner.project)
        return None  # GROUP, UNRESOLVED, an unknown job: never more permissive than GitLab

    async def _lookup(self, kind: str, arg: object) -> object:
        key = (kind, arg)
        value = self.store.peek(key)
        return await self.store.fetch(key) if value is MISS else value


@dataclass(frozen=True, slots=True)
class _Lookup:
    """What `Gate._resolve` needs from the store: `job` (`cached` is the cache's MISS or
    negative entry, for the upstream validation), `accessed`, or `allowlist` (`cached` is the
    store key)."""

    what: str
    cached: Any = None


def _audit(
    credential: tokens.Credential, job: Job | None, target: str | None, access: policy.Access
) -> Audit:
    fingerprint, route, required = credential.fingerprint, access.name, access.permissions
    if job is None:
        return make_audit(fingerprint, None, None, target, route, required, ())
    source = job.project.path or None
    return make_audit(fingerprint, job.job_id, source, target, route, required, ())


def _access(route: Route) -> policy.Access:
    return policy.Access(route.name, route.permissions, route.controllable, route.own_project_only)


def _label(project: Project) -> str:
    return f"#{project.id} {project.path}"


def _bad_target(refusal: Refusal, audit: Audit | None = None) -> Decision:
    return policy.deny(Reason.BAD_TARGET, f"400 Bad request - {refusal.detail}", audit or Audit())


def _validator(settings: Settings) -> UpstreamValidator | None:
    if not settings.upstream_validation:
        return None
    if settings.upstream is None:
        from gateway.errors import ConfigError

        raise ConfigError("--upstream-validation needs --upstream (the API server to ask)")
    return UpstreamValidator(
        settings.upstream,
        api_prefix=settings.api_prefix,
        relative_url_root=settings.relative_url_root,
        timeout=settings.store_timeout,
        ttl=settings.cache_ttl,
        size=settings.cache_size,
    )
