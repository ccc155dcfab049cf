"""The record of one proxied request, and the one log line and metrics it ends with.

Log line fields (event `request`): request_id, method, path (token query parameters
redacted), route, decision (allow|deny, absent when refused before the gate), reason, status,
bytes_in, bytes_out, decision_ms, upstream_ms, total_ms, remote (the client: behind
`trusted_proxies`, the right-most untrusted X-Forwarded-For address, see `client_address`),
`peer` (the socket peer, when it differs from remote), the decision's audit fields
(fingerprint, job_id, source_project, source_project_id, target_project,
target_project_id, required, granted), `would_deny` in
dry-run mode, `protocol` on the decision listener (nginx, forwarded, envoy) and `error`
when something failed. Never a header, never a raw token.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from gateway.core.decision import Decision, Reason
from gateway.ops import log, metrics
from gateway.ops.log import LineLogger, redact_target
from gateway.proxy.forward import Transfer

if TYPE_CHECKING:
    from gateway.ops.observe import Observer

__all__ = ["Exchange", "Recorder", "RequestIds", "accepted_request_id", "client_address"]

_MASK64 = (1 << 64) - 1
_SCRAMBLE = 0x9E3779B97F4A7C15  # odd, so multiplying permutes 64-bit values (no collisions)


@dataclass(slots=True)
class Exchange:
    """What happened to one request, filled in as it moves through the pipeline: a record for
    the log line and the metrics, never read back to decide anything."""

    transfer: Transfer
    method: str
    target: str
    remote: str | None
    started: float
    peer: str | None = None  # the socket peer, when `remote` is a forwarded client address
    decision: Decision | None = None
    decision_seconds: float | None = None
    would_deny: bool = False
    reason: Reason | None = None  # the gateway's own answer, when it made one
    status: int = 0
    protocol: str | None = None  # the decision listener's: nginx, forwarded or envoy

    @property
    def final_reason(self) -> str:
        if self.reason is not None:
            return self.reason.value
        return self.decision.reason.value if self.decision is not None else "none"


class RequestIds:
    """Request ids: 16 hex digits, unique within a process and, in practice, across processes.

    A counter from a random 64-bit start (one `os.urandom` per process, not one per request),
    scrambled by a fixed odd multiplier so consecutive ids do not look alike. Two processes
    repeat an id only if their counters' ranges overlap (about 1e-10 for a billion requests).
    An id correlates log lines of the gateway and the upstream; it is no secret.
    """

    __slots__ = ("_counter",)

    def __init__(self) -> None:
        self._counter = itertools.count(secrets.randbits(64))

    def new(self) -> str:
        return f"{next(self._counter) * _SCRAMBLE & _MASK64:016x}"


# An incoming X-Request-Id a trusted proxy set is kept (nginx's $request_id is 32 hex digits,
# Envoy's a UUID, GitLab's correlation ids 26 characters) if it is short and made of these
# characters only: it reaches log lines and the upstream's headers.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")


def accepted_request_id(values: Iterable[str]) -> str | None:
    """The incoming X-Request-Id to keep (from a trusted hop only: the caller checks), or None
    when there is none, several, or one too long or with other characters."""
    found = list(values)
    if len(found) != 1:
        return None
    value = found[0].strip()
    return value if _REQUEST_ID.fullmatch(value) else None


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusts: Callable[[str | None], bool]
) -> str | None:
    """The client's address behind trusted proxies (nginx `real_ip_recursive on`, Envoy's
    `xff_num_trusted_hops` without a fixed count): walk X-Forwarded-For from the right, skipping
    trusted addresses; the first untrusted one is the client. If every address is trusted, the
    left-most; a malformed entry stops the walk at the last trusted hop before it. A peer that
    is not trusted is the client itself, whatever its headers say.
    """
    if not trusts(peer):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            address = str(ipaddress.ip_address(hop.removeprefix("[").split("]")[0]))
        except ValueError:
            return client
        client = address
        if not trusts(address):
            return address
    return client


def _ms(seconds: float | None) -> float | None:
    """Milliseconds to the microsecond (durations are never negative: `round` costs 3x this)."""
    return None if seconds is None else int(seconds * 1_000_000 + 0.5) / 1000


class Recorder:
    """Writes the request line, updates the request metrics and, with `--observations`, counts
    the decision in the observations aggregate (gateway/ops/observe.py).

    The line goes to `output`: by default the process's (`log.output()`, what `log.configure`
    returned) when the Recorder is built. Built before `configure` (or in a process that never
    calls it), it has none: each line then goes through structlog's chain as configured when
    the line is written (`LineLogger`), so it still lands where `configure` said.
    """

    def __init__(
        self, observer: Observer | None = None, *, output: log.Output | None = None
    ) -> None:
        self._observer = observer  # the optional aggregate for `suggest` (gateway/ops/observe.py)
        self._log = LineLogger("gateway.request", output or log.output())
        self._info = self._log.enabled(logging.INFO)
        # Labelled children, built once each: `.labels()` costs ~0.7 us per call.
        self._counters: dict[tuple[str, int], Any] = {}
        self._denials: dict[str, Any] = {}
        self._bytes_in = metrics.BYTES.labels("in")
        self._bytes_out = metrics.BYTES.labels("out")

    def close(self) -> None:
        """Write any request line still pending (they go out at the end of each loop iteration)."""
        self._log.flush()

    def finish(self, exchange: Exchange) -> None:
        reason = exchange.final_reason
        total = perf_counter() - exchange.started
        self._count(exchange, reason)
        metrics.REQUEST_SECONDS.observe(total)
        if self._observer is not None and exchange.decision is not None:
            self._observer.add(exchange.decision, exchange.would_deny)
        if exchange.status >= 500 or exchange.transfer.error:
            self._log.log(logging.WARNING, "request", self._fields(exchange, reason, total))
        elif self._info:  # `--log-level warning` skips building the line at all
            self._log.log(logging.INFO, "request", self._fields(exchange, reason, total))

    def _count(self, exchange: Exchange, reason: str) -> None:
        key = (reason, exchange.status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.REQUESTS.labels(reason, str(exchange.status))
        counter.inc()
        transfer = exchange.transfer
        if exchange.decision_seconds is not None:
            metrics.DECISION_SECONDS.observe(exchange.decision_seconds)
        if transfer.upstream_seconds is not None:
            metrics.UPSTREAM_SECONDS.observe(transfer.upstream_seconds)
        if transfer.bytes_in:
            self._bytes_in.inc(transfer.bytes_in)
        if transfer.bytes_out:
            self._bytes_out.inc(transfer.bytes_out)
        if exchange.would_deny:
            denials = self._denials.get(reason)
            if denials is None:
                denials = self._denials[reason] = metrics.DRY_RUN_DENIALS.labels(reason)
            denials.inc()

    def _fields(self, exchange: Exchange, reason: str, total: float) -> dict[str, Any]:
        transfer = exchange.transfer
        fields: dict[str, Any] = {
            "request_id": transfer.request_id,
            "method": exchange.method,
            "path": redact_target(exchange.target),
            "status": exchange.status,
            "reason": reason,
            "bytes_in": transfer.bytes_in,
            "bytes_out": transfer.bytes_out,
            "decision_ms": _ms(exchange.decision_seconds),
            "upstream_ms": _ms(transfer.upstream_seconds),
            "total_ms": _ms(total),
            "remote": exchange.remote,
        }
        if exchange.peer is not None:
            fields["peer"] = exchange.peer
        if exchange.protocol is not None:
            fields["protocol"] = exchange.protocol
        if exchange.decision is not None:
            _add_audit(fields, exchange.decision)
        if exchange.would_deny:
            fields["would_deny"] = True
        if transfer.error:
            fields["error"] = transfer.error
        return fields


def _add_audit(fields: dict[str, Any], decision: Decision) -> None:
    """The decision and its audit fields that are set, in a fixed order (one per request: no
    intermediate dicts)."""
    audit = decision.audit
    fields["decision"] = "allow" if decision.allowed else "deny"
    if audit.route is not None:
        fields["route"] = audit.route
    if audit.fingerprint is not None:
        fields["fingerprint"] = audit.fingerprint
    if audit.job_id is not None:
        fields["job_id"] = audit.job_id
    if audit.source_project is not None:
        fields["source_project"] = audit.source_project
    if audit.source_project_id is not None:
        fields["source_project_id"] = audit.source_project_id
    if audit.target is not None:
        fields["target_project"] = audit.target
    if audit.target_project_id is not None:
        fields["target_project_id"] = audit.target_project_id
    if audit.required:
        fields["required"] = list(audit.required)
    if audit.granted:
        fields["granted"] = list(audit.granted)
