"""Turns one round's results into ratios, target verdicts, files and the README's tables.

`finish(doc, results_dir, readme=...)` adds `ratios` and `targets` to the results, writes
`<timestamp>.json` and `latest.json` (+ `latest.png`), and, for full rounds, rewrites only the
text between the `<!-- bench:results:begin/end -->` and `<!-- bench:profile:begin/end -->`
markers in bench/README.md. `python bench/report.py [latest.json]` prints the markdown.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
README = BENCH / "README.md"
SUBJECTS = (
    "gateway_enforce_1w",
    "gateway_enforce_2w",
    "gateway_dry_run",
    "bare_proxy",
    "nginx_auth_request_gateway",
    "envoy_ext_authz_gateway",
    "decision_gateway",
    "decision_gateway_aiohttp",
)
BASELINES = (
    ("bare_proxy", "bare proxy"),
    ("nginx_auth_request", "nginx auth_request peer"),
    ("envoy_ext_authz", "Envoy ext_authz peer"),
    ("decision_service", "trivial decision service"),
    ("direct", "direct"),
)
# Issue 12's targets: (subject, baseline, what is compared).
DECISION_PAIRS = (
    (
        "nginx_auth_request_gateway",
        "nginx_auth_request",
        "nginx + gateway decision tier >= 1.0x nginx + trivial service tier req/s (goal 1.5x)",
    ),
    (
        "decision_gateway",
        "decision_service",
        "decision endpoint alone >= 1.0x the trivial aiohttp service req/s (goal 1.5x)",
    ),
)
MAIN = "gateway_enforce_1w"


def _ok(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    record = doc.get("setups", {}).get(name)
    return record if record and record.get("status") == "ok" else None


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for subject in SUBJECTS:
        s = _ok(doc, subject)
        for baseline, _ in BASELINES:
            b = _ok(doc, baseline)
            if subject == baseline or s is None or b is None:
                continue
            out[f"{subject}/{baseline}"] = {
                "throughput": round(s["requests_per_s"] / b["requests_per_s"], 3),
                "p99_delta_ms": round(s["latency_ms"]["p99"] - b["latency_ms"]["p99"], 3),
                "cpu_per_request": round(
                    s["cpu_us_per_request"] / max(b["cpu_us_per_request"], 0.1), 3
                ),
            }
    return out


def _verdict(target: str, measured: Any, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": target, "measured": measured, "met": met, "note": note}


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    gw, bare = _ok(doc, MAIN), _ok(doc, "bare_proxy")
    found: list[dict[str, Any]] = []
    if gw and bare:
        ratio = gw["requests_per_s"] / bare["requests_per_s"]
        delta = gw["latency_ms"]["p99"] - bare["latency_ms"]["p99"]
        # CPU per request is steadier than req/s on a shared machine: show what it implies.
        implied = bare["cpu_us_per_request"] / max(gw["cpu_us_per_request"], 0.1)
        note = f"CPU per request implies {implied:.0%} on a dedicated core"
        found.append(
            _verdict("gateway >= 90% of the bare proxy's req/s", f"{ratio:.0%}", ratio >= 0.9, note)
        )
        found.append(
            _verdict("gateway p99 <= bare proxy p99 + 1 ms", f"{delta:+.2f} ms", delta <= 1.0)
        )
        if gw.get("light") and bare.get("light"):
            light = gw["light"]["latency_ms"]["p99"] - bare["light"]["latency_ms"]["p99"]
            found.append(
                _verdict(
                    "gateway p99 <= bare proxy p99 + 1 ms, one connection (no queueing)",
                    f"{light:+.2f} ms",
                    light <= 1.0,
                )
            )
    else:
        why = "the gateway setup did not run" if not gw else "the bare proxy did not run"
        found.append(_verdict("gateway >= 90% of the bare proxy's req/s", None, None, why))
        found.append(_verdict("gateway p99 <= bare proxy p99 + 1 ms", None, None, why))
    decision = doc.get("micro", {}).get("figures", {}).get("decision", {})
    if decision.get("status") == "ok":
        found.append(
            _verdict(
                "decision (extract + match + cached resolve + decide) <= 10 us",
                f"{decision['us']} us",
                decision["us"] <= 10,
            )
        )
    else:
        found.append(
            _verdict(
                "decision (extract + match + cached resolve + decide) <= 10 us",
                None,
                None,
                decision.get("reason", "not measured"),
            )
        )
    found.extend(_large_targets(doc.get("large_bodies", {}).get(MAIN)))
    found.extend(decision_targets(doc))
    return found


def decision_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12: the decision endpoint against the trivial aiohttp service, and the lean server
    against aiohttp's low-level server running the same DecisionService."""
    found: list[dict[str, Any]] = []
    for subject, baseline, title in DECISION_PAIRS:
        s, b = _ok(doc, subject), _ok(doc, baseline)
        if not (s and b):
            found.append(_verdict(title, None, None, f"{subject} or {baseline} did not run"))
            continue
        ratio = s["requests_per_s"] / b["requests_per_s"]
        implied = b["cpu_us_per_request"] / max(s["cpu_us_per_request"], 0.1)
        goal = "goal met" if ratio >= 1.5 else "goal not met"
        note = f"{goal}; CPU per request implies {implied:.2f}x"
        found.append(_verdict(title, f"{ratio:.2f}x", ratio >= 1.0, note))
    title = "decision endpoint p99 at one connection <= trivial service p99 + 0.2 ms"
    s, b = _ok(doc, "decision_gateway"), _ok(doc, "decision_service")
    if s and b and s.get("light") and b.get("light"):
        delta = s["light"]["latency_ms"]["p99"] - b["light"]["latency_ms"]["p99"]
        found.append(_verdict(title, f"{delta:+.3f} ms", delta <= 0.2))
    else:
        found.append(_verdict(title, None, None, "not measured"))
    title = "lean server (gateway/wire) >= aiohttp's low-level server, same DecisionService"
    s, b = _ok(doc, "decision_gateway"), _ok(doc, "decision_gateway_aiohttp")
    if s and b:
        ratio = s["requests_per_s"] / b["requests_per_s"]
        found.append(_verdict(title, f"{ratio:.2f}x", ratio >= 1.0))
    else:
        found.append(_verdict(title, None, None, "not measured"))
    return found


def _large_targets(large: dict[str, Any] | None) -> list[dict[str, Any]]:
    speed, memory = (
        "1 GiB up and down at >= 500 MB/s",
        "gateway RSS <= 100 MiB while streaming 1 GiB",
    )
    if not large or large.get("status") != "ok":
        why = (large or {}).get("reason", "the gateway's large-body run did not happen")
        return [_verdict(speed, None, None, why), _verdict(memory, None, None, why)]
    slowest = min(large["upload"]["mb_per_s"], large["download"]["mb_per_s"])
    peak = max(large["rss_peak_mib"]["max_process"], large["vmhwm_mib"]["max_process"])
    note = "" if large["bytes"] >= 1 << 30 else f"measured with {large['bytes'] >> 20} MiB"
    verified = large["upload"].get("verified") and large["download"].get("verified")
    return [
        _verdict(
            speed,
            f"PUT {large['upload']['mb_per_s']} / GET {large['download']['mb_per_s']} MB/s",
            slowest >= 500 and bool(verified),
            note,
        ),
        _verdict(memory, f"{peak} MiB", peak <= 100, note),
    ]


# --- markdown


def _f(value: Any, fmt: str = "{:,.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def machine_line(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    tools = ", ".join(f"{k} `{v}`" for k, v in m.get("tools", {}).items() if v)
    return (
        f"Round of {doc['started']} ({doc['mode']}): {m['nproc']} cores, {m['cpu_model']}, Linux {m['kernel']}, "
        f"Python {m['python']}, aiohttp {m['aiohttp']}, uvloop {m['uvloop']}; {tools}; "
        f"load average at start {m.get('loadavg_1m_at_start', '?')}. "
        f"{doc['pinning']}. Load: {doc['settings']['connections']} connections, "
        f"{doc['settings']['duration']:g} s measured after {doc['settings']['warmup']:g} s warm-up; "
        f"upstream: {doc['upstream_stub']}; gateway store: {doc.get('store') or 'n/a'}; "
        f"gateway code: `{doc.get('gateway_revision') or 'unknown'}`."
    )


def setups_table(doc: dict[str, Any]) -> list[str]:
    rows = [
        "| setup | req/s | p50 ms | p90 ms | p99 ms | CPU µs/req | server CPU busy | non-2xx | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in doc["setups"].items():
        if r.get("status") == "ok":
            lat = r["latency_ms"]
            rows.append(
                f"| {r['title']} (`{name}`) | {_f(r['requests_per_s'])} | {_f(lat.get('p50'), '{:.2f}')} | "
                f"{_f(lat.get('p90'), '{:.2f}')} | {_f(lat.get('p99'), '{:.2f}')} | {_f(r['cpu_us_per_request'], '{:.0f}')} | "
                f"{r['server_cpu_util']:.0%} | {r['non_2xx_share']:.1%} | {_ran(r)} |"
            )
        else:
            rows.append(
                f"| {r['title']} (`{name}`) | — | — | — | — | — | — | — | **{r['status'].replace('_', ' ')}**: {r.get('reason', '')[:160]} |"
            )
    return rows


def _ran(r: dict[str, Any]) -> str:
    notes = [f"ran ({r['loadgen']})"]
    if len(r.get("runs_requests_per_s", [])) > 1:
        notes.append("runs " + "/".join(f"{x:,.0f}" for x in r["runs_requests_per_s"]))
    if r.get("failed_runs"):
        notes.append(f"**{len(r['failed_runs'])} failed run(s)**: {r['failed_runs'][0][:100]}")
    if r.get("load_bound"):
        notes.append("**load-bound** (load core saturated: a lower bound)")
    return "; ".join(notes)


def light_table(doc: dict[str, Any]) -> list[str]:
    """The one-connection runs: per-request latency without queueing."""
    bare = (_ok(doc, "bare_proxy") or {}).get("light")
    rows = [
        "One connection, one request at a time (the latency a setup adds, without queueing):",
        "",
        "| setup | req/s | p50 ms | p99 ms | p99 vs bare proxy |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in doc["setups"].items():
        light = r.get("light") if r.get("status") == "ok" else None
        if not light:
            continue
        lat = light["latency_ms"]
        delta = "—" if not bare else f"{lat['p99'] - bare['latency_ms']['p99']:+.3f} ms"
        rows.append(
            f"| `{name}` | {light['requests_per_s']:,.0f} | {lat.get('p50', 0):.3f} | "
            f"{lat.get('p99', 0):.3f} | {delta} |"
        )
    return rows if len(rows) > 4 else []


def ratio_table(doc: dict[str, Any]) -> list[str]:
    head = "| subject | " + " | ".join(f"/ {title}" for _, title in BASELINES) + " |"
    rows = [head, "|---|" + "---|" * len(BASELINES)]
    for subject in SUBJECTS:
        if subject not in doc["setups"]:
            continue
        cells = []
        for baseline, _ in BASELINES:
            r = doc["ratios"].get(f"{subject}/{baseline}")
            cells.append(
                "—"
                if r is None
                else f"{r['throughput']:.2f}× req/s, p99 {r['p99_delta_ms']:+.2f} ms, {r['cpu_per_request']:.2f}× CPU/req"
            )
        title = doc["setups"][subject]["title"]
        if doc["setups"][subject].get("status") != "ok":
            title += f" — {doc['setups'][subject]['status'].replace('_', ' ')}"
        rows.append(f"| {title} | " + " | ".join(cells) + " |")
    return rows


def targets_table(doc: dict[str, Any]) -> list[str]:
    rows = ["| target | measured | met? |", "|---|---|---|"]
    for t in doc["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        note = f" ({t['note']})" if t.get("note") else ""
        rows.append(f"| {t['target']} | {t['measured'] or '—'}{note} | {met} |")
    return rows


def large_table(doc: dict[str, Any]) -> list[str]:
    large = doc.get("large_bodies") or {}
    if not large:
        return ["Large bodies: not run this round."]
    rows = [
        "| setup | size | PUT MB/s | GET MB/s | peak RSS MiB (largest process) | VmHWM MiB | whole? |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in large.items():
        if r.get("status") != "ok":
            rows.append(
                f"| `{name}` | — | — | — | — | — | {r['status']}: {r.get('reason', '')[:120]} |"
            )
            continue
        whole = "yes" if r["upload"].get("verified") and r["download"].get("verified") else "**no**"
        rows.append(
            f"| `{name}` | {r['bytes'] / (1 << 20):,.0f} MiB | {r['upload']['mb_per_s']:,.0f} | {r['download']['mb_per_s']:,.0f} | "
            f"{r['rss_peak_mib']['max_process']} | {r['vmhwm_mib']['max_process']} | {whole} |"
        )
    return rows


def micro_table(doc: dict[str, Any]) -> list[str]:
    figures = doc.get("micro", {}).get("figures")
    if not figures:
        return ["Micro figures: not run this round."]
    rows = ["| step | µs per call (median) | min | notes |", "|---|---:|---:|---|"]
    for name, f in figures.items():
        if f.get("status") != "ok":
            rows.append(f"| {name} | — | — | {f.get('reason', '')} |")
            continue
        notes = ", ".join(
            f"{k} {v}" for k, v in f.items() if k in ("matched_share", "allowed_share")
        )
        rows.append(f"| {name} | {f['us']:.2f} | {f['min_us']:.2f} | {notes} |")
    profile = figures.get("decision", {}).get("profile")
    if profile:
        top = ", ".join(f"`{p['function']}` {p['self_share']:.0%}" for p in profile[:8])
        rows += ["", f"Where the decision's time goes (cProfile, self time): {top}."]
    return rows


def busy_warning(doc: dict[str, Any]) -> list[str]:
    """A line when servers that should own core 0 did not get it (other work on the machine)."""
    busy = [
        r["server_cpu_util"]
        for name, r in doc["setups"].items()
        if r.get("status") == "ok"
        and r.get("role") in ("reference", "subject", "peer")
        and not r.get("load_bound")
        and name != "direct"
    ]
    if not busy:
        return []
    busy.sort()
    median = busy[len(busy) // 2]
    if median >= 0.9:
        return []
    return [
        f"**Warning: the machine was busy.** The Python-based servers kept their core only "
        f"{median:.0%} busy (median): other processes shared the cores, so req/s and latency "
        "are pessimistic and noisy; CPU per request and the ratios are the steadier figures. "
        "Re-run on an idle machine (`--repeat 3` interleaves the setups).",
        "",
    ]


def results_markdown(doc: dict[str, Any]) -> str:
    traffic = doc["traffic"]
    parts = [
        machine_line(doc),
        "",
        *busy_warning(doc),
        f"Mix: {traffic['size']:,} requests from {traffic['routes']} project routes ({traffic['route_source']}); "
        f"predicted denied share {traffic['predicted_denied_share']:.1%}; token kinds {traffic['token_kinds']}.",
        "",
        *setups_table(doc),
        "",
        *light_table(doc),
        "",
        "Ratios at 50 connections (req/s ratio, p99 difference, CPU-per-request ratio; same mix):",
        "",
        *ratio_table(doc),
        "",
        "Targets of this round:",
        "",
        *targets_table(doc),
        "",
        *large_table(doc),
        "",
        *micro_table(doc),
    ]
    return "\n".join(parts)


def profile_markdown(doc: dict[str, Any]) -> str:
    profiles = {k: v for k, v in (doc.get("profiles") or {}).items()}
    if not profiles:
        return "No profile this round (`bench/run.py --only-profile gateway_enforce_1w`)."
    names = list(profiles)
    head = "| layer | " + " | ".join(f"`{n}` share | µs/req" for n in names) + " |"
    rows = [head, "|---|" + "---:|---:|" * len(names)]
    for key, title in _layer_titles():
        cells = []
        for name in names:
            p = profiles[name]
            share = next((x["share"] for x in p.get("layers", []) if x["layer"] == key), None)
            cpu = (doc["setups"].get(name) or {}).get("cpu_us_per_request")
            cells.append("—" if share is None else f"{share:.1%}")
            cells.append("—" if share is None or cpu is None else f"{share * cpu:.1f}")
        rows.append(f"| {title} | " + " | ".join(cells) + " |")
    notes = []
    for name, p in profiles.items():
        if p.get("status") != "ok":
            notes.append(f"`{name}`: {p.get('status')}: {p.get('reason', '')}")
        else:
            leaves = ", ".join(f"{x['frame']} {x['share']:.0%}" for x in p["top_python_leaves"][:6])
            notes.append(
                f"`{name}`: {p['samples']} samples; {p['requests_per_s_under_profiler']:,.0f} req/s under the profiler; hottest innermost Python frames: {leaves}."
            )
            for key in ("decision", "handler", "log"):
                frames = p.get("layer_frames", {}).get(key)
                if frames:
                    shown = ", ".join(f"{x['frame']} {x['share']:.0%}" for x in frames[:4])
                    notes.append(f"`{name}`, {key} layer: {shown}.")
    return "\n".join(rows + [""] + [f"- {n}" for n in notes])


def _layer_titles() -> tuple[tuple[str, str], ...]:
    import profiling

    return profiling.LAYERS


def _replace(text: str, marker: str, body: str) -> str:
    pattern = re.compile(
        rf"(<!-- bench:{marker}:begin -->\n).*?(\n<!-- bench:{marker}:end -->)", re.S
    )
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def update_readme(doc: dict[str, Any]) -> None:
    if not README.exists():
        return
    text = README.read_text(encoding="utf-8")
    text = _replace(text, "results", results_markdown(doc))
    text = _replace(text, "profile", profile_markdown(doc))
    README.write_text(text, encoding="utf-8")


def finish(doc: dict[str, Any], results_dir: Path, *, readme: bool) -> None:
    sys.path.insert(0, str(BENCH))
    doc["ratios"] = ratios(doc)
    doc["targets"] = targets(doc)
    stamp = doc["started"].replace(":", "").replace("-", "")[:15]
    try:
        if doc["mode"] == "profile":
            raise ImportError("profile-only round")
        import chart

        chart.render(doc, results_dir / "latest.png")
        doc["chart"] = "latest.png"
    except ImportError as exc:
        doc["chart"] = f"not drawn: {exc} (pip install '.[bench]')"
    text = json.dumps(doc, indent=2)
    if doc["mode"] == "profile":
        # A profile-only round has no setup figures: it never replaces latest.json or the README.
        (results_dir / f"{stamp}-profile.json").write_text(text, encoding="utf-8")
        print(profile_markdown(doc))
        return
    (results_dir / f"{stamp}.json").write_text(text, encoding="utf-8")
    (results_dir / "latest.json").write_text(text, encoding="utf-8")
    if readme:
        update_readme(doc)


DECISION_SETUPS = (
    "nginx_auth_request",
    "nginx_auth_request_gateway",
    "envoy_ext_authz",
    "envoy_ext_authz_gateway",
    "decision_service",
    "decision_gateway",
    "decision_gateway_aiohttp",
)


def decision_markdown(doc: dict[str, Any]) -> str:
    """Issue 12's figures from a round: the decision setups, their one-connection latency,
    the decision targets and the profiles (bench/README.md, "The decision endpoint")."""
    part = {
        **doc,
        "setups": {k: v for k, v in doc["setups"].items() if k in DECISION_SETUPS},
        "targets": decision_targets(doc),
    }
    lines = [machine_line(doc), ""]
    lines += busy_warning(doc)
    lines += [*setups_table(part), "", *light_table(part), ""]
    lines += ["Targets of issue 12 from this round:", "", *targets_table(part), ""]
    lines.append(profile_markdown(doc))
    return "\n".join(lines)


def update_decision_readme(doc: dict[str, Any]) -> None:
    """Rewrite the text between `<!-- bench:decision:begin/end -->` in bench/README.md."""
    text = README.read_text(encoding="utf-8")
    README.write_text(_replace(text, "decision", decision_markdown(doc)), encoding="utf-8")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    path = Path(args[0]) if args else BENCH / "results" / "latest.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    sys.path.insert(0, str(BENCH))
    if "--decision" in sys.argv:  # issue 12's section; --write puts it into bench/README.md
        if "--write" in sys.argv:
            update_decision_readme(doc)
        print(decision_markdown(doc))
        return
    print(results_markdown(doc))
    print()
    print(profile_markdown(doc))


if __name__ == "__main__":
    main()
