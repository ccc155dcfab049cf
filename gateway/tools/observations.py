"""Observations: the decided job-token requests, read back from the gateway's JSON log lines.

`serve --log-format json` writes one line per request (event `request`, gateway/ops/exchange.py);
in dry-run a would-be denial keeps `"decision": "deny"` with `"would_deny": true`. A line is:

- a request line: a JSON object with `"event": "request"` and `"logger": "gateway.request"`.
  One that carries a job token's decision (`fingerprint` and `decision`) is an `Observation`;
  one without (no token, refused before the gate) is counted, not observed.
- malformed: text that starts like a JSON object but does not parse, or a request line whose
  fields have the wrong shape (an unknown reason code, a permission GitLab does not define, a
  project id that is not a positive integer...). Counted and reported with its line number,
  never silently dropped: a suggestion built on half a log must say so.
- anything else (other events, blank lines, console text, a traceback): ignored, and counted.

No raw token is ever read: the log line carries only a fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gateway.core.decision import Reason
from gateway.routing.permissions import KNOWN_POLICIES

__all__ = [
    "ALLOWED_THROUGH_ALLOWLIST",
    "WANTS_GRANT",
    "Malformed",
    "Observation",
    "Reading",
    "read_lines",
    "read_sources",
    "read_store",
]

# Denials a grant would lift (gateway/core/policy.py `decide`, after GitLab's
# Ci::JobToken::Scope#policies_allowed?): no entry for the source on the accessed project's
# allowlist (`not_allowlisted`), or an entry whose policies lack one the route needs
# (`insufficient_permissions`). Every other denial is about the request or the token (bad target,
# conflicting credentials, invalid or expired token, a route job tokens cannot use, another
# project's registry, a target the gateway cannot resolve, the store down): no grant changes it.
# `no_permissions_granted` (a controllable route that declares no policy) is lifted only by
# `default_permissions: true`, which is not least privilege: reported, never suggested.
WANTS_GRANT = frozenset({Reason.NOT_ALLOWLISTED, Reason.INSUFFICIENT_PERMISSIONS})

# Allowed cross-project requests that went through the accessed project's allowlist: an entry
# with policies, an entry with default permissions, an entry on a route without policies
# (`uncontrolled_endpoint`, `git_http`), or an allowlist that is off. A suggested allowlist that
# replaces the current one must keep admitting them.
ALLOWED_THROUGH_ALLOWLIST = frozenset(
    {
        Reason.POLICIES_GRANTED,
        Reason.DEFAULT_PERMISSIONS,
        Reason.UNCONTROLLED_ENDPOINT,
        Reason.GIT_HTTP,
        Reason.ALLOWLIST_DISABLED,
    }
)

_PATH = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.][A-Za-z0-9_.\-]*)*")
_TARGET_PATH = re.compile(r"#[0-9]+ (?P<path>\S+)")
_MAX_ID = 2**63 - 1
_KEEP_MALFORMED = 20  # line numbers kept for the report; the count is always exact


@dataclass(frozen=True, slots=True)
class Observation:
    """One decided job-token request, as its log line tells it.

    `target_path` is the accessed project's path when the store knew the project (its id is then
    `target_id`); `target` is the label as logged (`#20 acme/deployer`, or the reference the URL
    named). `denied` is the gate's verdict: in dry-run the request was forwarded anyway.
    """

    time: str | None
    method: str
    path: str  # the request-target as logged (token parameters already redacted)
    route: str | None
    reason: Reason
    denied: bool
    dry_run: bool
    status: int | None
    fingerprint: str
    job_id: int | None
    source_path: str | None
    source_id: int | None
    target: str | None
    target_id: int | None
    target_path: str | None
    required: tuple[str, ...]
    granted: tuple[str, ...]
    # From the store's aggregate (gateway/ops/observe.py): how many requests, and since when.
    count: int = 1
    since: str | None = None

    @property
    def cross_project(self) -> bool:
        """A known source touching another known project (the only kind an allowlist governs)."""
        return (
            self.source_id is not None
            and self.source_path is not None
            and self.target_id is not None
            and self.target_path is not None
            and self.source_id != self.target_id
        )

    @property
    def wants_grant(self) -> bool:
        """Denied (or would be, in dry-run) only for want of an allowlist entry or permission."""
        return self.denied and self.reason in WANTS_GRANT

    @property
    def uses_allowlist(self) -> bool:
        """Decided by the accessed project's allowlist: wanting a grant, or allowed through it."""
        if not self.cross_project:
            return False
        return self.wants_grant or (not self.denied and self.reason in ALLOWED_THROUGH_ALLOWLIST)


@dataclass(frozen=True, slots=True)
class Malformed:
    origin: str  # file name, or `-` for stdin
    line: int
    problem: str


@dataclass(slots=True)
class Reading:
    """What the log lines held: observations, and the count of every other kind of line."""

    observations: list[Observation] = field(default_factory=list)
    without_token: int = 0  # request lines with no job-token decision
    ignored: int = 0  # not request lines
    malformed: int = 0
    malformed_examples: list[Malformed] = field(default_factory=list)

    @property
    def first_seen(self) -> str | None:
        times = [t for o in self.observations if (t := o.since or o.time) is not None]
        return min(times) if times else None

    @property
    def last_seen(self) -> str | None:
        times = [o.time for o in self.observations if o.time]
        return max(times) if times else None

    def summary(self) -> str:
        """One line for reports: what was read, and what was not."""
        text = (
            f"{sum(o.count for o in self.observations)} job-token requests, "
            f"{self.without_token} other requests, "
            f"{self.ignored} other lines ignored, {self.malformed} malformed lines"
        )
        if self.malformed_examples:
            where = ", ".join(
                f"{m.origin}:{m.line} ({m.problem})" for m in self.malformed_examples[:5]
            )
            text += f" (first: {where})"
        return text


class _Bad(ValueError):
    pass


def read_sources(names: Iterable[str], stdin: TextIO) -> Reading:
    """Read every named file (`-` is `stdin`) in order into one `Reading`.

    Raises OSError when a file cannot be opened; undecodable bytes are replaced (and then make
    that line malformed, not the whole file unreadable).
    """
    reading = Reading()
    for name in names:
        if name == "-":
            read_lines(stdin, "-", reading)
            continue
        with Path(name).open(encoding="utf-8", errors="replace") as handle:
            read_lines(handle, name, reading)
    return reading


def read_store(url: str, reading: Reading | None = None, *, timeout: float = 2.0) -> Reading:
    """Add the aggregate `serve --observations N` keeps in a Redis store (gateway/ops/observe.py).

    A field that does not read back is malformed (origin `url`, line = its index). Raises
    OSError (or redis' errors) when the store cannot answer.
    """
    import asyncio

    from gateway.ops import observe

    reading = reading if reading is not None else Reading()

    async def fetch() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(observe.COUNTS)
                pipe.hgetall(observe.FIRST)
                pipe.hgetall(observe.LAST)
                counts, first, last = await pipe.execute()
        finally:
            await client.aclose()
        return counts, first, last

    counts, first, last = asyncio.run(fetch())
    for number, (key, count) in enumerate(sorted(counts.items()), start=1):
        try:
            record = {**observe.key_fields(key), "timestamp": last.get(key)}
            observation = _observation(record)
            if observation is None or not count.isdigit():
                raise _Bad("not an observation")
        except (ValueError, TypeError, _Bad) as exc:
            reading.malformed += 1
            if len(reading.malformed_examples) < _KEEP_MALFORMED:
                reading.malformed_examples.append(Malformed(url, number, str(exc)))
            continue
        reading.observations.append(
            dataclasses.replace(observation, count=int(count), since=first.get(key))
        )
    return reading


def read_lines(lines: Iterable[str], origin: str, reading: Reading | None = None) -> Reading:
    """Add what `lines` hold to `reading` (a new one when None) and return it."""
    reading = reading if reading is not None else Reading()
    for number, line in enumerate(lines, start=1):
        _read_line(line, origin, number, reading)
    return reading


def _read_line(line: str, origin: str, number: int, reading: Reading) -> None:
    text = line.strip()
    if not text.startswith("{"):
        reading.ignored += 1
        return
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise _Bad("not a JSON object")
        if record.get("event") != "request" or record.get("logger") != "gateway.request":
            reading.ignored += 1
            return
        observation = _observation(record)
    except (ValueError, _Bad) as exc:  # json.JSONDecodeError is a ValueError
        reading.malformed += 1
        if len(reading.malformed_examples) < _KEEP_MALFORMED:
            problem = "not valid JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
            reading.malformed_examples.append(Malformed(origin, number, problem))
        return
    if observation is None:
        reading.without_token += 1
    else:
        reading.observations.append(observation)


def _observation(record: Mapping[str, Any]) -> Observation | None:
    """The observation a request line holds; None for a request without a job-token decision."""
    reason = _reason(record.get("reason"))
    decision = record.get("decision")
    if decision is None or record.get("fingerprint") is None:
        return None
    if decision not in ("allow", "deny"):
        raise _Bad(f"decision {decision!r}")
    source_id = _id(record, "source_project_id")
    target_id = _id(record, "target_project_id")
    target = _text(record, "target_project")
    target_path = None
    if target_id is not None:
        # The id is only logged with the store's own project, labelled `#<id> <path>`.
        found = _TARGET_PATH.fullmatch(target or "")
        if found is None or target != f"#{target_id} {found['path']}":
            raise _Bad(f"target_project {target!r} does not match target_project_id")
        target_path = _path(found["path"], "target_project")
    source_path = _text(record, "source_project")
    if source_path is not None:
        source_path = _path(source_path, "source_project")
    return Observation(
        time=_text(record, "timestamp"),
        method=_text(record, "method") or "",
        path=_text(record, "path") or "",
        route=_text(record, "route"),
        reason=reason,
        denied=decision == "deny",
        dry_run=record.get("would_deny") is True,
        status=_int(record, "status"),
        fingerprint=_text(record, "fingerprint") or "",
        job_id=_id(record, "job_id"),
        source_path=source_path,
        source_id=source_id,
        target=target,
        target_id=target_id,
        target_path=target_path,
        required=_policies(record, "required"),
        granted=_names(record, "granted"),
    )


def _reason(value: Any) -> Reason:
    try:
        return Reason(value)
    except ValueError:
        if value == "none":  # nothing was decided (see Exchange.final_reason)
            return Reason.NO_TOKEN
        raise _Bad(f"unknown reason {value!r}") from None


def _text(record: Mapping[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise _Bad(f"{key} is not a string")
    return value


def _int(record: Mapping[str, Any], key: str) -> int | None:
    value = record.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _Bad(f"{key} is not an integer")
    return value


def _id(record: Mapping[str, Any], key: str) -> int | None:
    value = _int(record, key)
    if value is not None and not 0 < value <= _MAX_ID:
        raise _Bad(f"{key} {value} is not a GitLab id")
    return value


def _path(value: str, key: str) -> str:
    if not _PATH.fullmatch(value):
        raise _Bad(f"{key} {value!r} is not a project path")
    return value


def _names(record: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{key} is not a list of names")
    return tuple(value)


def _policies(record: Mapping[str, Any], key: str) -> tuple[str, ...]:
    names = _names(record, key)
    unknown = sorted(set(names) - KNOWN_POLICIES)
    if unknown:
        raise _Bad(f"{key}: unknown permission {', '.join(unknown)}")
    return names
