"""Least-privilege allowlists from observed traffic, and their difference from a store's grants.

The model is GitLab's (gateway/stores/grants.py, gateway/core/policy.py): an allowlist belongs to the
accessed (target) project; the source's nearest entry decides; a route needs ALL its policies
(`Ci::JobToken::Scope#policies_allowed?`, app/models/ci/job_token/scope.rb), and `admin_X`
implies `read_X` (app/models/concerns/ci/job_token/expanded_job_token_policies.rb).

`suggest(observations)` groups the allowlist-dependent traffic (requests denied only for want of
a grant, and cross-project requests allowed through the allowlist) by target and source. For
each pair the suggested entry is a *project* entry with `default_permissions: false` and
`policies` = the permissions those requests required: `admin_X` only when a route needing it (a
write) was observed, `read_X` otherwise. Per target that is the smallest allowlist admitting
every such request: one entry per source that called, each granting nothing it did not use.
Requests refused for any other reason contribute nothing (`observations.WANTS_GRANT`).

`plan(suggestion, current)` compares with a store's content: what must be added so that every
request denied for want of a grant is admitted (never taking anything away: a source on a group
entry gets a project entry with the group's policies plus what it lacked, because a project entry
replaces the group's for it; an allowlist that is off stays off), and the removal candidates (entries never used in the observed
period, permissions none of their users needed, `default_permissions` that policies could
replace). Removal is left to a person: an observed period may miss a quarterly job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.stores.grants import Allowlist, AllowlistEntry, EntryKind, Grants, Project, expand
from gateway.tools.observations import Observation

__all__ = [
    "Addition",
    "Plan",
    "Removal",
    "Suggestion",
    "Use",
    "least",
    "plan",
    "suggest",
]


def least(permissions: Iterable[str]) -> tuple[str, ...]:
    """The shortest policy list granting `permissions`: `read_X` dropped where `admin_X` is
    listed (admin implies read, never the reverse). Sorted."""
    names = set(permissions)
    return tuple(
        sorted(
            p
            for p in names
            if not (p.startswith("read_") and "admin_" + p[len("read_") :] in names)
        )
    )


@dataclass(slots=True)
class Use:
    """The allowlist-dependent traffic from one source project to one target project."""

    target: Project
    source: Project
    needed: set[str] = field(default_factory=set)  # every permission a request required
    requests: int = 0
    wanting: int = 0  # denied (or would be, in dry-run) only for want of a grant
    routes: Counter[str] = field(default_factory=Counter)
    first_seen: str | None = None
    last_seen: str | None = None

    @property
    def policies(self) -> tuple[str, ...]:
        return least(self.needed)

    def add(self, observation: Observation) -> None:
        count = observation.count
        self.needed.update(observation.required)
        self.requests += count
        self.wanting += count if observation.wants_grant else 0
        self.routes[observation.route or "?"] += count
        first, last = observation.since or observation.time, observation.time
        if first is not None and last is not None:
            self.first_seen = first if self.first_seen is None else min(self.first_seen, first)
            self.last_seen = last if self.last_seen is None else max(self.last_seen, last)


@dataclass(slots=True)
class Suggestion:
    """Per (target id, source id), the observed use; and what was not suggested, and why."""

    uses: dict[tuple[int, int], Use] = field(default_factory=dict)
    # Denials no grant lifts, by reason code (these are never suggested).
    refused_otherwise: Counter[str] = field(default_factory=Counter)
    # Denied for want of a grant on a project the store did not know (no id to grant on).
    unknown_targets: Counter[str] = field(default_factory=Counter)
    # Denied for want of a grant from a job whose project the log does not name.
    unknown_sources: Counter[str] = field(default_factory=Counter)
    wanting: int = 0

    def targets(self) -> dict[int, list[Use]]:
        """Uses grouped by target id, each list sorted by source path."""
        grouped: dict[int, list[Use]] = {}
        for (target_id, _), use in sorted(self.uses.items(), key=lambda kv: kv[1].source.key):
            grouped.setdefault(target_id, []).append(use)
        return dict(sorted(grouped.items(), key=lambda kv: kv[1][0].target.key))

    def projects(self) -> list[Project]:
        """Every project a suggested entry names (targets and sources), by id."""
        found: dict[int, Project] = {}
        for use in self.uses.values():
            found.setdefault(use.target.id, use.target)
            found.setdefault(use.source.id, use.source)
        return sorted(found.values(), key=lambda p: p.id)

    def grants(self) -> Grants:
        """The suggestion alone as store content: projects and allowlists, no jobs."""
        allowlists = []
        for target_id, uses in self.targets().items():
            entries = tuple(_entry(use.source, use.policies) for use in uses)
            allowlists.append(Allowlist(target_id, True, entries))
        return Grants(tuple(self.projects()), (), tuple(allowlists))


def _entry(source: Project, policies: tuple[str, ...]) -> AllowlistEntry:
    return AllowlistEntry(EntryKind.PROJECT, source.key, source.id, False, policies)


def suggest(observations: Iterable[Observation]) -> Suggestion:
    """The suggestion for `observations` (see the module docstring)."""
    suggestion = Suggestion()
    for observation in observations:
        count = observation.count
        if observation.denied and not observation.wants_grant:
            suggestion.refused_otherwise[observation.reason.value] += count
            continue
        if observation.wants_grant:
            suggestion.wanting += count
            if observation.target_id is None:
                suggestion.unknown_targets[observation.target or "?"] += count
                continue
            if observation.source_id is None or observation.source_path is None:
                # A job the upstream validated without naming its project's path.
                job = observation.job_id
                label = f"job {job}" if job is not None else observation.fingerprint
                suggestion.unknown_sources[label] += count
                continue
        if not observation.uses_allowlist:
            continue
        # `uses_allowlist` implies both ids and paths are known.
        source = Project(observation.source_id or 0, observation.source_path or "")
        target = Project(observation.target_id or 0, observation.target_path or "")
        key = (target.id, source.id)
        use = suggestion.uses.get(key)
        if use is None:
            use = suggestion.uses[key] = Use(target, source)
        else:  # the latest path wins (a project renamed during the period)
            use.target, use.source = target, source
        use.add(observation)
    return suggestion


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Addition:
    """What the suggestion adds to one target's allowlist for one source.

    `existing`: the source already has a project entry there (GitLab:
    `ciJobTokenScopeUpdatePolicies`), else a new entry (`ciJobTokenScopeAddGroupOrProject`).
    `policies` is the entry's complete list after the change; `added` what it did not grant.
    """

    target: Project
    source: Project
    policies: tuple[str, ...]
    added: tuple[str, ...]
    existing: bool
    wanting: int
    inherited_from: str | None = None  # the group entry whose policies a new entry keeps


@dataclass(frozen=True, slots=True)
class Removal:
    """A candidate for removal: an entry never used, or what its users never needed.

    `keep` is what the observed users of the entry needed (`least`); `unused` the entry's
    policies outside it (`["default_permissions"]` for a legacy entry). Empty `keep` with
    `used` 0: the whole entry went unused.
    """

    target: Project
    kind: EntryKind
    source: str
    used: int
    keep: tuple[str, ...]
    unused: tuple[str, ...]


@dataclass(slots=True)
class Plan:
    additions: list[Addition] = field(default_factory=list)
    removals: list[Removal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    merged: Grants = field(default_factory=Grants)


def plan(suggestion: Suggestion, current: Grants) -> Plan:
    """The suggestion against `current`: additions, removal candidates, and the merged content
    (`current` plus the additions, nothing removed)."""
    result = Plan()
    projects = {p.id: p for p in current.projects}
    paths = {p.key: p.id for p in current.projects}
    lists = {a.project_id: a for a in current.allowlists}
    for (target_id, _), use in sorted(suggestion.uses.items()):
        if not _known(use, projects, paths, result.notes):
            continue
        target, source = projects[use.target.id], projects[use.source.id]
        allowlist = lists.get(target_id) or Allowlist(target_id)
        addition = _addition(use, target, source, allowlist, result.notes)
        if addition is None:
            continue
        result.additions.append(addition)
        lists[target_id] = _with_entry(allowlist, addition)
    result.removals = _removals(suggestion, current, projects)
    allowlists = tuple(sorted(lists.values(), key=lambda a: a.project_id))
    result.merged = Grants(
        tuple(sorted(projects.values(), key=lambda p: p.id)), current.jobs, allowlists
    )
    return result


def _known(use: Use, projects: dict[int, Project], paths: dict[str, int], notes: list[str]) -> bool:
    """Both projects of `use` in the store (added when missing and not clashing)."""
    for project in (use.target, use.source):
        known = projects.get(project.id)
        if known is not None:
            continue
        clash = paths.get(project.key)
        if clash is not None:
            notes.append(
                f"{project.path} is #{project.id} in the log but #{clash} in the store: "
                f"nothing suggested for {use.source.path} -> {use.target.path}"
            )
            return False
        projects[project.id] = project
        paths[project.key] = project.id
    return True


def _addition(
    use: Use, target: Project, source: Project, allowlist: Allowlist, notes: list[str]
) -> Addition | None:
    if use.wanting == 0:
        return None  # everything it did was allowed: nothing to add
    if not allowlist.enabled:  # nothing can be denied for want of a grant there
        return None
    own = next(
        (e for e in allowlist.entries if e.kind is EntryKind.PROJECT and e.source_id == source.id),
        None,
    )
    nearest = own or allowlist.nearest(source)
    if nearest is not None and nearest.default_permissions:
        notes.append(
            f"{source.path} -> {target.path}: the store's entry has default permissions, yet "
            "requests were denied for want of a grant (grants changed during the period?)"
        )
        return None
    base = nearest.policies if nearest is not None else ()
    granted = expand(base)
    missing = least(p for p in use.needed if p not in granted)
    if not missing and nearest is not None:
        return None  # admitted already (a route without policies needs the entry alone)
    inherited = None
    if own is None and nearest is not None:
        inherited = f"group {nearest.source}"
    return Addition(
        target,
        source,
        least([*base, *missing]),
        missing,
        existing=own is not None,
        wanting=use.wanting,
        inherited_from=inherited,
    )


def _with_entry(allowlist: Allowlist, addition: Addition) -> Allowlist:
    entry = _entry(addition.source, addition.policies)
    entries = [
        e
        for e in allowlist.entries
        if not (e.kind is EntryKind.PROJECT and e.source_id == addition.source.id)
    ]
    return Allowlist(allowlist.project_id, allowlist.enabled, (*entries, entry))


def _removals(
    suggestion: Suggestion, current: Grants, projects: dict[int, Project]
) -> list[Removal]:
    """Entries of `current` and their policies that no observed use needed."""
    removals: list[Removal] = []
    for allowlist in sorted(current.allowlists, key=lambda a: a.project_id):
        target = projects.get(allowlist.project_id) or Project(allowlist.project_id, "?")
        users: dict[int, list[Use]] = {id(e): [] for e in allowlist.entries}
        for (target_id, _), use in suggestion.uses.items():
            if target_id != allowlist.project_id:
                continue
            entry = allowlist.nearest(projects.get(use.source.id, use.source))
            if entry is not None:
                users[id(entry)].append(use)
        for entry in allowlist.entries:
            removal = _removal(target, entry, users[id(entry)])
            if removal is not None:
                removals.append(removal)
    return removals


def _removal(target: Project, entry: AllowlistEntry, users: list[Use]) -> Removal | None:
    needed = set().union(*(u.needed for u in users)) if users else set()
    used = sum(u.requests for u in users)
    if entry.default_permissions:
        keep = least(needed)
        return Removal(target, entry.kind, entry.source, used, keep, ("default_permissions",))
    keep = least(needed)
    covered = expand(keep)  # `admin_X` kept where only `read_X` was needed is unused too
    unused = tuple(p for p in entry.policies if p not in covered)
    if users and not unused:
        return None
    return Removal(target, entry.kind, entry.source, used, keep, unused)
