"""Prometheus metrics (prometheus-client). Names are part of the operator interface: keep them stable.

Two kinds:
- per-request metrics (module level, below): every process that serves requests counts them;
  with several workers prometheus-client's multiprocess mode sums every worker's values (the
  serve command sets it up before the workers start). `init_labels` gives every known label
  value a zero series at start-up, so `increase()` and `rate()` see the first event.
- process-group metrics (`GroupMetrics`): reloads, the last reload's outcome, build info and
  worker restarts, kept once per gateway by the process that owns the admin listener (the
  only process with `--workers 1`, else the supervisor), never once per worker.
With several workers, `WorkerProcessCollector` also gives each worker's `process_*` metrics
(labelled `worker`), which multiprocess mode alone does not export.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.core.decision import STATUS, Reason

__all__ = [
    "BYTES",
    "CACHE_HITS",
    "CACHE_MISSES",
    "CONNECTIONS_REFUSED",
    "DECISION_CHECKS",
    "DECISION_SECONDS",
    "DRY_RUN_DENIALS",
    "IN_FLIGHT",
    "REQUESTS",
    "REQUEST_SECONDS",
    "STORE_LOOKUPS",
    "UPSTREAM_ERRORS",
    "UPSTREAM_SECONDS",
    "GroupMetrics",
    "WorkerProcessCollector",
    "collecting_registry",
    "init_labels",
    "mark_worker_dead",
]

# A decision is ~10 us from the cache, but one that waits on the store can take up to
# `store_timeout` (2 s by default): the buckets reach past it, so a slow store shows.
_FAST = (
    *(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01),
    *(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10),
)
# Up to the upstream's read timeout (300 s by default); connect_timeout (10 s) is a bucket.
_SLOW = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_TOTAL = (0.0001, 0.00025, 0.0005, *_SLOW)

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
REQUEST_SECONDS = Histogram(
    "gateway_request_duration_seconds",
    "End-to-end time of a request, from its head read to its last byte sent (or cut)",
    buckets=_TOTAL,
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


# Every label value the code can produce, for `init_labels`.
UPSTREAM_ERROR_KINDS = (
    Reason.UPSTREAM_UNREACHABLE.value,
    Reason.UPSTREAM_TIMEOUT.value,
    Reason.UPSTREAM_BAD_RESPONSE.value,
    "upstream_body_failed",
)
STORE_RESULTS = ("found", "not_found", "error")


def init_labels(store_kind: str) -> None:
    """A zero series for every known label value of the per-request counters (call once per
    process at start-up): a counter without a series until its first event hides that first
    event from `increase()`, so an alert on it would miss the first failure.

    Requests: every gateway-made answer (reason, status) is known in advance; forwarded
    requests carry the upstream's status and appear when they happen.
    """
    for reason, status in STATUS.items():
        REQUESTS.labels(reason.value, str(status))
        DRY_RUN_DENIALS.labels(reason.value)
    for kind in UPSTREAM_ERROR_KINDS:
        UPSTREAM_ERRORS.labels(kind)
    for direction in ("in", "out"):
        BYTES.labels(direction)
    for result in STORE_RESULTS:
        STORE_LOOKUPS.labels(store_kind, result)


class GroupMetrics:
    """The metrics kept once per gateway (see the module docstring), in `registry`.

    The start-up load counts as a successful load (as Prometheus's own
    `prometheus_config_last_reload_successful` does).
    """

    def __init__(self, registry: CollectorRegistry, *, mode: str, routes_sha256: str) -> None:
        self.reloads = Counter(
            "gateway_reloads_total",
            "SIGHUP reloads by result (ok|failed), once per gateway",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        self.last_reload_ok = Gauge(
            "gateway_config_last_reload_successful",
            "1 if the last load of the route table and store (start-up or SIGHUP) succeeded",
            registry=registry,
        )
        self.last_reload_time = Gauge(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load (start-up or SIGHUP)",
            registry=registry,
        )
        self.build_info = Gauge(
            "gateway_build_info",
            "Always 1: the version, mode (enforce|dry-run) and route table in force",
            ["version", "mode", "routes_sha256"],
            registry=registry,
        )
        self.worker_restarts = Counter(
            "gateway_worker_restarts_total",
            "Workers that died and were started again by the supervisor",
            registry=registry,
        )
        self._mode = mode
        self._routes = routes_sha256
        self.build_info.labels(__version__, mode, routes_sha256).set(1)
        self.last_reload_ok.set(1)
        self.last_reload_time.set(time.time())

    def reloaded(self, ok: bool, routes_sha256: str | None = None) -> None:
        """Count a SIGHUP reload; on success, the new route table's digest goes in build_info."""
        self.reloads.labels("ok" if ok else "failed").inc()
        self.last_reload_ok.set(1 if ok else 0)
        if not ok:
            return
        self.last_reload_time.set(time.time())
        if routes_sha256 is not None and routes_sha256 != self._routes:
            self.build_info.remove(__version__, self._mode, self._routes)
            self._routes = routes_sha256
            self.build_info.labels(__version__, self._mode, routes_sha256).set(1)


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


class WorkerProcessCollector(Collector):
    """`process_*` metrics (CPU, memory, file descriptors, start time) of every worker, with a
    `worker` label (`supervisor` for the supervisor itself). Multiprocess mode sums counters
    across processes and has no notion of per-process resource use, so this reads each
    process's /proc entry at scrape time (prometheus-client's ProcessCollector, once per pid)."""

    def __init__(self, workers: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for label, pid in self._workers():
            collector = ProcessCollector(pid=_constant(pid), registry=None)
            for family in collector.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "worker": label}, sample.value)
        yield from merged.values()
