"""`audit`: who used what, per source project, target project and route, from log lines."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from test_suggest import a_decided_line, a_line

from gateway.tools.audit import COLUMNS, audit, csv_text, json_text, report
from gateway.tools.observations import read_lines

LINES = [
    a_decided_line(
        "policies_granted",
        "allow",
        required=["read_releases"],
        timestamp="2026-12-06T05:00:01.000000Z",
    ),
    a_decided_line(
        "insufficient_permissions",
        required=["read_releases"],
        would_deny=True,
        timestamp="2026-12-06T05:00:03.000000Z",
    ),
    a_decided_line(
        "policies_granted",
        "allow",
        required=["read_releases"],
        timestamp="2026-12-06T05:00:02.000000Z",
    ),
    a_decided_line(
        "not_allowlisted",
        source=(12, "other/tool"),
        route="GET /projects/:id/deployments",
        timestamp="2026-12-06T05:00:04.000000Z",
    ),
    a_decided_line(
        "target_unresolved",
        target=None,
        target_project="acme",
        route="GET /groups/:id/packages",
        timestamp="2026-12-06T05:00:05.000000Z",
    ),
    a_decided_line("token_invalid", source=None, target=None, route="GET /projects/:id/releases"),
    a_decided_line(
        "route_not_available",
        source=None,
        target=None,
        route=None,
        path="/api/v4/projects/20/variables?job_token=[REDACTED]",
    ),
    a_line(reason="no_token", decision="allow", status=200),
    "{not json",
]


def test_rows_per_source_target_and_route_with_verdicts_and_times() -> None:
    reading = read_lines(LINES, "gw.log")
    rows = {(r.source, r.target, r.route): r.as_dict() for r in audit(reading.observations)}
    releases = rows[("acme/app", "#20 acme/deployer", "GET /projects/:id/releases")]
    assert releases == {
        "source_project": "acme/app",
        "target_project": "#20 acme/deployer",
        "route": "GET /projects/:id/releases",
        "requests": 3,
        "allowed": 2,
        "denied": 1,
        "would_deny": 1,
        "reasons": {"insufficient_permissions": 1, "policies_granted": 2},
        "first_seen": "2026-12-06T05:00:01.000000Z",
        "last_seen": "2026-12-06T05:00:03.000000Z",
    }
    assert rows[("other/tool", "#20 acme/deployer", "GET /projects/:id/deployments")]["denied"] == 1
    assert rows[("acme/app", "acme", "GET /groups/:id/packages")]["reasons"] == {
        "target_unresolved": 1
    }
    unresolved = (
        "(token not resolved) sha256:0123456789ab",
        "(no project)",
        "GET /projects/:id/releases",
    )
    assert rows[unresolved]["reasons"] == {"token_invalid": 1}
    nothing = (
        "(token not resolved) sha256:0123456789ab",
        "(no project)",
        "(no route) GET /api/v4/projects/20/variables",
    )
    assert rows[nothing]["reasons"] == {"route_not_available": 1}
    assert len(rows) == 5


def test_csv_has_a_header_and_one_row_per_route() -> None:
    reading = read_lines(LINES, "gw.log")
    table = list(csv.reader(io.StringIO(csv_text(audit(reading.observations)))))
    assert tuple(table[0]) == COLUMNS
    assert len(table) == 6
    releases = table[3]  # sorted by source ("(token not resolved)" first)
    assert releases[:7] == [
        "acme/app",
        "#20 acme/deployer",
        "GET /projects/:id/releases",
        "3",
        "2",
        "1",
        "1",
    ]
    assert releases[7] == "insufficient_permissions=1 policies_granted=2"
    assert releases[8:] == ["2026-12-06T05:00:01.000000Z", "2026-12-06T05:00:03.000000Z"]


def test_json_counts_what_was_read_including_malformed_lines() -> None:
    reading = read_lines(LINES, "gw.log")
    document = json.loads(json_text(audit(reading.observations), reading))
    assert document["read"] == {
        "job_token_requests": 7,
        "other_requests": 1,
        "ignored_lines": 0,
        "malformed_lines": 1,
        "malformed": [{"file": "gw.log", "line": 9, "problem": "not valid JSON"}],
    }
    assert len(document["rows"]) == 5


def test_the_report_groups_by_source_and_target() -> None:
    reading = read_lines(LINES, "gw.log")
    text = report(audit(reading.observations), reading)
    assert "\nacme/app -> #20 acme/deployer\n" in text
    assert (
        "  GET /projects/:id/releases: 3 requests, 2 allowed, 1 denied (1 in dry-run) "
        "[insufficient_permissions 1, policies_granted 2]"
    ) in text
    assert "1 malformed lines" in text


def test_the_command_reads_files_and_stdin(tmp_path: Path) -> None:
    log = tmp_path / "gw.log"
    log.write_text("\n".join(LINES[:3]) + "\n")
    command = [sys.executable, "-m", "gateway", "audit", "--from-log", str(log), "-"]
    answer = subprocess.run(
        [*command, "--format", "csv"],
        input="\n".join(LINES[3:]) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answer.returncode == 0
    assert len(answer.stdout.splitlines()) == 6  # header + 5 rows: both sources were read
    assert "1 malformed lines (first: -:6 (not valid JSON))" in answer.stderr
