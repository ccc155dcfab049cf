"""The decision core's entry point: extract -> match -> resolve -> decide, with no aiohttp in sight.

CONTRACT used by the proxy (`gateway.proxy.handler`), the `check` command and future decision endpoints:
    gate = await Gate.open(settings)          # loads the route table, opens the token store
    gate.needs_body(view) -> bool             # may the body carry params (form/JSON/multipart)?
    await gate.evaluate(view) -> Decision     # never raises for a request; store faults -> 503 Decision
    await gate.ready() -> tuple[bool, str]    # route table loaded and store reachable, with detail
    await gate.reload() -> None               # SIGHUP: re-read route table/store; ConfigError keeps old
    await gate.close() -> None

Order of work (cheap first): target refusals, token extraction, route match and git recognition
use no I/O; a request without a job token is decided there, and so is a job token on a route
job tokens cannot use. Only then does `_resolve` gather the facts, one per line, each from the
cache (`CachedStore.peek_*`, no await) and from the store only on a miss: the token's job (then
optionally the upstream), then the accessed project, then its allowlist. After each fact a
`policy` rule may decide (gateway/core/policy.py: invalid, revoked and expired tokens, the runner
and trigger routes, the token's own project, an unresolved target, then `policy.decide`); the
gate gathers, policy decides. `evaluate_now` runs the same steps over the peeks alone and gives
up (None) at the first miss, so a cached request is decided without a Task.

An unrecognised value in a carrier GitLab shares with other credentials (`tokens.Candidate`) is
a job token when the store knows its digest, or (`--unknown-credential upstream`) when the
upstream's `GET /api/v4/job` accepts it; it is then judged like any job token. Otherwise it is
another credential: forwarded (reason `no_token`, and a log line saying why).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gateway.core import params, policy, tokens, visibility
from gateway.core.decision import Audit, Decision, Reason, bad_target, gitlab_message, refuse
from gateway.core.request import RequestView
from gateway.errors import ConfigError, PolicyFileError, StoreUnavailable
from gateway.routing import gitpath, targets
from gateway.routing.table import RouteTable
from gateway.routing.targets import Refusal
from gateway.routing.values import Route, RouteMatch, Target, TargetKind
from gateway.settings import Settings, UnknownCredential
from gateway.stores import Store, open_store
from gateway.stores.cache import MISS, CachedStore, CacheMiss
from gateway.stores.file import FileStore
from gateway.stores.grants import Allowlist, Job, Project, project_key
from gateway.stores.job_projects import JobProjects
from gateway.stores.packages import Miss, PackageLookup, PackageQuery, query_for
from gateway.stores.upstream import UpstreamValidator

__all__ = ["Gate"]

log = logging.getLogger("gateway.gate")  # the name log filters know (before the packages)

UNAUTHORIZED = policy.UNAUTHORIZED  # GitLab's 401 body, defined once in gateway/core/policy.py
NOT_AVAILABLE = gitlab_message(
    403, "This endpoint is not available to CI/CD job tokens through this gateway."
)
STORE_DOWN = gitlab_message(503, "The token store cannot answer; try again later.")
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
        packages: PackageLookup | None = None,
        job_projects: JobProjects | None = None,
    ) -> None:
        self.settings = settings
        self.table = table
        self.store = store
        self.validator = validator
        self.packages = packages  # group/instance package routes (gateway/stores/packages.py)
        self.job_projects = job_projects
        # The token reader for this instance's prefix and API path: the one every reader of
        # requests uses (the streamed-body guard and the decision listener get it from here).
        self.tokens = tokens.Reader(
            job_token_prefix=settings.job_token_prefix,
            api_prefix=settings.api_prefix,
            relative_url_root=settings.relative_url_root,
        )
        self._root = settings.relative_url_root
        self._ask_upstream = unknown_credential_mode(settings) is UnknownCredential.UPSTREAM
        # What each route of `table` requires, built once per route (by id, checked by identity).
        self._access: dict[int, tuple[Route, policy.Access]] = {}
        # The last match `needs_body` made, for `evaluate` of the same request (a pure function
        # of method, target and table: reused only for equal strings and the same table).
        self._matched: tuple[RouteTable, str, str, RouteMatch | Refusal | None] | None = None

    @classmethod
    async def open(cls, settings: Settings, *, store: Store | None = None) -> Gate:
        """Load the route table and open the store (given, or from `settings.store`).

        Raises ConfigError for a bad route table, store URL or grants file. A store that is
        down does not stop start-up: the gate answers 503 and `ready()` says why until it is back.
        """
        table = _load_table(settings)
        validator = _validator(settings)  # ConfigError first: before anything is opened
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
        if (warning := unknown_credential_warning(settings)) is not None:
            log.warning("%s", warning)
        return cls(
            settings,
            table,
            cached,
            validator,
            _package_lookup(settings),
            _job_projects(settings),
        )

    # ---- the contract

    def needs_body(self, view: RequestView) -> bool:
        """True for a form, JSON or multipart body Rails would read params from (any method
        can carry one). Framing headers may already be gone from the view (Transfer-Encoding
        is hop-by-hop), so only an explicit `Content-Length: 0` means "no body".

        The caller then evaluates a view with the body buffered, or, for a multipart/form-data
        body too large to buffer, evaluates the headers alone and checks the parts as they
        stream with `gateway.proxy.bodyguard.Guard` (the proxy does; see gateway/proxy/handler.py)."""
        if view.method in _METHODS_WITHOUT_BODY:
            return False
        if params.body_kind(view.headers, view.method) is None:
            return False
        if view.headers.get("Content-Length", "").strip() == "0":
            return False
        return not self._body_is_file(view)  # one route match, only for a body to parse

    async def evaluate(self, view: RequestView) -> Decision:
        """The verdict for one request; never raises for a request (store faults -> 503)."""
        started = self._start(view)
        if isinstance(started, tokens.Candidate):
            resolved = await self._candidate(view, started)
            if isinstance(resolved, Decision):
                return resolved
            started = self._decide(view, resolved)
        if isinstance(started, Decision):
            return started  # decided before any lookup
        return await self._resolve(*started)

    def evaluate_now(self, view: RequestView) -> Decision | None:
        """`evaluate`'s verdict when it needs no I/O (decided before any lookup, or every value
        from the cache), else None: then `await evaluate(view)`. For callers that answer cache
        hits without a Task (the decision listener, gateway/authz); never raises for a request."""
        started = self._start(view)
        if isinstance(started, Decision):
            return started
        if isinstance(started, tokens.Candidate):
            return None  # the store (or the upstream) must say what it is
        return self._resolve_now(*started)

    def _start(self, view: RequestView) -> Decision | tokens.Candidate | _Asked:
        """The verdict when no lookup is needed; else a candidate to resolve first
        (`_candidate`), or the job token, route and target to resolve (`_resolve`)."""
        found: tokens.Extraction | Decision
        try:
            found = self.tokens.read(view)
        except params.BodyError as exc:
            found = refuse(Reason.BAD_BODY, str(exc))
        if isinstance(found, tokens.Candidate):
            return found
        return self._decide(view, found)

    def _decide(
        self,
        view: RequestView,
        found: tokens.Credential | tokens.Conflict | tokens.Malformed | Decision | None,
    ) -> Decision | _Asked:
        if isinstance(found, tokens.Credential):
            # `RouteTable.match` refuses every target `check_target` refuses (and more).
            return self._plan(view, found)  # a Decision when refused before any lookup
        refusal = targets.check_target(view.target)
        if refusal is not None:
            return _bad_target(refusal)
        if isinstance(found, Decision):
            return found
        if found is None:
            if self.settings.require_job_token:
                return policy.deny(Reason.TOKEN_REQUIRED, UNAUTHORIZED, Audit())
            return Decision(allowed=True, reason=Reason.NO_TOKEN)
        if isinstance(found, tokens.Conflict):
            message = gitlab_message(400, f"Conflicting credentials: {found.detail}.")
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
        self.table = _load_table(self.settings)
        self._access = {}
        backend = self.store.store
        if isinstance(backend, FileStore):
            await backend.reload()
        self.store.invalidate()
        if self.validator is not None:
            self.validator.invalidate()
        if self.packages is not None:
            self.packages.invalidate()
        if self.job_projects is not None:
            self.job_projects.invalidate()
        if isinstance(backend, FileStore) and backend.error is not None:
            raise PolicyFileError(f"{backend.error} (the previous grants stay in force)")

    async def close(self) -> None:
        await self.store.close()
        if self.validator is not None:
            await self.validator.close()
        if self.packages is not None:
            await self.packages.close()
        if self.job_projects is not None:
            await self.job_projects.close()

    # ---- the stages

    async def _candidate(
        self, view: RequestView, candidate: tokens.Candidate
    ) -> tokens.Credential | tokens.Conflict | Decision | None:
        """What an unrecognised value in a shared carrier is: a job token (the store knows its
        digest, or the upstream check says so) -> its Credential, or a Conflict when other
        credentials stand next to it; else None (another credential, forwarded)."""
        refusal = targets.check_target(view.target)
        if refusal is not None:
            return _bad_target(refusal, Audit(candidate.fingerprint))
        try:
            job = self.store.peek_job(candidate.digest)
            if job is MISS:
                job = await self.store.fetch_job(candidate.digest)
            if job is None and self._ask_upstream and self.validator is not None:
                job = await self.validator.job(candidate.digest, candidate.secret)
        except StoreUnavailable as exc:
            log.warning("token store unavailable: %s", exc)
            audit = Audit(candidate.fingerprint)
            return policy.deny(Reason.STORE_UNAVAILABLE, STORE_DOWN, audit)
        if job is None:
            why = (
                "the upstream says it is no job token"
                if self._ask_upstream
                else ("unknown to the store (--unknown-credential forward)")
            )
            log.info(
                "credential in %s (%s) forwarded as another credential: %s",
                candidate.carrier,
                candidate.fingerprint,
                why,
            )
            return None
        return candidate.conflict() or candidate.credential()

    async def _resolve(
        self, credential: tokens.Credential, access: policy.Access, target: Aim
    ) -> Decision:
        """The verdict on a job token: each fact from the cache, awaiting the store only on a
        miss, and `policy` after each. Store faults -> 503 store_unavailable (fail closed).
        `_resolve_now` runs the same steps over the cache alone: keep the two in step."""
        store = self.store
        try:
            job = store.peek_job(credential.digest)
            if job is MISS:
                job = await store.fetch_job(credential.digest)
            if job is None and self.validator is not None:
                job = await self._validate(credential)
            valid = policy.judge_job(credential, job, target, access, store.wall())
            if isinstance(valid, Decision):
                return valid
            accessed: policy.Accessed | policy.NoPackage | CacheMiss | None
            accessed = self._peek_accessed(target)
            if accessed is MISS:
                accessed = await self._accessed(target, valid)
            if not isinstance(accessed, policy.Accessed):
                return policy.unresolved(credential, valid, target, accessed, access)
            allowlist: Allowlist | None = None
            project_id = policy.allowlist_of(valid, accessed)
            if project_id is not None:
                peeked = store.peek_allowlist(project_id)
                allowlist = await store.fetch_allowlist(project_id) if peeked is MISS else peeked
        except StoreUnavailable as exc:
            log.warning("token store unavailable: %s", exc)
            audit = policy.job_audit(credential, None, None, access)
            return policy.deny(Reason.STORE_UNAVAILABLE, STORE_DOWN, audit)
        audit = policy.target_audit(credential, valid, accessed, access)
        enforce = self.settings.enforce_allowlist
        return policy.decide(valid, accessed, allowlist, access, audit, enforce_allowlist=enforce)

    def _resolve_now(
        self, credential: tokens.Credential, access: policy.Access, target: Aim
    ) -> Decision | None:
        """`_resolve`'s verdict from the cache alone; None at the first fact it lacks."""
        store = self.store
        job = store.peek_job(credential.digest)
        if job is MISS or (job is None and self.validator is not None):
            return None  # the store, or the upstream, must be asked
        valid = policy.judge_job(credential, job, target, access, store.wall())
        if isinstance(valid, Decision):
            return valid
        accessed = self._peek_accessed(target)
        if accessed is MISS:
            return None
        allowlist: Allowlist | None = None
        project_id = policy.allowlist_of(valid, accessed)
        if project_id is not None:
            peeked = store.peek_allowlist(project_id)
            if peeked is MISS:
                return None
            allowlist = peeked
        audit = policy.target_audit(credential, valid, accessed, access)
        enforce = self.settings.enforce_allowlist
        return policy.decide(valid, accessed, allowlist, access, audit, enforce_allowlist=enforce)

    async def _validate(self, credential: tokens.Credential) -> Job | None:
        """The upstream's answer for a token the store does not know (`--upstream-validation`);
        None without a validator."""
        if self.validator is None:
            return None
        validated = await self.validator.job(credential.digest, credential.secret)
        if validated is None:
            return None
        # A job revoked in the store stays revoked whatever the upstream says.
        known = await self._job_by_id(validated.job_id)
        return known if known is not None and known.revoked else validated

    def _plan(self, view: RequestView, credential: tokens.Credential) -> Decision | _Asked:
        found = self._match(view)
        if isinstance(found, Refusal):
            return _bad_target(found, Audit(credential.fingerprint))
        if found is not None:
            route = found.route
            ruled = policy.route_rule(route.rule, route.name, credential)
            if ruled is not None:
                return ruled
            cached = self._access.get(id(route))  # what the route requires, built once
            if cached is None or cached[0] is not route:
                cached = self._access[id(route)] = (route, _access(route))
            aim = self._package_target(route, found.params, found.target, view.target)
            return credential, cached[1], aim
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
        access = policy.Access(
            f"git {git.operation}", required, controllable=git.push, git=True, push=git.push
        )
        return credential, access, Target(TargetKind.PROJECT, git.project)

    def _git(self, view: RequestView) -> gitpath.GitAccess | None:
        path, _, query = view.target.partition("?")
        if self._root:
            if not path.startswith(self._root + "/"):
                return None
            path = path[len(self._root) :]
        return gitpath.parse(view.method, path, query)

    def _peek_accessed(self, target: Aim) -> policy.Accessed | CacheMiss:
        """The accessed project from the cache alone (MISS when `_accessed` must ask)."""
        if isinstance(target, PackageQuery):
            return MISS
        ref = target.ref
        if target.kind is TargetKind.PROJECT and ref is not None:
            project = self.store.peek_project(ref.lower())
            if project is not MISS:
                return policy.accessed(ref, project)
        return MISS

    async def _accessed(self, target: Aim, job: Job) -> policy.Accessed | policy.NoPackage | None:
        """The project the request touches (None: unresolved, refused), asking the store (and
        the upstream) for what the cache does not hold; `job` is the token's own."""
        if isinstance(target, PackageQuery):
            return await self._package_project(target)
        ref = target.ref
        if ref is None:
            return None
        if target.kind is TargetKind.PROJECT:
            return policy.Accessed(ref, await self._project(ref.lower()))
        job_id = project_key(ref)  # a job id reads like a project id: ASCII digits, a bigint
        if target.kind is TargetKind.JOB and isinstance(job_id, int):
            owner = await self._job_by_id(job_id)
            if owner is not None and owner.project.id:
                return policy.Accessed(str(owner.project.id), await self._full(owner.project))
            return await self._dependency(job_id, job)
        return None  # GROUP, UNRESOLVED, an unknown job: never more permissive than GitLab

    async def _dependency(self, job_id: int, job: Job) -> policy.Accessed | None:
        """The project of a job the store does not hold, when the upstream places it in the
        token's own project (gateway/stores/job_projects.py); else None (unresolved: refused)."""
        if not job.project.id:
            return None
        if job.job_id == job_id or (
            self.job_projects is not None
            and await self.job_projects.job_in_project(job_id, job.project.id)
        ):
            # the token's own job, or one the upstream finds in the token's own project
            return policy.Accessed(str(job.project.id), await self._full(job.project))
        return None

    def _body_is_file(self, view: RequestView) -> bool:
        """Workhorse takes this route's body as an uploaded file (route_facts
        WORKHORSE_BODY_FILES): Rails never reads parameters from it, so neither do we."""
        found = self.table.match(view.method, view.target)
        self._matched = (self.table, view.method, view.target, found)
        return isinstance(found, RouteMatch) and found.route.body_file

    def _match(self, view: RequestView) -> RouteMatch | Refusal | None:
        matched = self._matched
        if (
            matched is not None
            and matched[0] is self.table
            and matched[2] == view.target
            and matched[1] == view.method
        ):
            return matched[3]
        return self.table.match(view.method, view.target)

    async def _full(self, project: Project) -> Project:
        """The store's record of a job's project, with its visibility (a job record carries
        only id and path); the job's copy when the store has no project record."""
        known = await self._project(str(project.id))
        return project if known is None else known

    async def _project(self, ref: str) -> Project | None:
        project = self.store.peek_project(ref)
        if project is MISS:
            project = await self.store.fetch_project(ref)
        return project

    async def _job_by_id(self, job_id: int) -> Job | None:
        job = self.store.peek_job_by_id(job_id)
        if job is MISS:
            job = await self.store.fetch_job_by_id(job_id)
        return job

    # ---- group and instance package routes (issue 10, point 5)

    def _package_target(
        self, route: Route, matched: Mapping[str, str], target: Target, request_target: str
    ) -> Aim:
        """The package a group/instance package route is about (gateway/stores/packages.py),
        when it can be judged: GitLab finds no package (no lookup needed), or the operator
        configured the lookup (`package_lookup_token`). Else the route's own target.
        The request's raw path (`request_target` without its query) is the route a miss is
        confirmed on; split only here, on these routes, not on every matched request."""
        if target.kind not in (TargetKind.GROUP, TargetKind.UNRESOLVED):
            return target
        group = target.ref if target.kind is TargetKind.GROUP else None
        query = query_for(route.path, matched, group, request_target.partition("?")[0])
        if query is None or (query.needs_lookup and self.packages is None):
            return target
        return query

    async def _package_project(
        self, query: PackageQuery
    ) -> policy.Accessed | policy.NoPackage | None:
        """The package's project; a NoPackage when the group holds none; None (unresolved)
        when several projects hold it (GitLab would pick one; the gateway cannot tell which),
        or when GitLab's own route finds a package the packages API did not list."""
        if not query.needs_lookup:
            return _no_package(query)
        assert self.packages is not None  # `_package_target` made sure of it
        ids = await self.packages.projects(query)
        if not ids:
            # SECURITY: an empty listing alone is not "no package": the packages API hides
            # packages GitLab's route finders serve (gateway/stores/packages.py). GitLab's own
            # route, asked with the read token, confirms the miss or the request is refused.
            if await self.packages.probe(query):
                return None
            return _no_package(query)
        if len(ids) > 1:
            return None
        return policy.Accessed(str(ids[0]), await self._project(str(ids[0])))


Aim = Target | PackageQuery  # what a request touches: a route's target, or a package to find
# A job token's request once the route is matched: what `_resolve` decides on.
_Asked = tuple[tokens.Credential, policy.Access, Aim]


def _no_package(query: PackageQuery) -> policy.NoPackage:
    """What GitLab answers when the group holds no such package (PackageQuery.miss)."""
    if query.miss is Miss.PROJECT_NOT_FOUND:
        return policy.NoPackage.PROJECT_NOT_FOUND
    return policy.NoPackage.FORWARD


def _access(route: Route) -> policy.Access:
    return policy.Access(
        route.name,
        route.permissions,
        route.controllable,
        route.own_project_only,
        rule=route.rule.value,
        public_features=visibility.public_features(route.method, route.path),
    )


def _load_table(settings: Settings) -> RouteTable:
    return RouteTable.load(
        settings.routes,
        api_prefix=settings.api_prefix,
        relative_url_root=settings.relative_url_root,
        supplementary=settings.routes_supplementary,
    )


def _bad_target(refusal: Refusal, audit: Audit | None = None) -> Decision:
    return bad_target(refusal, audit)  # the one converter, shared with the proxy's precheck


def unknown_credential_mode(settings: Settings) -> UnknownCredential:
    """`--unknown-credential` with `auto` resolved: `upstream` when upstream validation is on."""
    mode = settings.unknown_credential
    if mode is UnknownCredential.AUTO:
        upstream = settings.upstream_validation
        return UnknownCredential.UPSTREAM if upstream else UnknownCredential.FORWARD
    return mode


def unknown_credential_warning(settings: Settings) -> str | None:
    """The start-up warning when `--unknown-credential` resolves to `forward`, else None.

    GitLab reads a job token from carriers other credentials share: `Authorization: Bearer`
    (Gitlab::Auth::AuthFinders#find_user_from_job_bearer_token), HTTP Basic (the package
    helpers' `find_job_from_http_basic_auth`, lib/api/helpers/packages_manager_clients_helpers.rb)
    and the route families' own (gateway.core.carriers). Job tokens of GitLab < 16.9 carry no
    `glcbt-` prefix, so there only GitLab can tell one from another credential; `forward`
    passes such a value on unjudged: the gateway enforces nothing for it (gateway/core/tokens.py)."""
    if unknown_credential_mode(settings) is not UnknownCredential.FORWARD:
        return None
    how = (
        "--unknown-credential forward"
        if settings.unknown_credential is UnknownCredential.FORWARD
        else "--unknown-credential auto without --upstream-validation"
    )
    return (
        # No literal token prefix here: tests and operators grep logs for it as a leaked token.
        f"unknown credentials are forwarded unjudged ({how}): a job token without GitLab's "
        "job-token prefix (GitLab < 16.9) in a carrier other credentials share (Bearer, "
        "Basic, a bare Authorization, X-Nuget-Apikey) reaches the upstream without the "
        "gateway's policy; set --upstream-validation (GATEWAY_UPSTREAM_VALIDATION=true) so "
        "that --unknown-credential auto/upstream asks the upstream's GET /api/v4/job"
    )


def _job_projects(settings: Settings) -> JobProjects | None:
    if settings.upstream is None or settings.package_lookup_token is None:
        return None
    return JobProjects(
        settings.upstream,
        settings.package_lookup_token.get_secret_value(),
        api_prefix=settings.api_prefix,
        relative_url_root=settings.relative_url_root,
        timeout=settings.store_timeout,
        ttl=settings.cache_ttl,
        size=settings.cache_size,
    )


def _package_lookup(settings: Settings) -> PackageLookup | None:
    token = settings.package_lookup_token
    if token is None:
        return None
    if settings.upstream is None:
        raise ConfigError("--package-lookup-token needs --upstream (the API server to ask)")
    return PackageLookup(
        settings.upstream,
        api_prefix=settings.api_prefix,
        relative_url_root=settings.relative_url_root,
        token=token.get_secret_value(),
        timeout=settings.store_timeout,
        ttl=settings.package_lookup_ttl,
        size=settings.cache_size,
    )


def _validator(settings: Settings) -> UpstreamValidator | None:
    if settings.unknown_credential is UnknownCredential.UPSTREAM and not (
        settings.upstream_validation
    ):
        raise ConfigError(
            "--unknown-credential upstream needs --upstream-validation (the upstream's "
            "GET /api/v4/job is what tells a job token from another credential); use "
            "--unknown-credential forward to pass unrecognised credentials on instead"
        )
    if not settings.upstream_validation:
        return None
    if settings.upstream is None:
        raise ConfigError("--upstream-validation needs --upstream (the API server to ask)")
    return UpstreamValidator(
        settings.upstream,
        api_prefix=settings.api_prefix,
        relative_url_root=settings.relative_url_root,
        timeout=settings.store_timeout,
        ttl=settings.cache_ttl,
        size=settings.cache_size,
        negative_ttl=settings.negative_cache_ttl,
        negative_size=settings.negative_cache_size,
    )
