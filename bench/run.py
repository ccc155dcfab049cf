"""The benchmark driver: what the policy costs, next to the architectures users would pick instead.

    python bench/run.py                 # the full round (~3-4 min): every setup whose tools exist
    python bench/run.py --smoke         # CI smoke: ~2 s per setup, results in a temp dir
    python bench/run.py --setups bare_proxy,gateway_enforce_1w --duration 20
    python bench/run.py --only-profile gateway_enforce_1w      # just the CPU breakdown

Everything runs on 127.0.0.1. Each setup starts its own processes (the server under test pinned
to core 0, the load generator and the upstream stub to core 1), is warmed up, loaded for
`--duration` seconds with the request mix of bench/traffic.py, and stopped. A setup whose tool
is missing or does not start is recorded with its reason, never silently dropped. Results go to
bench/results/<timestamp>.json and latest.json (+ latest.png, and the README's Results section).
See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import traffic  # noqa: E402

PY = sys.executable
GiB = 1 << 30


class SetupFailed(Exception):
    """A setup could not run; the message says why (recorded in the results)."""


@dataclass
class Ctx:
    args: argparse.Namespace
    cores: harness.Cores
    tools: dict[str, str | None]
    work: Path
    mix_dir: Path
    cold_tokens: int
    procs: harness.Procs
    store_url: str | None = None
    gateway_problem: str | None = None
    large: bool = False  # large-body runs need the Python stub (nginx cannot generate blobs)
    port: int = 0
    server: dict[str, int] = field(
        default_factory=dict
    )  # component -> root pid (server under test)
    upstream_pid: int | None = None


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    title: str
    role: str  # reference | subject | peer | native
    needs: tuple[str, ...]
    start: Callable[[Ctx], None]


# --- components


def _prefix(ctx: Ctx, name: str) -> Path:
    prefix = Path(tempfile.mkdtemp(prefix=name + "-", dir=ctx.work))
    prefix.chmod(0o755)  # nginx workers run as nobody when started by root
    return prefix


def _template(name: str, prefix: Path, **values: int) -> Path:
    text = (BENCH / "peers" / name).read_text(encoding="utf-8").replace("@PREFIX@", str(prefix))
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    out = prefix / name
    out.write_text(text, encoding="utf-8")
    return out


def _ready(ctx: Ctx, name: str, port: int, timeout: float = 30.0) -> None:
    if not harness.wait_http(port, timeout, lambda: ctx.procs.alive(name)):
        state = "exited" if not ctx.procs.alive(name) else f"not answering after {timeout:.0f} s"
        tail = ctx.procs.log_tail(name)
        last = tail.rsplit(" | ", 1)[-1]  # the exception line of a traceback comes last
        raise SetupFailed(f"{name} {state}: {last} (log tail: {tail})")


def start_nginx(ctx: Ctx, name: str, conf: str, where: str | None, **ports: int) -> int:
    prefix = _prefix(ctx, name)
    path = _template(conf, prefix, **ports)
    argv = [
        str(ctx.tools["nginx"]),
        "-p",
        str(prefix),
        "-e",
        str(prefix / "error.log"),
        "-c",
        str(path),
    ]
    pid = ctx.procs.start(name, ctx.cores.wrap(argv, where))
    _ready(ctx, name, ports["PORT"])
    return pid


def start_envoy(ctx: Ctx, name: str, conf: str, where: str | None, **ports: int) -> int:
    path = _template(conf, _prefix(ctx, name), **ports)
    argv = [str(ctx.tools["envoy"]), "-c", str(path), "--concurrency", "1", "--log-level", "warn"]
    argv += ["--disable-hot-restart"]
    pid = ctx.procs.start(name, ctx.cores.wrap(argv, where))
    _ready(ctx, name, ports["PORT"])
    return pid


def start_python(
    ctx: Ctx, name: str, script: str, where: str | None, *extra: str
) -> tuple[int, int]:
    port = harness.free_port()
    argv = [PY, str(BENCH / script), "--port", str(port), *extra]
    pid = ctx.procs.start(name, ctx.cores.wrap(argv, where))
    _ready(ctx, name, port)
    return pid, port


def start_upstream(ctx: Ctx, where: str | None) -> tuple[int, int]:
    """The upstream stub: nginx `return 200` when available, else the Python stub."""
    if ctx.tools.get("nginx") and not ctx.large and ctx.args.stub != "python":
        port = harness.free_port()
        return start_nginx(ctx, "upstream", "nginx-stub.conf", where, PORT=port), port
    return start_python(ctx, "upstream", "stub_upstream.py", where)


def _with_upstream(ctx: Ctx) -> int:
    pid, port = start_upstream(ctx, ctx.cores.load)
    ctx.upstream_pid = pid
    return port


# --- setups


def direct(ctx: Ctx) -> None:
    pid, ctx.port = start_upstream(ctx, ctx.cores.server)
    ctx.server = {"upstream stub": pid}


def bare_proxy(ctx: Ctx) -> None:
    up = _with_upstream(ctx)
    pid, ctx.port = start_python(
        ctx, "bare_proxy", "bare_proxy.py", ctx.cores.server, "--upstream", f"http://127.0.0.1:{up}"
    )
    ctx.server = {"bare_proxy": pid}


def bare_lean(ctx: Ctx) -> None:
    up = _with_upstream(ctx)
    pid, ctx.port = start_python(
        ctx, "bare_lean", "bare_lean.py", ctx.cores.server, "--upstream", f"http://127.0.0.1:{up}"
    )
    ctx.server = {"bare_lean": pid}


def gateway(workers: int, mode: str, engine: str = "aiohttp") -> Callable[[Ctx], None]:
    def start(ctx: Ctx) -> None:
        if ctx.gateway_problem:
            raise SetupFailed(ctx.gateway_problem)
        up = _with_upstream(ctx)
        ctx.port, admin = harness.free_port(), harness.free_port()
        argv = [PY, "-m", "gateway", "serve", "--upstream", f"http://127.0.0.1:{up}"]
        argv += ["--store", str(ctx.store_url), "--workers", str(workers), "--mode", mode]
        argv += ["--port", str(ctx.port), "--admin-port", str(admin), "--engine", engine]
        argv += ctx.args.gateway_arg
        # Two workers cannot both have core 0: they get both cores and share core 1 with
        # the load generator and the stub (CPU per request stays comparable).
        where = (
            ctx.cores.server
            if workers == 1 or ctx.cores.server is None
            else f"{ctx.cores.server},{ctx.cores.load}"
        )
        pid = ctx.procs.start(
            "gateway", ctx.cores.wrap(argv, where), env=_gateway_env(ctx), cwd=ctx.args.gateway_dir
        )
        _ready(ctx, "gateway", ctx.port, timeout=60)
        ctx.server = {"gateway": pid}

    return start


def peer(conf: str, kind: str) -> Callable[[Ctx], None]:
    def start(ctx: Ctx) -> None:
        up = _with_upstream(ctx)
        decision, dport = start_python(
            ctx, "decision_service", "decision_service.py", ctx.cores.server
        )
        ctx.port = harness.free_port()
        starter = start_nginx if kind == "nginx" else start_envoy
        pid = starter(
            ctx, kind, conf, ctx.cores.server, PORT=ctx.port, UPSTREAM_PORT=up, DECISION_PORT=dport
        )
        ctx.server = {kind: pid, "decision_service": decision}

    return start


def start_decision_endpoint(ctx: Ctx, where: str | None, *extra: str) -> tuple[int, int]:
    """`gateway serve --port 0 --decision-port P` (the decision listener alone, 1 worker)."""
    if ctx.gateway_problem:
        raise SetupFailed(ctx.gateway_problem)
    port, admin = harness.free_port(), harness.free_port()
    argv = [PY, "-m", "gateway", "serve", "--port", "0", "--decision-port", str(port)]
    argv += ["--admin-port", str(admin), "--store", str(ctx.store_url), *extra]
    argv += ctx.args.gateway_arg
    pid = ctx.procs.start(
        "gateway", ctx.cores.wrap(argv, where), env=_gateway_env(ctx), cwd=ctx.args.gateway_dir
    )
    _ready(ctx, "gateway", port, timeout=60)
    return pid, port


def decision_tier(conf: str, kind: str) -> Callable[[Ctx], None]:
    """A proxy asking the gateway's decision endpoint (real decisions on the bench mix)."""

    def start(ctx: Ctx) -> None:
        up = _with_upstream(ctx)
        # Envoy's check requests carry the bench template's path_prefix (/authorize).
        extra = ("--decision-path-prefix", "/authorize") if kind == "envoy" else ()
        decision, dport = start_decision_endpoint(ctx, ctx.cores.server, *extra)
        ctx.port = harness.free_port()
        starter = start_nginx if kind == "nginx" else start_envoy
        pid = starter(
            ctx, kind, conf, ctx.cores.server, PORT=ctx.port, UPSTREAM_PORT=up, DECISION_PORT=dport
        )
        ctx.server = {"gateway": decision, kind: pid}  # the first is what a profile samples

    return start


def decision_alone(kind: str) -> Callable[[Ctx], None]:
    """wrk straight at a decision service: the mix's requests are the originals (the Envoy
    protocol: the check request's own method and target)."""

    def start(ctx: Ctx) -> None:
        if kind == "gateway":
            pid, ctx.port = start_decision_endpoint(ctx, ctx.cores.server)
            ctx.server = {"gateway": pid}
        elif kind == "aiohttp":
            if ctx.gateway_problem:
                raise SetupFailed(ctx.gateway_problem)
            port = harness.free_port()
            argv = [PY, str(BENCH / "decision_lowlevel.py"), "--port", str(port)]
            argv += ["--store", str(ctx.store_url)]
            pid = ctx.procs.start(
                "decision_lowlevel",
                ctx.cores.wrap(argv, ctx.cores.server),
                env=_gateway_env(ctx),
                cwd=ctx.args.gateway_dir,
            )
            _ready(ctx, "decision_lowlevel", port, timeout=60)
            ctx.port, ctx.server = port, {"decision_lowlevel": pid}
        else:
            pid, ctx.port = start_python(
                ctx, "decision_service", "decision_service.py", ctx.cores.server
            )
            ctx.server = {"decision_service": pid}

    return start


def native(conf: str, kind: str) -> Callable[[Ctx], None]:
    def start(ctx: Ctx) -> None:
        up = _with_upstream(ctx)
        ctx.port = harness.free_port()
        starter = start_nginx if kind == "nginx" else start_envoy
        ctx.server = {
            kind: starter(ctx, kind, conf, ctx.cores.server, PORT=ctx.port, UPSTREAM_PORT=up)
        }

    return start


SETUPS = (
    Setup("direct", "direct to the upstream stub", "reference", (), direct),
    Setup("bare_proxy", "bare aiohttp forwarder (no policy)", "reference", (), bare_proxy),
    Setup(
        "bare_lean",
        "bare lean forwarder (gateway/proxy/lean, no policy)",
        "reference",
        (),
        bare_lean,
    ),
    Setup(
        "gateway_lean_1w",
        "gateway, enforce, 1 worker, --engine lean",
        "subject",
        ("gateway",),
        gateway(1, "enforce", "lean"),
    ),
    Setup(
        "gateway_enforce_1w",
        "gateway, enforce, 1 worker",
        "subject",
        ("gateway",),
        gateway(1, "enforce"),
    ),
    Setup(
        "gateway_enforce_2w",
        "gateway, enforce, 2 workers",
        "subject",
        ("gateway",),
        gateway(2, "enforce"),
    ),
    Setup(
        "gateway_dry_run",
        "gateway, dry-run, 1 worker",
        "subject",
        ("gateway",),
        gateway(1, "dry-run"),
    ),
    Setup(
        "nginx_auth_request",
        "nginx auth_request -> Python decision service",
        "peer",
        ("nginx",),
        peer("nginx-auth-request.conf", "nginx"),
    ),
    Setup(
        "envoy_ext_authz",
        "Envoy ext_authz (HTTP) -> Python decision service",
        "peer",
        ("envoy",),
        peer("envoy-ext-authz.yaml", "envoy"),
    ),
    Setup(
        "nginx_auth_request_gateway",
        "nginx auth_request -> gateway decision endpoint",
        "subject",
        ("nginx", "gateway"),
        decision_tier("nginx-auth-request.conf", "nginx"),
    ),
    Setup(
        "envoy_ext_authz_gateway",
        "Envoy ext_authz (HTTP) -> gateway decision endpoint",
        "subject",
        ("envoy", "gateway"),
        decision_tier("envoy-ext-authz.yaml", "envoy"),
    ),
    Setup(
        "decision_gateway",
        "gateway decision endpoint alone (gateway/wire)",
        "subject",
        ("gateway",),
        decision_alone("gateway"),
    ),
    Setup(
        "decision_gateway_aiohttp",
        "gateway decision endpoint on aiohttp's low-level server",
        "reference",
        ("gateway",),
        decision_alone("aiohttp"),
    ),
    Setup(
        "decision_service",
        "trivial aiohttp decision service alone (allows all)",
        "peer",
        (),
        decision_alone("trivial"),
    ),
    Setup(
        "nginx_proxy",
        "nginx proxy_pass alone",
        "native",
        ("nginx",),
        native("nginx-proxy.conf", "nginx"),
    ),
    Setup(
        "envoy_router",
        "Envoy router alone",
        "native",
        ("envoy",),
        native("envoy-router.yaml", "envoy"),
    ),
)
BY_NAME = {s.name: s for s in SETUPS}
LARGE_SETUPS = ("direct", "bare_proxy", "gateway_enforce_1w", "bare_lean", "gateway_lean_1w")


# --- load


def run_load(
    ctx: Ctx, duration: float, cold_start: int, connections: int | None = None
) -> dict[str, Any]:
    args = ctx.args
    connections = connections or args.connections
    if ctx.tools.get("wrk") and args.loadgen != "python":
        argv = [
            str(ctx.tools["wrk"]),
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
        ]
        argv += ["--latency", "--timeout", "5s", "-s", str(ctx.mix_dir / "mix.lua")]
        argv += [f"http://127.0.0.1:{ctx.port}", "--", str(cold_start)]
        done = _run(ctx.cores.wrap(argv, ctx.cores.load), duration + 30)
        return {"loadgen": "wrk", **harness.parse_wrk(done.stdout)}
    argv = [
        PY,
        str(BENCH / "loadgen.py"),
        "load",
        "--port",
        str(ctx.port),
        "--mix",
        str(ctx.mix_dir / "mix.json"),
    ]
    argv += [
        "--duration",
        str(duration),
        "--connections",
        str(connections),
        "--cold-start",
        str(cold_start),
    ]
    done = _run(ctx.cores.wrap(argv, ctx.cores.load), duration + 30)
    return {"loadgen": "python (bench/loadgen.py)", **json.loads(done.stdout)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as exc:
        raise SetupFailed(f"{Path(argv[0]).name} timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise SetupFailed(
            f"{' '.join(argv[:4])}... exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
        )
    return done


def measure(ctx: Ctx, setup: Setup) -> dict[str, Any]:
    setup.start(ctx)
    if ctx.args.warmup > 0:
        run_load(ctx, ctx.args.warmup, cold_start=0)
    roots = dict(ctx.server)
    if ctx.upstream_pid is not None:
        roots["upstream stub"] = ctx.upstream_pid
    meter = harness.CpuMeter(roots)
    meter.start()
    before = _children_cpu()
    load = run_load(ctx, ctx.args.duration, cold_start=ctx.cold_tokens // 2)
    cpu = meter.stop()
    cpu["load generator"] = {"cpu_s": round(_children_cpu() - before, 3), "util": None}
    cpu["load generator"]["util"] = round(cpu["load generator"]["cpu_s"] / meter.elapsed, 3)
    record = _record(setup, load, cpu, ctx)
    if ctx.args.light_duration > 0:
        # One connection, one request at a time: nothing queues, so the latency is the
        # setup's own per-request overhead (compare p99s here, not at saturation).
        light = run_load(ctx, ctx.args.light_duration, ctx.cold_tokens // 4, connections=1)
        record["light"] = {k: light[k] for k in ("requests_per_s", "latency_ms", "non_2xx")}
    return record


def _record(setup: Setup, load: dict[str, Any], cpu: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    requests = max(1, int(load["requests"]))
    server_cpu = sum(cpu[name]["cpu_s"] for name in ctx.server)
    for part in cpu.values():
        part["us_per_request"] = round(part["cpu_s"] / requests * 1e6, 1)
    server_util = sum(cpu[name]["util"] for name in ctx.server)
    load_side = ("load generator",) if not ctx.upstream_pid else ("load generator", "upstream stub")
    load_util = sum(cpu[name]["util"] for name in load_side)
    return {
        "status": "ok",
        "title": setup.title,
        "role": setup.role,
        **load,
        # The load core is saturated while the server's is not: the figure is a lower bound.
        "load_bound": bool(load_util >= 0.9 and server_util < 0.85),
        "load_core_util": round(load_util, 3),
        "non_2xx_share": round(load.get("non_2xx", 0) / requests, 4),
        "cpu_us_per_request": round(server_cpu / requests * 1e6, 1),
        "server_cpu_util": round(server_util, 3),
        "cpu": cpu,
        "components": sorted(ctx.server),
    }


def _measure_once(ctx: Ctx, setup: Setup) -> dict[str, Any]:
    try:
        return measure(ctx, setup)
    finally:
        ctx.procs.stop_all()
        ctx.server, ctx.upstream_pid = {}, None


def attempt(ctx: Ctx, setup: Setup, round_no: int) -> dict[str, Any]:
    """One measured run of a setup, or a record of why it cannot run."""
    missing = [tool for tool in setup.needs if tool != "gateway" and not ctx.tools.get(tool)]
    if missing:
        return skipped(
            setup, f"{', '.join(missing)} not installed (bench/install.sh installs it as root)"
        )
    label = f" (round {round_no + 1}/{ctx.args.repeat})" if ctx.args.repeat > 1 else ""
    print(f"-- {setup.name}: {setup.title}{label}", flush=True)
    try:
        record = _measure_once(ctx, setup)
    except (SetupFailed, ValueError, OSError, KeyError, json.JSONDecodeError) as exc:
        role = "not available yet" if "gateway" in setup.needs and ctx.gateway_problem else "failed"
        print(f"   {role}: {exc}", flush=True)
        return {
            "status": role.replace(" ", "_"),
            "title": setup.title,
            "role": setup.role,
            "reason": str(exc),
        }
    lat = record["latency_ms"]
    print(
        f"   {record['requests_per_s']:,.0f} req/s  p50 {lat.get('p50')} ms  p99 {lat.get('p99')} ms  "
        f"{record['cpu_us_per_request']} us CPU/req  server busy {record['server_cpu_util']:.0%}  "
        f"non-2xx {record['non_2xx_share']:.1%}",
        flush=True,
    )
    return record


def _hot_route(mix_dir: Path, args: argparse.Namespace, mix: dict[str, Any]) -> dict[str, Any]:
    """`--hot-route`: the mix's first allowed GET with a hot token, replayed alone (the
    "one hot allowed route" figure of issue 13)."""
    full = traffic.build(args.seed, args.mix_size, args.cold_tokens)
    entry = next(
        e
        for e in full.entries
        if e.token_kind == "hot" and e.forwarded and e.raw.startswith("GET ")
    )
    one = traffic.Mix([entry], full.source, full.routes, full.cold_tokens, {"hot_route": True})
    traffic.write_lua(one, mix_dir / "mix.lua")
    traffic.write_json(one, mix_dir / "mix.json")
    target = entry.raw.split(" ", 2)[1]
    return {**mix, "hot_route": target, "predicted_denied_share": 0.0}


def run_setups(ctx: Ctx, names: list[str]) -> dict[str, dict[str, Any]]:
    """Runs the setups round-robin `--repeat` times (so that other work on the machine spreads
    over all of them), then keeps, per setup, the run with the median throughput. A run that
    fails is recorded with the setup; the setup fails only when no run succeeded."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    failures: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_no in range(ctx.args.repeat):
        for name in names:
            if failures[name] and failures[name][-1]["status"] in ("skipped", "not_available_yet"):
                continue  # nothing will change in the next round
            record = attempt(ctx, BY_NAME[name], round_no)
            (runs if record["status"] == "ok" else failures)[name].append(record)
    final: dict[str, dict[str, Any]] = {}
    for name in names:
        if not runs[name]:
            final[name] = failures[name][-1]
            continue
        ordered = sorted(runs[name], key=lambda r: float(r["requests_per_s"]))
        final[name] = ordered[len(ordered) // 2]
        final[name]["runs_requests_per_s"] = [r["requests_per_s"] for r in runs[name]]
        final[name]["runs_cpu_us_per_request"] = [r["cpu_us_per_request"] for r in runs[name]]
        if failures[name]:
            final[name]["failed_runs"] = [f["reason"] for f in failures[name]]
    return final


def skipped(setup: Setup, reason: str) -> dict[str, Any]:
    print(f"-- {setup.name}: skipped: {reason}", flush=True)
    return {"status": "skipped", "title": setup.title, "role": setup.role, "reason": reason}


# --- large bodies


class RssPoller(threading.Thread):
    """Polls the summed and per-process RSS of the server's process trees every 20 ms."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots, self.stop_flag = roots, threading.Event()
        self.peak_sum = self.peak_process = 0

    def run(self) -> None:
        while not self.stop_flag.wait(0.02):
            pids = [p for root in self.roots for p in harness.tree(root)]
            values = harness.memory_kib(pids, "VmRSS")
            if values:
                self.peak_sum = max(self.peak_sum, sum(values))
                self.peak_process = max(self.peak_process, max(values))


def transfer(ctx: Ctx, method: str, size: int) -> dict[str, Any]:
    path = f"{traffic.API}/projects/{traffic.project_id(0)}/packages/generic/bench-pkg/1.0.0/"
    path += f"blob-{size}" if method == "GET" else "upload.bin"
    argv = [
        PY,
        str(BENCH / "loadgen.py"),
        "transfer",
        "--url",
        f"http://127.0.0.1:{ctx.port}{path}",
    ]
    argv += [
        "--method",
        method,
        "--bytes",
        str(size),
        "--header",
        f"JOB-TOKEN: {traffic.hot_token(0)}",
    ]
    done = _run(ctx.cores.wrap(argv, ctx.cores.load), 600)
    return dict(json.loads(done.stdout))


def run_large(ctx: Ctx, setup: Setup, size: int) -> dict[str, Any]:
    ctx.large = True
    try:
        setup.start(ctx)
        poller = RssPoller(list(ctx.server.values()))
        poller.start()
        upload, download = transfer(ctx, "PUT", size), transfer(ctx, "GET", size)
        poller.stop_flag.set()
        poller.join()
        pids = [p for root in ctx.server.values() for p in harness.tree(root)]
        hwm = harness.memory_kib(pids, "VmHWM")
    except (SetupFailed, OSError, json.JSONDecodeError) as exc:
        return {"status": "failed", "reason": str(exc)}
    finally:
        ctx.procs.stop_all()
        ctx.server, ctx.upstream_pid, ctx.large = {}, None, False
    result: dict[str, Any] = {
        "status": "ok",
        "bytes": size,
        "upload": upload,
        "download": download,
        "rss_peak_mib": {
            "max_process": round(poller.peak_process / 1024, 1),
            "sum": round(poller.peak_sum / 1024, 1),
        },
        "vmhwm_mib": {
            "max_process": round(max(hwm, default=0) / 1024, 1),
            "sum": round(sum(hwm) / 1024, 1),
        },
    }
    print(
        f"   {setup.name}: PUT {upload['mb_per_s']} MB/s, GET {download['mb_per_s']} MB/s, "
        f"peak RSS {result['rss_peak_mib']['max_process']} MiB",
        flush=True,
    )
    return result


def large_bodies(ctx: Ctx, results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print(f"-- large bodies: {ctx.args.large_bytes / GiB:.3g} GiB up and down", flush=True)
    for name in LARGE_SETUPS:
        if name not in ctx.args.setups:
            continue
        if results.get(name, {}).get("status") != "ok":
            out[name] = {"status": "skipped", "reason": "the setup did not run"}
            continue
        out[name] = run_large(ctx, BY_NAME[name], ctx.args.large_bytes)
    return out


# --- micro and profile


def micro(ctx: Ctx) -> dict[str, Any]:
    argv = [PY, str(BENCH / "micro.py"), "--json"] + (["--quick"] if ctx.args.smoke else [])
    print("-- micro: route match, token extraction, decision", flush=True)
    try:
        done = _run(ctx.cores.wrap(argv, ctx.cores.server), 300, env=_gateway_env(ctx))
    except SetupFailed as exc:
        return {"status": "failed", "reason": str(exc)}
    result: dict[str, Any] = json.loads(done.stdout)
    for name, figure in result.get("figures", {}).items():
        shown = f"{figure['us']} us" if figure.get("status") == "ok" else figure.get("reason")
        print(f"   {name}: {shown}", flush=True)
    return result


def profile(ctx: Ctx, name: str) -> dict[str, Any]:
    import profiling

    setup = BY_NAME[name]
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():
        return {"status": "skipped", "reason": "py-spy not installed (pip install '.[bench]')"}
    print(f"-- profile: {name} under load (py-spy --native)", flush=True)
    try:
        setup.start(ctx)
        run_load(ctx, 1, 0)
        root = next(iter(ctx.server.values()))
        return profiling.record(
            spy,
            root,
            lambda: run_load(ctx, ctx.args.duration, ctx.cold_tokens // 2),
            ctx.work,
            ctx.args.duration,
        )
    except (SetupFailed, OSError, ValueError) as exc:
        return {"status": "failed", "reason": str(exc)}
    finally:
        ctx.procs.stop_all()
        ctx.server, ctx.upstream_pid = {}, None


# --- the gateway's availability


def prepare_gateway(ctx: Ctx) -> None:
    """Loads the bench grants into a fresh store; records why the gateway cannot run if it can't."""
    if ctx.args.store_url:
        ctx.store_url = ctx.args.store_url
        return
    ctx.store_url = f"sqlite:///{ctx.work / 'store.sqlite3'}"
    argv = [
        PY,
        "-m",
        "gateway",
        "store",
        "load",
        str(ctx.mix_dir / "grants.yaml"),
        "--store",
        ctx.store_url,
        "--create",
    ]
    try:
        done = _store_load(ctx, argv)
        if done.returncode == 2 and "unrecognized arguments: --create" in done.stderr:
            # A checkout from before `store load --create` (--gateway-dir): it created the store.
            done = _store_load(ctx, argv[:-1])
    except subprocess.TimeoutExpired:
        ctx.gateway_problem = "`gateway store load` timed out"
        return
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or "not implemented" in output:
        ctx.gateway_problem = (
            f"not available yet: `gateway store load` exited {done.returncode}: {output[-200:]}"
        )


def _store_load(ctx: Ctx, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ctx.args.gateway_dir,
        env={**os.environ, **_gateway_env(ctx)},
        check=False,
    )


def _gateway_env(ctx: Ctx) -> dict[str, str]:
    """Imports `gateway` from --gateway-dir (a checkout of the commit to measure)."""
    return {"PYTHONPATH": str(ctx.args.gateway_dir), "JTG_GATEWAY_DIR": str(ctx.args.gateway_dir)}


def gateway_revision(directory: Path) -> str | None:
    """`<short sha>` of the measured gateway code, `+ uncommitted changes` when it has some."""
    git = ["git", "-C", str(directory)]
    try:
        sha = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "gateway", "policies"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def _store_description(ctx: Ctx) -> str | None:
    if ctx.args.store_url or ctx.store_url is None or ctx.gateway_problem:
        return ctx.store_url
    jobs = traffic.PROJECTS * traffic.HOT_PER_PROJECT + ctx.cold_tokens
    return f"sqlite (a fresh file loaded with {jobs:,} jobs by `gateway store load`)"


def detect_tools(args: argparse.Namespace) -> dict[str, str | None]:
    venv_bin = Path(PY).parent

    def find(name: str) -> str | None:
        path = shutil.which(name) or (str(venv_bin / name) if (venv_bin / name).exists() else None)
        return path or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)

    tools = {name: find(name) for name in ("wrk", "nginx", "envoy", "py-spy")}
    for name in args.without:
        tools[name] = None
    return tools


# --- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="CI smoke run: short, small, results in a temp dir"
    )
    parser.add_argument(
        "--setups", default=",".join(s.name for s in SETUPS), help="comma-separated setups"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of measured load per setup"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of load before measuring"
    )
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--light-duration",
        type=float,
        default=4.0,
        help="seconds of a one-connection run after each setup's main run (0 = none)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per setup; the median-throughput run is kept"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--stub", choices=("auto", "python"), default="auto", help="auto = nginx when installed"
    )
    parser.add_argument(
        "--large-bytes", type=int, default=GiB, help="size of the large-body transfers"
    )
    parser.add_argument("--no-large", action="store_true")
    parser.add_argument(
        "--hot-route",
        action="store_true",
        help="replay one allowed GET with a hot (cached) token instead of the mix",
    )
    parser.add_argument("--no-micro", action="store_true")
    parser.add_argument(
        "--profile", default="bare_proxy,gateway_enforce_1w", help="setups to profile ('' = none)"
    )
    parser.add_argument(
        "--only-profile", default=None, help="profile these setups and nothing else"
    )
    parser.add_argument("--cold-tokens", type=int, default=50_000)
    parser.add_argument("--mix-size", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store-url", default=None, help="use this (already loaded) store instead")
    parser.add_argument(
        "--gateway-dir",
        type=Path,
        default=REPO,
        help="checkout whose gateway/ to measure (e.g. a `git worktree` of a commit)",
    )
    parser.add_argument(
        "--gateway-arg", action="append", default=[], help="extra `gateway serve` argument"
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        help="pretend a tool is absent (wrk, nginx, envoy)",
    )
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument(
        "--no-readme", action="store_true", help="do not rewrite bench/README.md's results"
    )
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.connections = (
            min(args.duration, 1.0),
            0.0,
            min(args.connections, 16),
        )
        args.cold_tokens, args.mix_size = min(args.cold_tokens, 800), min(args.mix_size, 2000)
        args.light_duration = min(args.light_duration, 1.0)
        args.large_bytes, args.profile, args.no_readme = min(args.large_bytes, 32 << 20), "", True
    if args.only_profile is not None:
        args.profile, args.setups, args.no_large, args.no_micro = args.only_profile, "", True, True
    args.setups = [s for s in args.setups.split(",") if s]
    args.profile = [s for s in args.profile.split(",") if s]
    unknown = [s for s in args.setups + args.profile if s not in BY_NAME]
    if unknown:
        parser.error(f"unknown setup(s): {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return args


def main(argv: list[str] | None = None) -> int:
    import report

    # SIGTERM ends the round like Ctrl-C: the `finally` below stops every process it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)
    args.gateway_dir = args.gateway_dir.resolve()
    started = datetime.now(UTC)
    results_dir = args.results_dir or (
        Path(tempfile.mkdtemp(prefix="jtg-bench-smoke-")) if args.smoke else BENCH / "results"
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="jtg-bench-"))
    work.chmod(0o755)
    tools = detect_tools(args)
    mix_dir = work / "mix"
    mix = traffic.write_all(mix_dir, args.seed, args.mix_size, args.cold_tokens)
    if args.hot_route:
        mix = _hot_route(mix_dir, args, mix)
    ctx = Ctx(
        args,
        harness.Cores.detect(not args.no_pin),
        tools,
        work,
        mix_dir,
        mix["cold_tokens"],
        harness.Procs(work),
    )
    print(
        f"jtg bench: {ctx.cores.note}; tools: {', '.join(f'{k}={bool(v)}' for k, v in tools.items())}",
        flush=True,
    )
    if any("gateway" in BY_NAME[s].needs for s in args.setups + args.profile):
        prepare_gateway(ctx)
    doc: dict[str, Any] = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "mode": "smoke" if args.smoke else ("profile" if args.only_profile is not None else "full"),
        "settings": {
            k: v
            for k, v in vars(args).items()
            if k
            in ("duration", "warmup", "connections", "repeat", "loadgen", "large_bytes", "seed")
        },
        "machine": harness.machine(tools),
        "pinning": ctx.cores.note,
        "upstream_stub": "nginx (return 200)"
        if tools.get("nginx") and args.stub != "python"
        else "python (bench/stub_upstream.py)",
        "store": _store_description(ctx),
        "gateway_revision": gateway_revision(args.gateway_dir),
        "traffic": mix,
        "setups": {},
    }
    try:
        doc["setups"] = run_setups(ctx, args.setups)
        if not args.no_large and args.setups:
            doc["large_bodies"] = large_bodies(ctx, doc["setups"])
        if not args.no_micro:
            doc["micro"] = micro(ctx)
        doc["profiles"] = {name: profile(ctx, name) for name in args.profile}
    finally:
        ctx.procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    doc["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    report.finish(doc, results_dir, readme=not args.no_readme)
    written = "*-profile.json" if doc["mode"] == "profile" else "latest.json"
    print(f"results: {results_dir / written}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
