"""Who used what: observed job-token requests per source project, target project and route.

`audit(observations)` returns one `Row` per (source, target, route), with the request count,
the verdicts (allowed, denied; `would_deny` counts those dry-run forwarded anyway), the reason
codes and the first and last time seen. A source is the token's project path (`UNRESOLVED`
and the token's fingerprint when it resolved to no job, or was refused before the lookup); a
target is the project as logged (`#<id> <path>` when the store knows it, else the reference the
URL named; `NO_TARGET` when there is none); a request no route matched is named by its method
and path.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.tools.observations import Observation, Reading

__all__ = ["COLUMNS", "NO_TARGET", "UNRESOLVED", "Row", "audit", "csv_text", "json_text", "report"]

# A token decided before its job was looked up, or that named no job: by its fingerprint.
UNRESOLVED = "(token not resolved)"
NO_TARGET = "(no project)"  # a route that names no project, or decided before resolving it

COLUMNS = (
    "source_project",
    "target_project",
    "route",
    "requests",
    "allowed",
    "denied",
    "would_deny",
    "reasons",
    "first_seen",
    "last_seen",
)


@dataclass(slots=True)
class Row:
    source: str
    target: str
    route: str
    requests: int = 0
    allowed: int = 0
    denied: int = 0
    would_deny: int = 0  # denied in dry-run, forwarded anyway (included in `denied`)
    reasons: Counter[str] = field(default_factory=Counter)
    first_seen: str | None = None
    last_seen: str | None = None

    def add(self, observation: Observation) -> None:
        count = observation.count
        self.requests += count
        if observation.denied:
            self.denied += count
            self.would_deny += count if observation.dry_run else 0
        else:
            self.allowed += count
        self.reasons[observation.reason.value] += count
        first, last = observation.since or observation.time, observation.time
        if first is not None and last is not None:
            self.first_seen = first if self.first_seen is None else min(self.first_seen, first)
            self.last_seen = last if self.last_seen is None else max(self.last_seen, last)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_project": self.source,
            "target_project": self.target,
            "route": self.route,
            "requests": self.requests,
            "allowed": self.allowed,
            "denied": self.denied,
            "would_deny": self.would_deny,
            "reasons": dict(sorted(self.reasons.items())),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


def _no_route(observation: Observation) -> str:
    """A request no route matched: its method and path, without the query."""
    return f"(no route) {observation.method} {observation.path.partition('?')[0]}".rstrip()


def audit(observations: Iterable[Observation]) -> list[Row]:
    """One row per (source, target, route), sorted by source, target, route."""
    rows: dict[tuple[str, str, str], Row] = {}
    for observation in observations:
        key = (
            observation.source_path or f"{UNRESOLVED} {observation.fingerprint}".rstrip(),
            observation.target or NO_TARGET,
            observation.route or _no_route(observation),
        )
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row(*key)
        row.add(observation)
    return [rows[key] for key in sorted(rows)]


def csv_text(rows: list[Row]) -> str:
    """CSV with a header line; `reasons` as `code=count` joined by spaces."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        reasons = " ".join(f"{r}={n}" for r, n in sorted(row.reasons.items()))
        writer.writerow(
            [
                row.source,
                row.target,
                row.route,
                row.requests,
                row.allowed,
                row.denied,
                row.would_deny,
                reasons,
                row.first_seen or "",
                row.last_seen or "",
            ]
        )
    return out.getvalue()


def json_text(rows: list[Row], reading: Reading) -> str:
    """`{"read": {...counts...}, "rows": [...]}`, indented."""
    document = {
        "read": {
            "job_token_requests": len(reading.observations),
            "other_requests": reading.without_token,
            "ignored_lines": reading.ignored,
            "malformed_lines": reading.malformed,
            "malformed": [
                {"file": m.origin, "line": m.line, "problem": m.problem}
                for m in reading.malformed_examples
            ],
        },
        "rows": [row.as_dict() for row in rows],
    }
    return json.dumps(document, indent=2) + "\n"


def report(rows: list[Row], reading: Reading) -> str:
    """Grouped by source, then target: one line per route."""
    out = [f"Read: {reading.summary()}."]
    if reading.first_seen:
        out.append(f"Period: {reading.first_seen} .. {reading.last_seen}.")
    current: tuple[str, str] | None = None
    for row in rows:
        if (row.source, row.target) != current:
            current = (row.source, row.target)
            out += ["", f"{row.source} -> {row.target}"]
        verdict = f"{row.allowed} allowed, {row.denied} denied"
        if row.would_deny:
            verdict += f" ({row.would_deny} in dry-run)"
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(row.reasons.items()))
        out.append(f"  {row.route}: {row.requests} requests, {verdict} [{reasons}]")
        out.append(f"    first {row.first_seen}, last {row.last_seen}")
    return "\n".join(out) + "\n"
