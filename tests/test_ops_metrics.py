"""Issue 17 points 4, 7 and 8 against a real `serve`: the mode and effective configuration in
the start-up line, `/-/ready` and `gateway_build_info`; metrics initialised at zero, counted once
per gateway, per-worker process metrics; dead workers respawned, the supervisor giving up only
when respawns keep failing."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.proxy import REPO, call
from job_grants import write_grants
from prometheus_client.parser import text_string_to_metric_families

from gateway.proxy.server import effective_config
from gateway.settings import Settings


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def value(text: str, name: str, **labels: str) -> float:
    found = [v for got, v in samples(text, name) if all(got.get(k) == x for k, x in labels.items())]
    assert found, f"no {name}{labels} series"
    return sum(found)


async def scrape(gateway) -> str:
    return (await call("GET", gateway.admin_url + "/metrics")).body.decode()


def test_the_effective_configuration_redacts_passwords() -> None:
    settings = Settings(
        upstream="http://127.0.0.1:1",
        store="redis://:s3cret@redis.example:6379/0",
        routes=REPO / "policies" / "routes.yaml",
    )
    config = effective_config(settings)

    assert config["store"] == "redis://:***@redis.example:6379/0"
    assert "s3cret" not in repr(config)
    assert config["mode"] == "enforce"
    assert config["grace_period"] == 30.0
    assert set(config) == set(Settings.model_fields)


async def test_the_mode_shows_in_the_start_up_line_ready_and_build_info(
    an_upstream, a_gateway_process
) -> None:
    gateway = a_gateway_process("--upstream", an_upstream.url, "--mode", "dry-run")

    (listening,) = gateway.events("listening")
    assert listening["mode"] == "dry-run"
    assert listening["config"]["upstream"] == an_upstream.url
    assert listening["config"]["store"] == "memory://"
    ready = await call("GET", gateway.admin_url + "/-/ready")
    assert ready.json()["mode"] == "dry-run"
    assert ready.json()["config"]["mode"] == "dry-run"
    metrics = await scrape(gateway)
    ((labels, one),) = samples(metrics, "gateway_build_info")
    assert one == 1
    assert labels["mode"] == "dry-run"
    assert labels["version"] == "0.1.0"
    assert len(labels["routes_sha256"]) == 12


async def test_counters_start_at_zero_and_the_histograms_cover_the_timeouts(
    an_upstream, a_gateway_process
) -> None:
    gateway = a_gateway_process("--upstream", an_upstream.url)
    metrics = await scrape(gateway)

    # Every gateway-made answer and failure kind has a series before its first event.
    assert value(metrics, "gateway_requests_total", reason="store_unavailable", status="503") == 0
    assert value(metrics, "gateway_requests_total", reason="token_revoked", status="401") == 0
    assert value(metrics, "gateway_requests_total", reason="drain_cut", status="503") == 0
    assert value(metrics, "gateway_upstream_errors_total", kind="upstream_timeout") == 0
    assert value(metrics, "gateway_store_lookups_total", store="memory", result="error") == 0
    assert value(metrics, "gateway_dry_run_denials_total", reason="not_allowlisted") == 0
    assert value(metrics, "gateway_reloads_total", result="failed") == 0
    assert value(metrics, "gateway_config_last_reload_successful") == 1
    assert value(metrics, "gateway_config_last_reload_success_timestamp_seconds") > 0
    decision_buckets = {
        labels["le"] for labels, _ in samples(metrics, "gateway_decision_seconds_bucket")
    }
    assert {"2.0", "2.5", "5.0"} <= decision_buckets  # the store timeout (2 s) and beyond
    upstream_buckets = {
        labels["le"] for labels, _ in samples(metrics, "gateway_upstream_seconds_bucket")
    }
    assert {"10.0", "300.0"} <= upstream_buckets  # connect_timeout, read_timeout

    await call("GET", gateway.url + "/-up-/slow?delay=0.3")
    metrics = await scrape(gateway)
    assert value(metrics, "gateway_request_duration_seconds_count") == 1
    assert value(metrics, "gateway_request_duration_seconds_bucket", le="0.25") == 0
    assert value(metrics, "gateway_request_duration_seconds_bucket", le="0.5") == 1


async def test_a_failed_reload_shows_in_the_last_reload_gauge(
    an_upstream, a_gateway_process, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.yaml"
    shutil.copy(REPO / "policies" / "routes.yaml", routes)
    gateway = a_gateway_process("--upstream", an_upstream.url, "--routes", str(routes))
    ((before, _),) = samples(await scrape(gateway), "gateway_build_info")

    routes.write_text("routes: [this is not a route table\n")
    gateway.signal(signal.SIGHUP)
    await asyncio.to_thread(gateway.wait_for_event, "reload_failed")
    metrics = await scrape(gateway)
    assert value(metrics, "gateway_config_last_reload_successful") == 0
    assert value(metrics, "gateway_reloads_total", result="failed") == 1

    text = (REPO / "policies" / "routes.yaml").read_text()
    routes.write_text(text + "\n# edited\n")
    gateway.signal(signal.SIGHUP)
    await asyncio.to_thread(gateway.wait_for_event, "reloaded")
    metrics = await scrape(gateway)
    assert value(metrics, "gateway_config_last_reload_successful") == 1
    assert value(metrics, "gateway_reloads_total", result="ok") == 1
    ((after, _),) = samples(metrics, "gateway_build_info")
    assert after["routes_sha256"] != before["routes_sha256"]


@pytest.mark.slow
async def test_with_workers_reloads_count_once_and_each_worker_has_process_metrics(
    an_upstream, a_gateway_process
) -> None:
    gateway = a_gateway_process("--upstream", an_upstream.url, "--workers", "2")
    metrics = await scrape(gateway)
    workers = {labels["worker"] for labels, _ in samples(metrics, "process_resident_memory_bytes")}
    assert workers == {"supervisor", "0", "1"}
    assert len(samples(metrics, "gateway_build_info")) == 1
    assert value(metrics, "gateway_requests_total", reason="store_unavailable", status="503") == 0

    gateway.signal(signal.SIGHUP)
    await asyncio.to_thread(gateway.wait_for_event, "reloaded", 3)  # two workers + supervisor
    metrics = await scrape(gateway)
    assert value(metrics, "gateway_reloads_total", result="ok") == 1
    assert len(samples(metrics, "gateway_reloads_total")) == 2  # ok and failed, once each

    (started,) = gateway.events("workers_started")
    os.kill(started["pids"][1], signal.SIGKILL)
    await asyncio.to_thread(gateway.wait_for_event, "worker_respawned", 1, 30)
    metrics = await scrape(gateway)
    assert value(metrics, "gateway_worker_restarts_total") == 1
    assert value(metrics, "gateway_reloads_total", result="ok") == 1  # kept across the respawn
    assert await asyncio.to_thread(gateway.stop) == 0


@pytest.mark.slow
def test_the_supervisor_exits_only_when_respawns_keep_failing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    grants = str(write_grants(tmp_path / "grants.yaml"))
    command = [sys.executable, "-m", "gateway"]
    assert (
        subprocess.run([*command, "store", "load", grants, "--store", url, "--create"]).returncode
        == 0
    )
    log = tmp_path / "gateway.log"
    serve = [
        *command,
        "serve",
        "--upstream",
        "http://127.0.0.1:9",
        "--store",
        url,
        "--workers",
        "2",
    ]
    serve += ["--port", "0" if False else str(_free_port()), "--admin-port", str(_free_port())]
    serve += ["--log-format", "json"]
    with log.open("wb") as out:
        proc = subprocess.Popen(serve, stderr=out)
    try:
        _wait_for(log, '"admin_listening"')  # the supervisor has opened its store too
        (tmp_path / "store.db").unlink()  # a replacement worker now cannot start
        pids = _started_pids(log)
        os.kill(pids[0], signal.SIGKILL)
        assert proc.wait(timeout=90) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert text.count('"worker_respawn_failed"') == 5  # RESPAWN_LIMIT, then it gives up
    assert '"workers_failing"' in text
    assert "no token store at" in text
    assert "Traceback" not in text


def _free_port() -> int:
    from fixtures.proxy import free_port

    return free_port()


def _wait_for(log: Path, needle: str, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle} not logged:\n{log.read_text()}")


def _started_pids(log: Path) -> list[int]:
    import json

    for line in log.read_text().splitlines():
        if '"workers_started"' in line:
            return list(json.loads(line)["pids"])
    raise AssertionError("no workers_started line")


def test_a_relative_sqlite_store_shows_as_the_file_in_use(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(upstream="http://127.0.0.1:1", routes=REPO / "policies" / "routes.yaml")

    assert settings.store == "sqlite:///gateway.db"  # the documented default
    assert effective_config(settings)["store"] == f"sqlite:///{tmp_path}/gateway.db"


def test_serve_help_shows_every_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 0
    assert "[default: 30.0; env GATEWAY_GRACE_PERIOD]" in result.stdout
    assert "[default: sqlite:///gateway.db; env GATEWAY_STORE]" in result.stdout
    assert "[default: enforce; env GATEWAY_MODE]" in result.stdout
    assert "[default: off; env GATEWAY_REQUIRE_JOB_TOKEN]" in result.stdout
    assert result.stdout.count("[default: ") == len(Settings.model_fields)
