"""Micro-benchmark: `RouteTable.match` against a naive linear regex scan, in the same run.

Figures are CPU time per call (this thread's), so other work on the machine inflates them less.
Corpus: a concrete path for every shape of every row of policies/routes.yaml (project ids
alternate between `42` and `group%2Fsub%2Fproject`), plus API paths with no route, wrong
methods, and refused targets. Each entry is timed in a tight loop; the figure per entry is the
best of --rounds; the report gives the median (and p90) over the corpus.

Two baselines run next to it:
- `linear scan`: what a first attempt looks like: one regex per template (`:p` = `[^/]+`,
  `*s` = `.+?`, `( )` optional), tried in page order, first match wins, params decoded. It does
  none of the refusal checks and builds no RouteMatch/Target, so the comparison flatters it.
- `linear scan, same job`: the same scan wrapped in the work `match` does around its lookup
  (the refusal checks, then a RouteMatch with its Target): the lookup strategy alone differs.

With --breakdown, the hits are also timed through cumulative stages of `match` (the fast-path
checks; + splitting and `%2F` decoding; + the trie walk; + building the RouteMatch): the
differences of the medians say roughly where the time goes.

    .venv/bin/python bench/bench_match.py [--rounds 5] [--iterations 2000] [--json] [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from gateway.routing import trie as route_trie
from gateway.routing.facts import target_rule_for
from gateway.routing.table import SEPARATOR, RouteTable
from gateway.routing.targets import Refusal, strict_refusal
from gateway.routing.templates import SegmentKind
from gateway.routing.values import Route, RouteMatch

ROOT = Path(__file__).resolve().parent.parent
API = "/api/v4"

MISSES = [
    ("GET", "/api/v4/projects/42"),
    ("GET", "/api/v4/projects/42/issues/7/notes"),
    ("GET", "/api/v4/projects/group%2Fsub%2Fproject/repository/files/README.md/raw"),
    ("POST", "/api/v4/projects/42/pipelines/7/jobs"),
    ("GET", "/api/v4/user"),
    ("GET", "/api/v4/groups/9/members"),
    ("PATCH", "/api/v4/projects/42/releases/v1"),
    ("DELETE", "/api/v4/packages/npm/@scope%2Fname"),
    ("GET", "/api/v4/packages/conan/v1/conans/zlib/1.3"),
    ("PUT", "/api/v4/job"),
]
REFUSED = [
    ("GET", "/api/v4/projects/42/../43/releases"),
    ("GET", "/api/v4/projects/%2e%2e/releases"),
    ("GET", "/api/v4/projects/42/releases%00"),
    ("GET", "/api/v4/projects/a%252Fb/releases"),
    ("GET", "/api/v4/%70rojects/42/releases"),
    ("GET", "http://example.com/api/v4/projects/42/releases"),
    ("GET", "/api/v4/projects/42\\releases"),
    ("GET", "/api/v4/projects/42/releases#x"),
]


def concrete_path(route: Route, shape_index: int, project_id: str, table: RouteTable) -> str:
    shape = table.shapes[route][shape_index]
    parts = []
    for number, segment in enumerate(shape.segments):
        last = number == len(shape.segments) - 1
        if segment.kind is SegmentKind.LITERAL:
            parts.append(segment.text)
        elif segment.kind is SegmentKind.MIXED:
            parts.append(re.sub(r":\w+", "v1.2.3", segment.text))
        elif segment.kind is SegmentKind.SPLAT:
            parts.append("dir/sub/file.txt" if last else "@scope%2Fname")
        else:
            parts.append(project_id if segment.names == ("id",) else f"{segment.names[0]}-1")
    return API + "/" + "/".join(parts)


def corpus(table: RouteTable) -> list[tuple[str, str, str]]:
    """(kind, method, target) for every shape of every row, then misses and refusals."""
    entries = []
    for index, route in enumerate(table):
        project_id = "42" if index % 2 else "group%2Fsub%2Fproject"
        for shape_index in range(len(table.shapes[route])):
            entries.append(
                ("hit", route.method, concrete_path(route, shape_index, project_id, table))
            )
    entries += [("miss", method, target) for method, target in MISSES]
    entries += [("refused", method, target) for method, target in REFUSED]
    return entries


class LinearScan:
    """The baseline: one regex per template, in page order, first match wins."""

    def __init__(self, routes: list[Route], prefix: str) -> None:
        self.prefix = prefix
        self.rules = [(route, _template_regex(route.path)) for route in routes]

    def match(self, method: str, target: str) -> tuple[Route, dict[str, str]] | None:
        path = target.partition("?")[0]
        if not path.startswith(self.prefix + "/"):
            return None
        rest = path[len(self.prefix) :]
        method = "GET" if method == "HEAD" else method
        for route, regex in self.rules:
            if route.method == method:
                found = regex.fullmatch(rest)
                if found is not None:
                    return route, {
                        k: unquote(v) for k, v in found.groupdict().items() if v is not None
                    }
        return None


class LinearScanSameJob(LinearScan):
    """The linear scan doing `match`'s surrounding work: refusals first, a RouteMatch after."""

    def full_match(self, method: str, target: str) -> RouteMatch | Refusal | None:
        refusal = strict_refusal(target)  # check_target, then the checks only `match` makes
        if refusal is not None:
            return refusal
        found = self.match(method, target)
        if found is None:
            return None
        route, params = found
        return RouteMatch(route, params, target_rule_for(route.path).resolve(params))


def _template_regex(template: str) -> re.Pattern[str]:
    out, pos, seen = "", 0, set()
    for token in re.finditer(r"[:*]\w+|[()]", template):
        out += re.escape(template[pos : token.start()])
        text, name = token.group(), token.group()[1:]
        if text in "()":
            out += "(?:" if text == "(" else ")?"
        else:
            body = "[^/]+" if text.startswith(":") else ".+?"
            out += f"(?P<{name}>{body})" if name not in seen else f"(?:{body})"
            seen.add(name)
        pos = token.end()
    return re.compile(out + re.escape(template[pos:]) + r"(?:\.json)?")


def time_each(
    call: Callable[[str, str], object],
    entries: list[tuple[str, str, str]],
    rounds: int,
    iterations: int,
) -> list[float]:
    """Best-of-rounds CPU microseconds per call, one figure per corpus entry.

    CPU time of this thread (`time.thread_time_ns`), not wall time: on a shared machine the
    time spent descheduled would otherwise land in the figures.
    """
    best = [float("inf")] * len(entries)
    for _ in range(rounds):
        for index, (_kind, method, target) in enumerate(entries):
            loop = range(iterations)
            start = time.thread_time_ns()
            for _ in loop:
                call(method, target)
            elapsed = (time.thread_time_ns() - start) / iterations / 1000
            best[index] = min(best[index], elapsed)
    return best


def summary(figures: list[float]) -> dict[str, float]:
    ordered = sorted(figures)
    return {
        "median_us": round(statistics.median(ordered), 3),
        "p90_us": round(ordered[int(len(ordered) * 0.9)], 3),
        "mean_us": round(statistics.fmean(ordered), 3),
    }


def run(rounds: int, iterations: int) -> dict[str, Any]:
    table = RouteTable.load(ROOT / "policies" / "routes.yaml")
    baseline = LinearScanSameJob(list(table), table.prefix)
    entries = corpus(table)
    fast = time_each(table.match, entries, rounds, iterations)
    slow = time_each(baseline.match, entries, rounds, iterations)
    same_job = time_each(baseline.full_match, entries, rounds, iterations)
    report: dict[str, Any] = {
        "machine": f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}",
        "corpus": {
            kind: sum(entry[0] == kind for entry in entries) for kind in ("hit", "miss", "refused")
        },
        "trie": summary(fast),
        "linear_scan": summary(slow),
    }
    report["linear_scan_same_job"] = summary(same_job)
    for name, baseline_name in (
        ("ratio_median", "linear_scan"),
        ("ratio_same_job_median", "linear_scan_same_job"),
    ):
        report[name] = round(report[baseline_name]["median_us"] / report["trie"]["median_us"], 2)
    for kind in ("hit", "miss", "refused"):
        picked = [i for i, entry in enumerate(entries) if entry[0] == kind]
        report[f"trie_{kind}"] = summary([fast[i] for i in picked])
        report[f"linear_scan_{kind}"] = summary([slow[i] for i in picked])
    report["first_match_disagreements"] = _disagreements(table, baseline, entries)
    return report


STAGES = ("checks", "split", "walk", "build")


def staged(table: RouteTable, method: str, target: str, stop: int) -> object:
    """`match`'s fast path (a copy of it), cut after stage `stop` (1-4, see STAGES); None for
    a target the fast path does not take."""
    root, plain = table._methods.get(method), table._plain.fullmatch(target)
    if plain is None or root is None:
        return None
    rest = plain[1]
    if "//" in rest or ("." in rest and "/." in rest) or stop == 1:
        return None
    if "%" not in rest:
        segs = rest.split("/")
    else:
        swapped = rest.replace("/", SEPARATOR).replace("%2F", "/")
        if "%" in swapped or ("." in swapped and "/." in swapped):
            return None
        segs = swapped.split(SEPARATOR)
    if stop == 2:
        return segs
    caps: route_trie.Caps = []
    leaf = route_trie.walk(root, segs, 0, caps)
    if stop == 3 or leaf is None:
        return leaf
    return route_trie.build_match(leaf, caps, segs)


def breakdown(table: RouteTable, rounds: int, iterations: int) -> dict[str, Any]:
    """Median µs over the hits the fast path takes, cut after each stage (cumulative)."""
    hits = [entry for entry in corpus(table) if entry[0] == "hit"]
    plain = [(k, m, t) for k, m, t in hits if staged(table, m, t, 2) is not None]
    report: dict[str, Any] = {"hits_timed": len(plain)}
    for stop, name in enumerate(STAGES, start=1):

        def call(method: str, target: str, stop: int = stop) -> object:
            return staged(table, method, target, stop)

        report[name] = round(statistics.median(time_each(call, plain, rounds, iterations)), 3)
    report["match"] = round(statistics.median(time_each(table.match, plain, rounds, iterations)), 3)
    return report


def _disagreements(
    table: RouteTable, baseline: LinearScan, entries: list[tuple[str, str, str]]
) -> list[str]:
    """Hits where page-order first match picks another route than the most specific one."""
    found = []
    for kind, method, target in entries:
        if kind != "hit":
            continue
        ours, theirs = table.match(method, target), baseline.match(method, target)
        our_route = getattr(ours, "route", None)
        if theirs is not None and our_route is not None and theirs[0] != our_route:
            found.append(
                f"{method} {target}: first match {theirs[0].path}, most specific {our_route.path}"
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args()
    report = run(args.rounds, args.iterations)
    if args.breakdown:
        table = RouteTable.load(ROOT / "policies" / "routes.yaml")
        report["breakdown"] = breakdown(table, args.rounds, args.iterations)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['machine']}; corpus {report['corpus']}")
    for kind in ("", "_hit", "_miss", "_refused"):
        trie, scan = report[f"trie{kind}"], report[f"linear_scan{kind}"]
        label = kind.strip("_") or "all"
        print(
            f"{label:>8}: trie median {trie['median_us']:.2f} us (p90 {trie['p90_us']:.2f}), linear scan median {scan['median_us']:.2f} us (p90 {scan['p90_us']:.2f})"
        )
    same = report["linear_scan_same_job"]
    print(f"linear scan, same job: median {same['median_us']:.2f} us (p90 {same['p90_us']:.2f})")
    print(f"ratio (linear scan / trie, medians): {report['ratio_median']:.1f}x")
    print(
        f"ratio (linear scan with the same checks and result / trie): {report['ratio_same_job_median']:.1f}x"
    )
    if "breakdown" in report:
        steps = report["breakdown"]
        print(
            f"breakdown over {steps['hits_timed']} plain hits (cumulative medians): "
            + ", ".join(f"{name} {steps[name]:.2f} us" for name in (*STAGES, "match"))
        )
    print(f"first-match disagreements on hits: {len(report['first_match_disagreements'])}")
    for line in report["first_match_disagreements"]:
        print(f"  {line}")


if __name__ == "__main__":
    main()
