"""Prometheus metrics (prometheus-client). Names are part of the operator interface: keep them stable.

With several workers, prometheus-client's multiprocess mode aggregates every worker's values
(the serve command sets it up before the workers start).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as _multiprocess

__all__ = [
    "BYTES",
    "CACHE_HITS",
    "CACHE_MISSES",
    "CONNECTIONS_REFUSED",
    "DECISION_CHECKS",
    "DECISION_SECONDS",
    "DRY_RUN_DENIALS",
    "IN_FLIGHT",
    "RELOADS",
    "REQUESTS",
    "STORE_LOOKUPS",
    "UPSTREAM_ERRORS",
    "UPSTREAM_SECONDS",
    "collecting_registry",
    "mark_worker_dead",
]

_FAST = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1)
_SLOW = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

REQUESTS = Counter(
    "gateway_requests_total",
    "Requests by decision reason and response status",
    ["reason", "status"],
)
DECISION_SECONDS = Histogram(
    "gateway_decision_seconds",
    "Time to reach a decision (extract, match, resolve, decide)",
    buckets=_FAST,
)
UPSTREAM_SECONDS = Histogram(
    "gateway_upstream_seconds",
    "Time from forwarding to the upstream's response headers",
    buckets=_SLOW,
)
UPSTREAM_ERRORS = Counter("gateway_upstream_errors_total", "Upstream failures by kind", ["kind"])
BYTES = Counter("gateway_bytes_total", "Body bytes proxied", ["direction"])  # direction: in|out
IN_FLIGHT = Gauge(
    "gateway_in_flight_requests", "Requests being handled", multiprocess_mode="livesum"
)
STORE_LOOKUPS = Counter(
    "gateway_store_lookups_total",
    "Token store lookups by store kind and result",
    ["store", "result"],
)
CACHE_HITS = Counter("gateway_cache_hits_total", "Token resolutions answered from the cache")
CACHE_MISSES = Counter("gateway_cache_misses_total", "Token resolutions that went to the store")

# --- proxy (issue 3): dry-run outcomes, reloads, and the multiprocess wiring used by `serve`
DRY_RUN_DENIALS = Counter(
    "gateway_dry_run_denials_total",
    "Requests forwarded in dry-run mode that enforce mode would have denied, by reason",
    ["reason"],
)
# The decision listener (gateway/authz): its requests also count in REQUESTS (reason, status).
DECISION_CHECKS = Counter(
    "gateway_decision_checks_total",
    "Decision-listener requests by protocol (nginx|forwarded|envoy|none)",
    ["protocol"],
)
RELOADS = Counter("gateway_reloads_total", "SIGHUP reloads by result (ok|failed)", ["result"])
CONNECTIONS_REFUSED = Counter(
    "gateway_connections_refused_total", "Client connections refused over max_connections"
)


def collecting_registry(multiproc_dir: str | None) -> CollectorRegistry:
    """The registry `/metrics` serves: this process's own, or every worker's when `serve` runs
    several (prometheus-client multiprocess mode, files under `multiproc_dir`)."""
    if multiproc_dir is None:
        return REGISTRY
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    return registry


def mark_worker_dead(pid: int, multiproc_dir: str) -> None:
    """Drop a dead worker's live gauges (in-flight) from the aggregate."""
    _multiprocess.mark_process_dead(pid, multiproc_dir)  # type: ignore[no-untyped-call]
