"""`suggest`: observations read from request log lines, the least-privilege suggestion, its plan
against a store, the three formats, and the rollout it exists for: a dry-run session's log
turned into grants that a real `serve` in enforce mode then applies with no unexpected denial."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from job_grants import a_request

from gateway.core.decision import Decision, Reason, make_audit
from gateway.core.gate import Gate
from gateway.errors import ConfigError
from gateway.ops.exchange import _add_audit
from gateway.ops.observe import Observer, RedisSink
from gateway.settings import Settings
from gateway.stores.grants import (
    Allowlist,
    AllowlistEntry,
    EntryKind,
    Grants,
    Job,
    Project,
    expand,
    parse_grants,
)
from gateway.stores.memory import MemoryStore
from gateway.tools import formats
from gateway.tools.observations import read_lines, read_store
from gateway.tools.suggest import least, plan, suggest

# --------------------------------------------------------------------------- log lines


def a_line(**fields: Any) -> str:
    """A request line as `serve` writes it (only the fields a test cares about)."""
    line = {"logger": "gateway.request", "event": "request", "level": "info"}
    line.update(fields)
    return json.dumps(line)


def a_decided_line(
    reason: str,
    decision: str = "deny",
    source: tuple[int, str] | None = (10, "acme/app"),
    target: tuple[int, str] | None = (20, "acme/deployer"),
    required: list[str] | None = None,
    **more: Any,
) -> str:
    fields: dict[str, Any] = {
        "reason": reason,
        "decision": decision,
        "fingerprint": "sha256:0123456789ab",
        "route": "GET /projects/:id/releases",
        "timestamp": "2026-12-06T05:00:00.000000Z",
        "method": "GET",
        "status": 403 if decision == "deny" else 200,
    }
    if source is not None:
        fields.update(job_id=5001, source_project_id=source[0], source_project=source[1])
    if target is not None:
        fields.update(target_project_id=target[0], target_project=f"#{target[0]} {target[1]}")
    if required:
        fields["required"] = required
    fields.update(more)
    return a_line(**fields)


def test_request_lines_become_observations_and_everything_else_is_counted() -> None:
    lines = [
        a_decided_line("insufficient_permissions", required=["read_releases"], would_deny=True),
        a_line(reason="no_token", decision="allow", status=200),  # a request without a token
        a_line(reason="bad_framing", status=400),  # refused before the gate
        json.dumps({"event": "listening", "logger": "gateway", "port": 8080}),
        "Traceback (most recent call last):",
        "",
    ]
    reading = read_lines(lines, "gw.log")
    (observation,) = reading.observations
    assert observation.reason is Reason.INSUFFICIENT_PERMISSIONS
    assert (observation.denied, observation.dry_run, observation.wants_grant) == (True, True, True)
    assert (observation.source_id, observation.source_path) == (10, "acme/app")
    assert (observation.target_id, observation.target_path) == (20, "acme/deployer")
    assert observation.required == ("read_releases",)
    assert (reading.without_token, reading.ignored, reading.malformed) == (2, 3, 0)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"event": "request", "logger": "gateway.request", "reason": ', "not valid JSON"),
        (a_decided_line("made_up"), "unknown reason 'made_up'"),
        (a_decided_line("not_allowlisted", required=["read_everything"]), "unknown permission"),
        (a_decided_line("not_allowlisted", source=(0, "acme/app")), "not a GitLab id"),
        (a_decided_line("not_allowlisted", target_project="#5 evil"), "does not match"),
        (a_decided_line("not_allowlisted", source_project="a b"), "not a project path"),
        (a_decided_line("not_allowlisted", required="read_releases"), "not a list of names"),
        (a_decided_line("not_allowlisted", decision="maybe"), "decision 'maybe'"),
    ],
)
def test_malformed_lines_are_counted_with_their_line_number(line: str, problem: str) -> None:
    reading = read_lines([a_decided_line("policies_granted", "allow"), line], "gw.log")
    assert len(reading.observations) == 1
    assert reading.malformed == 1
    (bad,) = reading.malformed_examples
    assert (bad.origin, bad.line) == ("gw.log", 2)
    assert problem in bad.problem
    assert "1 malformed lines (first: gw.log:2" in reading.summary()


def test_a_target_label_forged_through_the_url_is_never_a_project() -> None:
    """An unknown reference is logged as the URL named it; only the id field makes it a project."""
    forged = a_decided_line("not_allowlisted", target=None, target_project="#20 acme/deployer")
    (observation,) = read_lines([forged], "-").observations
    assert observation.target_id is None
    result = suggest([observation])
    assert not result.uses
    assert result.unknown_targets == {"#20 acme/deployer": 1}


# --------------------------------------------------------------------------- the suggestion


def test_least_drops_read_where_admin_is_listed() -> None:
    assert least(["read_packages", "admin_packages", "read_releases"]) == (
        "admin_packages",
        "read_releases",
    )
    assert least([]) == ()


def test_the_suggestion_grants_what_was_required_and_nothing_for_other_refusals() -> None:
    lines = [
        a_decided_line("insufficient_permissions", required=["read_releases"]),
        a_decided_line("policies_granted", "allow", required=["read_deployments"]),
        a_decided_line("insufficient_permissions", required=["admin_packages"]),
        a_decided_line("insufficient_permissions", required=["read_packages"]),
        a_decided_line("not_allowlisted", source=(12, "other/tool"), required=["read_releases"]),
        a_decided_line("not_allowlisted", source=(12, "other/tool"), target=(30, "acme/lib")),
        a_decided_line("token_invalid", source=None, target=None, required=["admin_releases"]),
        a_decided_line("route_not_available", target=None),
        a_decided_line("registry_other_project", required=["admin_containers"]),
        a_decided_line("target_unresolved", target=None, target_project="acme"),
        a_decided_line("no_permissions_granted"),
        a_decided_line("bad_target", source=None, target=None, route=None),
        a_decided_line("credential_conflict", source=None, target=None, route=None),
        a_decided_line("token_expired", target=None, required=["read_releases"]),
        a_decided_line("store_unavailable", source=None, target=None, required=["read_jobs"]),
        a_decided_line("own_project", "allow", target=(10, "acme/app"), required=["admin_jobs"]),
    ]
    result = suggest(read_lines(lines, "-").observations)
    by_pair = {(t, s): use.policies for (t, s), use in result.uses.items()}
    assert by_pair == {
        (20, 10): ("admin_packages", "read_deployments", "read_releases"),
        (20, 12): ("read_releases",),
        (30, 12): (),  # a route without policies (git clone, say): the entry alone admits it
    }
    assert result.wanting == 5
    assert result.refused_otherwise == {
        "token_invalid": 1,
        "route_not_available": 1,
        "registry_other_project": 1,
        "target_unresolved": 1,
        "no_permissions_granted": 1,
        "bad_target": 1,
        "credential_conflict": 1,
        "token_expired": 1,
        "store_unavailable": 1,
    }
    grants = result.grants()
    text = formats.yaml_text(grants, header="test", complete=False)
    assert "default_permissions: false" in text
    assert parse_grants(text, "suggested") == grants  # what `store load` reads back


CURRENT = """
projects:
  - {id: 10, path: acme/app}
  - {id: 11, path: acme/platform/worker}
  - {id: 12, path: other/tool}
  - {id: 20, path: acme/deployer}
  - {id: 40, path: acme/legacy}
jobs:
  - {token_sha256: "%s", job_id: 5001, project: 10, expires_at: "2099-01-01T00:00:00Z"}
allowlists:
  - project: acme/deployer
    entries:
      - {source: acme/app, default_permissions: false, policies: [read_deployments, admin_jobs]}
      - {source: acme/platform, kind: group, default_permissions: false,
         policies: [read_releases]}
  - project: acme/legacy
    entries:
      - {source: acme, kind: group, default_permissions: true}
      - {source: other/tool, default_permissions: false, policies: [read_packages]}
""" % ("ab" * 32)


def test_the_plan_adds_what_was_denied_and_lists_what_went_unused() -> None:
    current = parse_grants(CURRENT, "current")
    lines = [
        a_decided_line("policies_granted", "allow", required=["read_deployments"]),
        a_decided_line("insufficient_permissions", required=["admin_packages"]),
        # the worker is on the group entry: its new project entry keeps the group's policies
        a_decided_line(
            "insufficient_permissions",
            source=(11, "acme/platform/worker"),
            required=["read_environments"],
        ),
        a_decided_line("not_allowlisted", source=(12, "other/tool"), required=["read_jobs"]),
        a_decided_line(
            "default_permissions", "allow", target=(40, "acme/legacy"), required=["read_packages"]
        ),
    ]
    suggestion = suggest(read_lines(lines, "-").observations)
    result = plan(suggestion, current)
    added = {
        (a.target.id, a.source.id): (a.policies, a.added, a.existing) for a in result.additions
    }
    assert added == {
        (20, 10): (("admin_jobs", "admin_packages", "read_deployments"), ("admin_packages",), True),
        (20, 11): (("read_environments", "read_releases"), ("read_environments",), False),
        (20, 12): (("read_jobs",), ("read_jobs",), False),
    }
    removals = {(r.target.id, r.source): (r.used, r.keep, r.unused) for r in result.removals}
    assert removals == {
        (20, "acme/app"): (2, ("admin_packages", "read_deployments"), ("admin_jobs",)),
        (20, "acme/platform"): (1, ("read_environments",), ("read_releases",)),
        (40, "acme"): (1, ("read_packages",), ("default_permissions",)),
        (40, "other/tool"): (0, (), ("read_packages",)),
    }
    # The merged content is the store's plus the additions, and loads back unchanged.
    text = formats.yaml_text(result.merged, header="test", complete=True)
    reloaded = parse_grants(text, "merged")
    assert reloaded == result.merged
    assert reloaded.jobs == current.jobs
    graphql = formats.graphql(suggestion, result, header="test")
    assert (
        'update1: ciJobTokenScopeUpdatePolicies(input: {projectPath: "acme/deployer", '
        'targetPath: "acme/app", defaultPermissions: false, '
        "jobTokenPolicies: [ADMIN_JOBS, ADMIN_PACKAGES, READ_DEPLOYMENTS]})"
    ) in graphql
    assert (
        'add2: ciJobTokenScopeAddGroupOrProject(input: {projectPath: "acme/deployer", '
        'targetPath: "other/tool", defaultPermissions: false, jobTokenPolicies: [READ_JOBS]})'
    ) in graphql


# --------------------------------------------------------------------------- property

PROJECTS = (
    Project(1, "acme/app"),
    Project(2, "acme/platform/worker"),
    Project(3, "other/tool"),
    Project(4, "acme/deployer"),
    Project(5, "acme/platform/lib"),
)
GROUPS = ("acme", "acme/platform", "other")
# (method, path after /api/v4/projects/<id>, what the real route table requires)
CALLS = (
    ("GET", "/deployments", ("read_deployments",)),
    ("POST", "/deployments", ("admin_deployments", "admin_environments")),
    ("GET", "/environments", ("read_environments",)),
    ("GET", "/releases", ("read_releases",)),
    ("POST", "/releases", ("admin_releases",)),
    ("GET", "/packages", ("read_packages",)),
    ("PUT", "/packages/generic/p/1.0/f.txt", ("admin_packages",)),
    ("GET", "/secure_files", ("read_secure_files",)),
    ("DELETE", "/secure_files/1", ("admin_secure_files",)),
    ("GET", "/variables", None),  # no route for job tokens: route_not_available
    ("GIT", ".git/info/refs?service=git-upload-pack", ()),  # git clone: the allowlist only
)
POLICIES = sorted({p for *_, required in CALLS for p in (required or ())})


def token(project: Project) -> str:
    return f"glcbt-job-of-{project.id}"


def jobs() -> tuple[Job, ...]:
    import hashlib

    return tuple(
        Job(hashlib.sha256(token(p).encode()).hexdigest(), 9000 + p.id, p) for p in PROJECTS
    )


def call_view(caller: int, target: int, call: int, invalid: bool = False) -> Any:
    method, tail, _ = CALLS[call]
    source, accessed = PROJECTS[caller], PROJECTS[target]
    secret = "glcbt-nobody" if invalid else token(source)
    if method == "GIT":
        basic = base64.b64encode(f"gitlab-ci-token:{secret}".encode()).decode()
        return a_request(
            "GET", f"/{accessed.path}{tail}", headers=[("Authorization", f"Basic {basic}")]
        )
    return a_request(method, f"/api/v4/projects/{accessed.id}{tail}", secret)


entries = st.builds(
    lambda source, default, policies: (source, default, tuple(sorted(policies))),
    st.sampled_from([*range(len(PROJECTS)), *GROUPS]),
    st.booleans(),
    st.frozensets(st.sampled_from(POLICIES), max_size=4),
)
allowlists = st.dictionaries(
    st.integers(0, len(PROJECTS) - 1),
    st.tuples(st.booleans(), st.lists(entries, max_size=4)),
    max_size=len(PROJECTS),
)
traffic = st.lists(
    st.tuples(
        st.integers(0, len(PROJECTS) - 1),
        st.integers(0, len(PROJECTS) - 1),
        st.integers(0, len(CALLS) - 1),
        st.booleans(),  # an invalid token (refused for another reason)
    ),
    min_size=1,
    max_size=25,
)


def build_allowlists(spec: dict[int, tuple[bool, list[Any]]]) -> tuple[Allowlist, ...]:
    built = []
    for target, (enabled, items) in spec.items():
        seen: set[str] = set()
        made = []
        for source, default, policies in items:
            if isinstance(source, int):
                project = PROJECTS[source]
                entry = AllowlistEntry(
                    EntryKind.PROJECT, project.key, project.id, default, () if default else policies
                )
            else:
                entry = AllowlistEntry(
                    EntryKind.GROUP, source, None, default, () if default else policies
                )
            key = f"{entry.kind}:{entry.source}"
            if key not in seen:
                seen.add(key)
                made.append(entry)
        built.append(Allowlist(PROJECTS[target].id, enabled, tuple(made)))
    return tuple(built)


async def decide_all(grants: Grants, calls: list[tuple[int, int, int, bool]]) -> list[Decision]:
    gate = await Gate.open(Settings(store="memory://"), store=MemoryStore(grants))
    try:
        return [await gate.evaluate(call_view(*call)) for call in calls]
    finally:
        await gate.close()


def as_line(decision: Decision, dry_run: bool) -> str:
    """The audit part of the line exactly as the proxy builds it (gateway/ops/exchange.py)."""
    fields: dict[str, Any] = {"reason": decision.reason.value}
    _add_audit(fields, decision)
    if dry_run and not decision.allowed:
        fields["would_deny"] = True
    return a_line(**fields)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=allowlists, calls=traffic, dry_run=st.booleans())
def test_replaying_traffic_against_the_suggested_grants(
    spec: dict[int, tuple[bool, list[Any]]], calls: list[tuple[int, int, int, bool]], dry_run: bool
) -> None:
    current = Grants(PROJECTS, jobs(), build_allowlists(spec))
    before = asyncio.run(decide_all(current, calls))
    reading = read_lines([as_line(d, dry_run) for d in before], "generated")
    assert reading.malformed == 0
    observations = reading.observations
    suggestion = suggest(observations)

    # 1. The suggestion alone (with the jobs): every observed request denied only for want of
    # a grant, and every one the allowlist admitted, is allowed; other refusals are unchanged.
    alone = suggestion.grants()
    suggested = Grants(PROJECTS, jobs(), alone.allowlists)
    after = asyncio.run(decide_all(suggested, calls))
    for call, was, now in zip(calls, before, after, strict=True):
        if was.allowed or was.reason in (Reason.NOT_ALLOWLISTED, Reason.INSUFFICIENT_PERMISSIONS):
            assert now.allowed, (call, was, now)
        else:
            assert (now.allowed, now.reason) == (False, was.reason), (call, was, now)

    # 2. ... and a request needing any permission its source was not observed needing on that
    # target stays denied.
    unobserved = []
    for (target_id, source_id), use in suggestion.uses.items():
        granted = expand(use.policies)
        for index, (_, _, required) in enumerate(CALLS):
            if required and not set(required) <= granted:
                unobserved.append((source_id - 1, target_id - 1, index, False))
    for call, now in zip(unobserved, asyncio.run(decide_all(suggested, unobserved)), strict=True):
        assert (now.allowed, now.reason) == (False, Reason.INSUFFICIENT_PERMISSIONS), call

    # 3. Against the current grants: the merged content admits every request denied for want of
    # a grant and takes nothing away.
    merged = plan(suggestion, current).merged
    replay = asyncio.run(decide_all(merged, calls))
    for call, was, now in zip(calls, before, replay, strict=True):
        if was.allowed or was.reason in (Reason.NOT_ALLOWLISTED, Reason.INSUFFICIENT_PERMISSIONS):
            assert now.allowed, (call, was, now)
        else:
            assert (now.allowed, now.reason) == (False, was.reason), (call, was, now)
    assert parse_grants(formats.yaml_text(merged, header="p", complete=True), "m") == merged


# --------------------------------------------------------------------------- end to end

E2E_GRANTS = """
projects:
  - {id: 10, path: acme/app}
  - {id: 11, path: acme/platform/sub/worker}
  - {id: 12, path: other/tool}
  - {id: 20, path: acme/platform/deployer}
  - {id: 30, path: acme/lib}
jobs:
  - {token: glcbt-app-job, job_id: 5001, project: acme/app}
  - {token: glcbt-worker-job, job_id: 5003, project: acme/platform/sub/worker}
  - {token: glcbt-tool-job, job_id: 5002, project: other/tool}
allowlists:
  - project: acme/platform/deployer
    entries:
      - {source: acme/app, default_permissions: false, policies: [read_deployments]}
      - {source: acme/platform, kind: group, default_permissions: false, policies: [read_releases]}
  - project: acme/lib
    entries: []
"""


def _basic(secret: str) -> dict[str, str]:
    pair = base64.b64encode(f"gitlab-ci-token:{secret}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


# (method, target, headers, reason in dry-run, wants a grant)
E2E_TRAFFIC: list[tuple[str, str, dict[str, str], str]] = [
    ("GET", "/api/v4/projects/20/deployments", {"JOB-TOKEN": "glcbt-app-job"}, "policies_granted"),
    (
        "GET",
        "/api/v4/projects/20/releases",
        {"JOB-TOKEN": "glcbt-app-job"},
        "insufficient_permissions",
    ),
    (
        "PUT",
        "/api/v4/projects/20/packages/generic/pkg/1.0/file.txt",
        {"JOB-TOKEN": "glcbt-app-job"},
        "insufficient_permissions",
    ),
    ("GET", "/api/v4/projects/20/releases", {"JOB-TOKEN": "glcbt-worker-job"}, "policies_granted"),
    (
        "GET",
        "/api/v4/projects/20/deployments",
        {"JOB-TOKEN": "glcbt-worker-job"},
        "insufficient_permissions",
    ),
    ("GET", "/api/v4/projects/30/releases", {"JOB-TOKEN": "glcbt-tool-job"}, "not_allowlisted"),
    (
        "GET",
        "/acme/lib.git/info/refs?service=git-upload-pack",
        _basic("glcbt-tool-job"),
        "not_allowlisted",
    ),
    ("GET", "/api/v4/projects/10/releases", {"JOB-TOKEN": "glcbt-app-job"}, "own_project"),
    ("GET", "/api/v4/projects/20/deployments", {"JOB-TOKEN": "glcbt-nobody"}, "token_invalid"),
    ("GET", "/api/v4/projects/20/variables", {"JOB-TOKEN": "glcbt-app-job"}, "route_not_available"),
]
WANTS_GRANT = {"not_allowlisted", "insufficient_permissions"}
REFUSED_OTHERWISE = {"token_invalid", "route_not_available"}


def gateway(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def send(url: str, traffic: list[tuple[str, str, dict[str, str], str]]) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as session:
        for method, target, headers, _ in traffic:
            async with session.request(method, url + target, headers=headers) as answer:
                await answer.read()
                statuses.append(answer.status)
    return statuses


async def test_a_dry_run_log_becomes_grants_that_enforce_mode_applies(
    an_upstream: Any, a_gateway_process: Any, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/gateway.sqlite3"
    (tmp_path / "grants.yaml").write_text(E2E_GRANTS)
    assert (
        gateway(
            "store", "load", str(tmp_path / "grants.yaml"), "--store", store, "--create"
        ).returncode
        == 0
    )

    # 1. Dry-run: everything is forwarded, would-be denials logged.
    dry = a_gateway_process(
        "--mode", "dry-run", "--upstream", an_upstream.url, env={"GATEWAY_STORE": store}
    )
    assert await send(dry.url, E2E_TRAFFIC) == [200] * len(E2E_TRAFFIC)
    assert dry.stop() == 0
    lines = [line for line in dry.logs() if line.get("event") == "request"]
    assert [line["reason"] for line in lines] == [reason for *_, reason in E2E_TRAFFIC]
    assert all(
        line.get("would_deny") is True
        for line in lines
        if line["reason"] in WANTS_GRANT | REFUSED_OTHERWISE
    )
    assert "glcbt-" not in dry.log_text()  # no raw token anywhere in the log

    # 2. suggest, against the store: a complete grants file; `store load` accepts it.
    suggested = gateway("suggest", "--from-log", str(dry.log_path), "--store", store)
    assert suggested.returncode == 0, suggested.stderr
    (tmp_path / "suggested.yaml").write_text(suggested.stdout)
    loaded = gateway("store", "load", str(tmp_path / "suggested.yaml"), "--store", store)
    assert loaded.returncode == 0, loaded.stderr
    assert "5 projects, 3 jobs, 2 allowlists" in loaded.stdout
    document = parse_grants(suggested.stdout, "suggested")
    entries = {
        (a.project_id, e.source): (e.default_permissions, e.policies)
        for a in document.allowlists
        for e in a.entries
    }
    assert entries == {
        (20, "acme/app"): (False, ("admin_packages", "read_deployments", "read_releases")),
        (20, "acme/platform"): (False, ("read_releases",)),
        (20, "acme/platform/sub/worker"): (False, ("read_deployments", "read_releases")),
        (30, "other/tool"): (False, ("read_releases",)),
    }

    # 3. The same traffic in enforce mode: no unexpected denial.
    enforce = a_gateway_process(
        "--mode", "enforce", "--upstream", an_upstream.url, env={"GATEWAY_STORE": store}
    )
    statuses = await send(enforce.url, E2E_TRAFFIC)
    expected = [
        {"token_invalid": 401, "route_not_available": 403}.get(reason, 200)
        for *_, reason in E2E_TRAFFIC
    ]
    assert statuses == expected
    # ... and what was never observed stays denied: other/tool never read deployments.
    unobserved = [("GET", "/api/v4/projects/20/releases", {"JOB-TOKEN": "glcbt-tool-job"}, "")]
    unobserved.append(("POST", "/api/v4/projects/30/releases", {"JOB-TOKEN": "glcbt-tool-job"}, ""))
    assert await send(enforce.url, unobserved) == [403, 403]
    assert enforce.stop() == 0
    reasons = [line["reason"] for line in enforce.events("request")][-2:]
    assert reasons == ["not_allowlisted", "insufficient_permissions"]

    # 4. The other formats, from stdin.
    log = dry.log_text()
    report = gateway(
        "suggest", "--from-log", "-", "--store", store, "--format", "report", stdin=log
    )
    assert report.returncode == 0
    assert "Removal candidates" in report.stdout
    mutations = gateway("suggest", "--from-log", "-", "--format", "graphql", stdin=log)
    assert "ciJobTokenScopeAddGroupOrProject" in mutations.stdout
    alone = gateway("suggest", "--from-log", "-", stdin=log)
    assert "store load` REPLACES" in alone.stdout
    parse_grants(alone.stdout, "alone")


def test_unreadable_log_files_are_a_usage_error(tmp_path: Path) -> None:
    answer = gateway("suggest", "--from-log", str(tmp_path / "missing.log"))
    assert answer.returncode == 2
    assert "--from-log" in answer.stderr


def test_malformed_lines_are_announced_on_stderr(tmp_path: Path) -> None:
    log = tmp_path / "gw.log"
    log.write_text(a_decided_line("not_allowlisted", required=["read_releases"]) + "\n{oops\n")
    answer = gateway("suggest", "--from-log", str(log))
    assert answer.returncode == 0
    assert f"1 malformed lines (first: {log}:2 (not valid JSON))" in answer.stderr
    assert "1 malformed lines" in answer.stdout  # in the YAML's header comment too


def test_the_report_names_what_was_not_suggested() -> None:
    lines = [
        a_decided_line("token_invalid", source=None, target=None),
        a_decided_line("not_allowlisted", target=None, target_project="acme%2Fghost"),
        a_decided_line("not_allowlisted", source=None, job_id=77, required=["read_releases"]),
        a_decided_line("insufficient_permissions", required=["read_releases"]),
    ]
    reading = read_lines(lines, "-")
    text = formats.report(reading, suggest(reading.observations), None, None)
    assert "Refused for other reasons (nothing suggested): token_invalid 1." in text
    assert "acme%2Fghost (1)" in text
    assert "Denied for jobs whose project the log does not name: job 77 (1)." in text
    assert "acme/app (#10): read_releases" in text


def test_stdin_is_read_with_dash() -> None:
    reading = read_lines(io.StringIO(a_decided_line("not_allowlisted") + "\n"), "-")
    assert len(reading.observations) == 1


# --------------------------------------------------------------------------- the store aggregate


@pytest.fixture
def an_observations_db(redis_url: str) -> Iterator[str]:
    """A Redis database of its own (13), empty before and after."""
    import redis

    url = redis_url.rpartition("/")[0] + "/13"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def a_decision(reason: Reason, allowed: bool, route: str, required: tuple[str, ...]) -> Decision:
    audit = make_audit(
        "sha256:0123456789ab", 5001, "acme/app", "#20 acme/deployer", route, required, (), 10, 20
    )
    return Decision(allowed, reason, "", audit)


def test_the_observer_counts_known_keys_and_drops_new_ones_beyond_its_bound() -> None:
    observer = Observer(limit=2)
    releases = a_decision(Reason.INSUFFICIENT_PERMISSIONS, False, "GET r", ("read_releases",))
    for _ in range(3):
        observer.add(releases, True)
    observer.add(a_decision(Reason.POLICIES_GRANTED, True, "GET d", ("read_deployments",)), False)
    observer.add(a_decision(Reason.POLICIES_GRANTED, True, "GET p", ("read_packages",)), False)
    observer.add(Decision(True, Reason.NO_TOKEN), False)  # no job token: not an observation
    counts = observer.take()
    assert sorted(counts.values()) == [1, 3]
    assert observer.dropped == 1
    assert observer.take() == {}


@pytest.mark.redis
async def test_the_redis_aggregate_is_bounded_and_reads_back_as_observations(
    an_observations_db: str,
) -> None:
    sink = RedisSink(an_observations_db, limit=2, timeout=2.0)
    observer = Observer(limit=10)
    releases = a_decision(Reason.INSUFFICIENT_PERMISSIONS, False, "GET r", ("read_releases",))
    deployments = a_decision(Reason.POLICIES_GRANTED, True, "GET d", ("read_deployments",))
    packages = a_decision(Reason.NOT_ALLOWLISTED, False, "GET p", ("read_packages",))
    try:
        observer.add(releases, True)
        observer.add(deployments, False)
        assert await sink.add(observer.take()) == 0
        for _ in range(2):
            observer.add(releases, True)
        observer.add(packages, False)  # a third key: the hash holds two already
        assert await sink.add(observer.take()) == 1
    finally:
        await sink.close()
    reading = await asyncio.to_thread(read_store, an_observations_db)
    counts = {o.route: (o.count, o.denied, o.dry_run) for o in reading.observations}
    assert counts == {"GET r": (3, True, True), "GET d": (1, False, False)}
    assert all(o.since and o.time for o in reading.observations)
    assert suggest(reading.observations).uses[(20, 10)].policies == (
        "read_deployments",
        "read_releases",
    )


def test_observations_need_a_redis_store() -> None:
    with pytest.raises(ConfigError, match="needs a redis:// store"):
        RedisSink("sqlite:///x.db", limit=5, timeout=1.0)
    answer = gateway("suggest", "--from-store", "sqlite:///x.db")
    assert answer.returncode == 2
    assert "redis://" in answer.stderr


@pytest.mark.redis
async def test_replicas_meet_in_the_redis_aggregate(
    an_upstream: Any, a_gateway_process: Any, an_observations_db: str, tmp_path: Path
) -> None:
    """Two replicas share the store; `suggest --from-store` sees both's traffic, as the logs do."""
    store = an_observations_db
    (tmp_path / "grants.yaml").write_text(E2E_GRANTS)
    assert (
        gateway(
            "store", "load", str(tmp_path / "grants.yaml"), "--store", store, "--create"
        ).returncode
        == 0
    )
    args = ("--mode", "dry-run", "--upstream", an_upstream.url, "--observations", "100")
    one = a_gateway_process(*args, env={"GATEWAY_STORE": store})
    two = a_gateway_process(*args, env={"GATEWAY_STORE": store})
    half = len(E2E_TRAFFIC) // 2
    await send(one.url, E2E_TRAFFIC[:half])
    await send(two.url, E2E_TRAFFIC[half:])
    assert one.stop() == 0
    assert two.stop() == 0  # a clean stop flushes what is left
    from_logs = gateway("suggest", "--from-log", str(one.log_path), str(two.log_path))
    from_store = gateway("suggest", "--from-store", store)
    assert from_store.returncode == 0, from_store.stderr
    body = [line for line in from_store.stdout.splitlines() if not line.startswith("#")]
    assert body == [line for line in from_logs.stdout.splitlines() if not line.startswith("#")]
    assert "10 job-token requests" in from_store.stdout
    audit = gateway("audit", "--from-store", store, "--format", "json")
    assert json.loads(audit.stdout)["read"]["job_token_requests"] == 10
