"""How `suggest` prints: grants YAML (`store load` input), GitLab GraphQL mutations, a report.

GraphQL: GitLab's mutations take one `input` object (Relay style); argument names are the Ruby
ones camel-cased, the policy enum values the policy names upper-cased:
- `ciJobTokenScopeAddGroupOrProject(projectPath, targetPath, defaultPermissions,
  jobTokenPolicies)`: app/graphql/mutations/ci/job_token_scope/add_group_or_project.rb
  (`AddGroupOrProject#resolve`); `default_permissions` defaults to TRUE there, so the mutation
  always says `defaultPermissions: false`.
- `ciJobTokenScopeUpdatePolicies(projectPath, targetPath, defaultPermissions, jobTokenPolicies)`,
  all required: app/graphql/mutations/ci/job_token_scope/update_job_token_policies.rb
  (`UpdateJobTokenPolicies#resolve`); it replaces the entry's policy list.
- enum `CiJobTokenScopePolicies`: `policy[:value].to_s.upcase`
  (app/graphql/types/ci/job_token_scope/policies_enum.rb).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import yaml

from gateway.stores.grants import Allowlist, Grants, Job
from gateway.tools.observations import Reading
from gateway.tools.suggest import Plan, Suggestion

__all__ = ["grants_document", "graphql", "report", "yaml_text"]

_STORE_LOAD_REPLACES = (
    "# `store load` REPLACES a store's whole content. This file holds only the suggested\n"
    "# allowlists and the projects they name: merge it into your grants file, or run\n"
    "# `suggest --store URL` for the store's content with the suggestion added.\n"
)


def grants_document(grants: Grants) -> dict[str, Any]:
    """`grants` as the interchange file's document (gateway/stores/grants.py): projects by id, jobs by
    token digest (never a token), entries by source path with an explicit kind."""
    paths = {p.id: p.path for p in grants.projects}
    document: dict[str, Any] = {"projects": [{"id": p.id, "path": p.path} for p in grants.projects]}
    if grants.jobs:
        document["jobs"] = [_job(job) for job in grants.jobs]
    document["allowlists"] = [_allowlist(a, paths) for a in grants.allowlists]
    return document


def _job(job: Job) -> dict[str, Any]:
    item: dict[str, Any] = {
        "token_sha256": job.digest,
        "job_id": job.job_id,
        "project": job.project.id,
    }
    if job.expires_at is not None:
        when = datetime.fromtimestamp(job.expires_at, UTC)
        item["expires_at"] = when.isoformat().replace("+00:00", "Z")
    return item


def _allowlist(allowlist: Allowlist, paths: dict[int, str]) -> dict[str, Any]:
    item: dict[str, Any] = {"project": paths.get(allowlist.project_id, allowlist.project_id)}
    if not allowlist.enabled:
        item["enabled"] = False
    entries = []
    for entry in allowlist.entries:
        source: str | int = entry.source
        if entry.source_id is not None:
            source = paths.get(entry.source_id, entry.source_id)
        row: dict[str, Any] = {"source": source, "kind": entry.kind.value}
        row["default_permissions"] = entry.default_permissions
        if not entry.default_permissions:
            row["policies"] = list(entry.policies)
        entries.append(row)
    item["entries"] = entries
    return item


def yaml_text(grants: Grants, *, header: str, complete: bool) -> str:
    """The grants file text: a comment header, then the document (leaf lists in flow style)."""
    body = yaml.safe_dump(
        grants_document(grants), sort_keys=False, default_flow_style=None, width=4096
    )
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    intro = "\n".join(lines) + "\n"
    return intro + ("" if complete else _STORE_LOAD_REPLACES) + body


def _mutation(alias: str, name: str, target: str, source: str, policies: tuple[str, ...]) -> str:
    enums = ", ".join(p.upper() for p in policies)
    arguments = (
        f"projectPath: {json.dumps(target)}, targetPath: {json.dumps(source)}, "
        f"defaultPermissions: false, jobTokenPolicies: [{enums}]"
    )
    return f"  {alias}: {name}(input: {{{arguments}}}) {{\n    errors\n  }}"


_ADD = "ciJobTokenScopeAddGroupOrProject"
_UPDATE = "ciJobTokenScopeUpdatePolicies"


def graphql(suggestion: Suggestion, result: Plan | None, *, header: str) -> str:
    """One GraphQL document applying the suggestion on GitLab (aliases `add1`, `update1`...).

    With a plan, new entries are added and existing ones updated. Without one every suggested
    entry is an add; for a source already on the allowlist GitLab then answers in `errors`
    ("Target project is already in the job token scope": `AddProjectService#execute` rescues
    `ActiveRecord::RecordNotUnique`, app/services/ci/job_token_scope/add_project_service.rb),
    and the same arguments to `ciJobTokenScopeUpdatePolicies` apply instead (a comment says so).
    """
    lines = [f"# {line}" for line in header.splitlines()]
    changes: list[tuple[bool, str, str, tuple[str, ...]]] = []  # (update?, target, source, ...)
    if result is None:
        for uses in suggestion.targets().values():
            changes += [(False, u.target.path, u.source.path, u.policies) for u in uses]
        if changes:
            lines.append(f"# A source already on a project's allowlist: use {_UPDATE} with")
            lines.append("# the same arguments (it replaces the entry's policies).")
    else:
        changes = [(a.existing, a.target.path, a.source.path, a.policies) for a in result.additions]
    if not changes:
        return "\n".join([*lines, "# nothing to change"]) + "\n"
    counts = {_ADD: 0, _UPDATE: 0}
    body = []
    for update, target, source, policies in changes:
        name = _UPDATE if update else _ADD
        counts[name] += 1
        alias = f"{'update' if update else 'add'}{counts[name]}"
        body.append(_mutation(alias, name, target, source, policies))
    return "\n".join([*lines, "mutation SuggestedJobTokenGrants {", *body, "}"]) + "\n"


def report(reading: Reading, suggestion: Suggestion, result: Plan | None, store: str | None) -> str:
    """The readable account: what was read, what is suggested and why, what was not."""
    out = [f"Read: {reading.summary()}."]
    if reading.first_seen:
        out.append(f"Period: {reading.first_seen} .. {reading.last_seen}.")
    dry = sum(o.count for o in reading.observations if o.wants_grant and o.dry_run)
    out.append(
        f"Denied only for want of a grant: {suggestion.wanting} "
        f"({dry} in dry-run, forwarded anyway)."
    )
    if suggestion.refused_otherwise:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(suggestion.refused_otherwise.items()))
        out.append(f"Refused for other reasons (nothing suggested): {reasons}.")
    if suggestion.unknown_targets:
        names = ", ".join(f"{t} ({n})" for t, n in sorted(suggestion.unknown_targets.items()))
        out.append(
            f"Denied on projects the store does not know (add them to the store first): {names}."
        )
    if suggestion.unknown_sources:
        names = ", ".join(f"{t} ({n})" for t, n in sorted(suggestion.unknown_sources.items()))
        out.append(f"Denied for jobs whose project the log does not name: {names}.")
    out += ["", "Suggested allowlists (project entries, default_permissions: false):"]
    targets = suggestion.targets()
    if not targets:
        out.append("  (none: no allowlist-dependent traffic observed)")
    for uses in targets.values():
        out.append(f"  {uses[0].target.path} (#{uses[0].target.id})")
        for use in uses:
            out += _use_lines(use)
    if result is not None:
        out += ["", *_plan_lines(result, store)]
    return "\n".join(out) + "\n"


def _use_lines(use: Any) -> list[str]:
    grant = ", ".join(use.policies) or "(no policies: routes without permissions)"
    lines = [
        f"    {use.source.path} (#{use.source.id}): {grant}",
        f"      {use.requests} requests, {use.wanting} denied for want of a grant, "
        f"{use.first_seen} .. {use.last_seen}",
    ]
    for route, count in sorted(use.routes.items()):
        lines.append(f"      {count:>5}  {route}")
    return lines


def _plan_lines(result: Plan, store: str | None) -> list[str]:
    out = [f"Against the current grants ({store}):"]
    if not result.additions:
        out.append("  adds nothing: every observed request is already admitted")
    for a in result.additions:
        what = "grant" if a.existing else "new entry"
        kept = f", keeping {a.inherited_from}'s policies" if a.inherited_from else ""
        out.append(
            f"  + {a.target.path} <- {a.source.path}: {what} {', '.join(a.added)} "
            f"(entry: {', '.join(a.policies)}{kept}; {a.wanting} requests denied)"
        )
    out += ["", "Removal candidates (not used in the observed period; review before removing):"]
    if not result.removals:
        out.append("  (none)")
    for r in result.removals:
        entry = f"{r.target.path} <- {r.kind.value} {r.source}"
        if r.used == 0:
            out.append(f"  - {entry}: entry never used")
        elif r.unused == ("default_permissions",):
            out.append(
                f"  - {entry}: default_permissions; its {r.used} requests needed only "
                f"{', '.join(r.keep) or 'no policies'}"
            )
        else:
            out.append(
                f"  - {entry}: {', '.join(r.unused)} unused "
                f"({r.used} requests needed {', '.join(r.keep) or 'no policies'})"
            )
    out += [f"  note: {note}" for note in result.notes]
    return out
