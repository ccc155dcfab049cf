"""Micro figures for the decision core, in microseconds per call, using the gateway's own modules.

    route match      RouteTable.match(method, raw_target) over the bench mix's targets
    token extraction Reader.extract(view) (`Gate.tokens`'s) for header, Bearer and query-parameter
                     tokens
    decision         await Gate.evaluate(view): extract + match + cached resolve + decide, for
                     allowed requests whose token resolution is already cached (the hot path)
    decision (deny)  the same for requests the policy denies (cached token, missing permission)

Each figure is the median of `--repeat` timed loops over the same inputs (min reported too).
A figure whose module is not there yet is reported as `not_available_yet` with the reason.

Usage: python bench/micro.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
# The gateway to measure: the checkout bench/run.py was pointed at (--gateway-dir), else this one.
sys.path.insert(0, os.environ.get("JTG_GATEWAY_DIR") or str(BENCH.parent))

import traffic  # noqa: E402

# The modules measured, by their names since issue 11's packages, else by their earlier ones, so
# that one copy of this script measures a checkout from before the move too (the before/after
# figures of bench/README.md are taken in one run, with JTG_GATEWAY_DIR naming each checkout).
_MODULES = {
    "gateway.core.request": "gateway.request",
    "gateway.routing.table": "gateway.routes",
    "gateway.core.tokens": "gateway.tokens",
    "gateway.core.gate": "gateway.gate",
}
# Yield to the event loop every this many timed calls: the cache's watcher must run to renew
# its vouch (gateway/stores/cache.py VOUCH_WINDOW); without it every peek misses after ~1 s and
# the `decision` figures time store lookups instead of the cached path.
_YIELD_EVERY = 256


def _module(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return importlib.import_module(_MODULES[name])


def _views(entries: list[traffic.Entry]) -> list[Any]:
    from multidict import CIMultiDict

    RequestView = _module("gateway.core.request").RequestView  # noqa: N806

    views = []
    for entry in entries:
        head, _, body = entry.raw.partition("\r\n\r\n")
        lines = head.split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            headers.add(name, value)
        views.append(
            RequestView(method, target, headers, body.encode() if body else None, "127.0.0.1")
        )
    return views


def _time(fn: Callable[[], object], n: int, repeat: int) -> dict[str, Any]:
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - started) / n * 1e6)
    return {
        "status": "ok",
        "us": round(statistics.median(rounds), 3),
        "min_us": round(min(rounds), 3),
        "calls": n,
    }


async def _atime(fn: Callable[[], Awaitable[object]], n: int, repeat: int) -> dict[str, Any]:
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        for i in range(n):
            await fn()
            if i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        rounds.append((time.perf_counter() - started) / n * 1e6)
    return {
        "status": "ok",
        "us": round(statistics.median(rounds), 3),
        "min_us": round(min(rounds), 3),
        "calls": n,
    }


def _cycle(items: list[Any]) -> Callable[[], Any]:
    state = {"i": -1}

    def next_item() -> Any:
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return next_item


def bench_match(entries: list[traffic.Entry], n: int, repeat: int) -> dict[str, Any]:
    from gateway.settings import DEFAULT_ROUTES

    RouteTable = _module("gateway.routing.table").RouteTable  # noqa: N806

    table = RouteTable.load(DEFAULT_ROUTES)
    targets = [(v.method, v.target) for v in _views(entries)]
    pick = _cycle(targets)
    matched = sum(1 for m, t in targets if type(table.match(m, t)).__name__ == "RouteMatch")
    result = _time(lambda: table.match(*pick()), n, repeat)
    result["matched_share"] = round(matched / len(targets), 3)
    return result


def bench_extract(entries: list[traffic.Entry], n: int, repeat: int) -> dict[str, Any]:
    tokens = _module("gateway.core.tokens")
    views = [v for v in _views(entries) if v.body is None]
    pick = _cycle(views)
    reader = tokens.Reader() if hasattr(tokens, "Reader") else tokens  # as the Gate builds it
    return _time(lambda: reader.extract(pick()), n, repeat)


async def bench_decision(
    entries: list[traffic.Entry], n: int, repeat: int, forwarded: bool, profile: bool = False
) -> dict[str, Any]:
    from gateway.settings import Settings

    gate_module = _module("gateway.core.gate")
    Gate = gate_module.Gate  # noqa: N806

    if "TEMPORARY STUB" in (gate_module.__doc__ or ""):
        return {"status": "not_available_yet", "reason": "gateway.core.gate is still the stub"}
    chosen = [
        e
        for e in entries
        if e.token_kind == "hot" and e.forwarded == forwarded and "\r\n\r\n{" not in e.raw
    ]
    with tempfile.TemporaryDirectory() as tmp:
        grants = Path(tmp) / "grants.yaml"
        traffic.write_grants(traffic.PROJECTS, grants)
        gate = await Gate.open(Settings.build(store=f"file://{grants}", log_level="error"))
        try:
            views = _views(chosen)
            verdicts = [await gate.evaluate(v) for v in views]  # warms the cache
            pick = _cycle(views)
            result = await _atime(lambda: gate.evaluate(pick()), n, repeat)
            if profile:
                result["profile"] = await _profile(gate, views)
            allowed = sum(d.allowed for d in verdicts)
            result["allowed_share"] = round(allowed / len(verdicts), 3)
            result["reasons"] = sorted({str(d.reason) for d in verdicts})
            return result
        finally:
            await gate.close()


async def _profile(gate: Any, views: list[Any]) -> list[dict[str, Any]]:
    """Where the decision's time goes: cProfile self time per function (it inflates every call
    alike, so the shares are indicative; the µs figures above are the unprofiled ones)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(max(1, 20_000 // len(views))):
        for view in views:
            await gate.evaluate(view)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in stats.values()) or 1.0
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:12]
    return [
        {
            "function": f"{Path(file).name}:{line}({name})" if line else name,
            "self_share": round(row[2] / total, 3),
        }
        for (file, line, name), row in rows
    ]


def run(quick: bool) -> dict[str, Any]:
    n, repeat = (2_000, 3) if quick else (20_000, 5)
    entries = traffic.build(seed=7, size=2_000, cold_tokens=traffic.PROJECTS).entries
    figures: dict[str, Any] = {}
    jobs: dict[str, Callable[[], Any]] = {
        "route_match": lambda: bench_match(entries, n, repeat),
        "token_extraction": lambda: bench_extract(entries, n, repeat),
        "decision": lambda: asyncio.run(
            bench_decision(entries, n, repeat, forwarded=True, profile=not quick)
        ),
        "decision_deny": lambda: asyncio.run(bench_decision(entries, n, repeat, forwarded=False)),
    }
    for name, job in jobs.items():
        try:
            figures[name] = job()
        except (ImportError, AttributeError, TypeError) as exc:
            figures[name] = {
                "status": "not_available_yet",
                "reason": f"{type(exc).__name__}: {exc}",
            }
    return {"status": "ok", "calls_per_round": n, "rounds": repeat, "figures": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    parser.add_argument("--quick", action="store_true", help="few iterations (smoke)")
    args = parser.parse_args()
    result = run(args.quick)
    if args.json:
        print(json.dumps(result))
        return
    for name, figure in result["figures"].items():
        shown = (
            f"{figure['us']:8.2f} us (min {figure['min_us']:.2f})"
            if figure["status"] == "ok"
            else figure["reason"]
        )
        print(f"{name:18} {shown}")


if __name__ == "__main__":
    main()
