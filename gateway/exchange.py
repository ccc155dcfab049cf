"""The record of one proxied request, and the one log line and metrics it ends with.

Log line fields (event `request`): request_id, method, path (token query parameters
redacted), route, decision (allow|deny, absent when refused before the gate), reason, status,
bytes_in, bytes_out, decision_ms, upstream_ms, total_ms, remote, the decision's audit fields
(fingerprint, job_id, source_project, target_project, required, granted), `would_deny` in
dry-run mode and `error` when something failed. Never a header, never a raw token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

import structlog

from gateway import metrics
from gateway.decision import Decision, Reason
from gateway.forward import Transfer
from gateway.log import get_logger, redact_target

if TYPE_CHECKING:
    from gateway.handler import Verdict

__all__ = ["Exchange", "Recorder"]


@dataclass(slots=True)
class Exchange:
    """What happened to one request, filled in as it moves through the pipeline."""

    transfer: Transfer
    method: str
    target: str
    remote: str | None
    started: float
    verdict: Verdict | None = None
    decision: Decision | None = None
    decision_seconds: float | None = None
    would_deny: bool = False
    reason: Reason | None = None  # the gateway's own answer, when it made one
    status: int = 0

    @property
    def final_reason(self) -> str:
        if self.reason is not None:
            return self.reason.value
        return self.decision.reason.value if self.decision is not None else "none"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Recorder:
    """Writes the request line and updates the request metrics."""

    def __init__(self) -> None:
        self._log: structlog.typing.FilteringBoundLogger = get_logger("gateway.request")
        self._info = self._log.is_enabled_for(logging.INFO)
        self._counters: dict[tuple[str, int], Any] = {}
        self._bytes_in = metrics.BYTES.labels("in")
        self._bytes_out = metrics.BYTES.labels("out")

    def finish(self, exchange: Exchange) -> None:
        reason = exchange.final_reason
        self._count(exchange, reason)
        if exchange.status >= 500 or exchange.transfer.error:
            self._log.warning("request", **self._fields(exchange, reason))
        elif self._info:  # `--log-level warning` skips building the line at all
            self._log.info("request", **self._fields(exchange, reason))

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
            metrics.DRY_RUN_DENIALS.labels(reason).inc()

    def _fields(self, exchange: Exchange, reason: str) -> dict[str, Any]:
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
            "total_ms": _ms(perf_counter() - exchange.started),
            "remote": exchange.remote,
        }
        if exchange.decision is not None:
            fields.update(_audit_fields(exchange.decision))
        if exchange.would_deny:
            fields["would_deny"] = True
        if transfer.error:
            fields["error"] = transfer.error
        return fields


def _audit_fields(decision: Decision) -> dict[str, Any]:
    audit = decision.audit
    fields: dict[str, Any] = {"decision": "allow" if decision.allowed else "deny"}
    optional = {
        "route": audit.route,
        "fingerprint": audit.fingerprint,
        "job_id": audit.job_id,
        "source_project": audit.source_project,
        "target_project": audit.target,
        "required": list(audit.required) or None,
        "granted": list(audit.granted) or None,
    }
    fields.update((key, value) for key, value in optional.items() if value is not None)
    return fields
