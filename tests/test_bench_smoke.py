"""The bench scripts in CI: a short real round (`bench/run.py --smoke`) so they never rot.

No speed thresholds here (those live in bench/README.md, measured by hand). What is asserted:
the round ran the setups that only need Python, every setup has a recorded status, every
setup that ran carried load and reported its figures, and the gateway enforced (or, in dry-run,
forwarded) the mix. Setups whose tools are absent (wrk, nginx, Envoy) are skipped by the
harness with a reason; with no wrk, the bundled Python load generator drives the load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "bench" / "run.py"
STATUSES = {"ok", "skipped", "not_available_yet", "failed"}

pytestmark = pytest.mark.timeout(170)


def a_bench_round(results: Path, *extra: str) -> dict[str, Any]:
    argv = [sys.executable, str(RUN), "--smoke", "--results-dir", str(results), *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=150, cwd=REPO, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    doc: dict[str, Any] = json.loads((results / "latest.json").read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def smoke_round(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return a_bench_round(tmp_path_factory.mktemp("bench"))


def test_the_python_only_setups_ran_and_carried_load(smoke_round: dict[str, Any]) -> None:
    for name in ("direct", "bare_proxy"):
        record = smoke_round["setups"][name]
        assert record["status"] == "ok", record
        assert record["requests"] > 0
        assert record["requests_per_s"] > 0
        assert 0 < record["latency_ms"]["p50"] <= record["latency_ms"]["p99"]
        assert record["cpu_us_per_request"] > 0
        assert record["non_2xx"] == 0, "the stub answers 200 to everything"


def test_every_setup_has_a_status_and_no_setup_broke(smoke_round: dict[str, Any]) -> None:
    setups = smoke_round["setups"]
    assert set(setups) >= {
        "direct",
        "bare_proxy",
        "gateway_enforce_1w",
        "gateway_enforce_2w",
        "gateway_dry_run",
        "nginx_auth_request",
        "envoy_ext_authz",
        "nginx_proxy",
        "envoy_router",
    }
    broken = {name: r.get("reason") for name, r in setups.items() if r["status"] == "failed"}
    assert not broken, broken
    for name, record in setups.items():
        assert record["status"] in STATUSES, name
        if record["status"] == "ok":
            assert record["requests_per_s"] > 0, name
            assert record["cpu"], name
        else:
            assert record["reason"], name


def test_the_gateway_enforces_the_mix_and_dry_run_forwards_it(smoke_round: dict[str, Any]) -> None:
    enforce, dry_run = (
        smoke_round["setups"]["gateway_enforce_1w"],
        smoke_round["setups"]["gateway_dry_run"],
    )
    if enforce["status"] != "ok" or dry_run["status"] != "ok":
        reason = f"gateway not available: {enforce.get('reason') or dry_run.get('reason')}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)  # the gateway's setups run in CI; a skip there would hide it
        pytest.skip(reason)
    predicted = smoke_round["traffic"]["predicted_denied_share"]
    assert 0.5 * predicted < enforce["non_2xx_share"] < 1.5 * predicted
    assert dry_run["non_2xx"] == 0


def test_results_carry_machine_ratios_targets_bodies_and_micro(smoke_round: dict[str, Any]) -> None:
    machine = smoke_round["machine"]
    assert machine["nproc"] >= 1
    assert machine["python"]
    assert machine["aiohttp"]
    assert smoke_round["ratios"]["bare_proxy/direct"]["throughput"] > 0
    assert {t["target"] for t in smoke_round["targets"]} >= {
        "gateway >= 90% of the bare proxy's req/s",
        "decision (extract + match + cached resolve + decide) <= 10 us",
    }
    for name in ("direct", "bare_proxy"):
        large = smoke_round["large_bodies"][name]
        assert large["status"] == "ok", large
        assert large["upload"]["verified"]
        assert large["download"]["verified"]
        assert large["upload"]["mb_per_s"] > 0
        assert large["rss_peak_mib"]["max_process"] > 0
    match = smoke_round["micro"]["figures"]["route_match"]
    assert match["status"] == "ok"
    assert match["us"] > 0


def test_the_python_load_generator_drives_a_round_without_wrk(tmp_path: Path) -> None:
    doc = a_bench_round(
        tmp_path,
        *("--setups", "direct,bare_proxy", "--loadgen", "python"),
        *("--light-duration", "0", "--no-large", "--no-micro"),
    )
    for name in ("direct", "bare_proxy"):
        record = doc["setups"][name]
        assert record["status"] == "ok", record
        assert record["loadgen"].startswith("python")
        assert record["requests"] > 0
        assert record["latency_ms"]["p99"] > 0


def test_wrk_output_is_parsed() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import harness

    output = """Running 10s test @ http://127.0.0.1:8080
  1 threads and 50 connections
  Latency Distribution
     50%    4.30ms
     75%    5.10ms
     90%  812.00us
     99%    1.20s
  110400 requests in 10.00s, 22.1MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 2900
Requests/sec:  11040.00
"""
    parsed = harness.parse_wrk(output)
    assert parsed["requests"] == 110400
    assert parsed["requests_per_s"] == 11040.0
    assert parsed["latency_ms"] == {"p50": 4.3, "p75": 5.1, "p90": 0.812, "p99": 1200.0}
    assert parsed["non_2xx"] == 2900
    assert parsed["errors"] == {"read": 3, "timeout": 2}
    assert parsed["duration_s"] == 10.0
