"""A PNG of one round: throughput and latency per setup (matplotlib, headless).

Setups that did not run are drawn as labelled gaps, never as zeros.
Usage: python bench/chart.py [results.json] [out.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
COLORS = {"reference": "#7f7f7f", "subject": "#d62728", "peer": "#1f77b4", "native": "#2ca02c"}


def render(doc: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(doc["setups"])
    records = [doc["setups"][n] for n in names]
    ran = [r.get("status") == "ok" for r in records]
    labels = [
        n + ("" if ok else f"\n({r['status'].replace('_', ' ')})")
        for n, r, ok in zip(names, records, ran, strict=True)
    ]
    ys = range(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.55 * len(names) + 2.2), sharey=True)
    rps = [r["requests_per_s"] if ok else 0 for r, ok in zip(records, ran, strict=True)]
    left.barh(ys, rps, color=[COLORS.get(r.get("role", ""), "#999") for r in records])
    for y, value, ok in zip(ys, rps, ran, strict=True):
        left.text(value, y, f" {value:,.0f}" if ok else " not run", va="center", fontsize=8)
    left.set_xlabel("requests/s (higher is better)")
    handles = [Patch(color=color, label=role) for role, color in COLORS.items()]
    left.legend(handles=handles, loc="lower right", fontsize=8)
    left.set_yticks(list(ys), labels, fontsize=8)
    left.invert_yaxis()
    for offset, key, color in ((-0.2, "p50", "#9ecae1"), (0.2, "p99", "#08519c")):
        values = [
            r["latency_ms"].get(key, 0) if ok else 0 for r, ok in zip(records, ran, strict=True)
        ]
        right.barh([y + offset for y in ys], values, height=0.4, color=color, label=key)
    right.set_xlabel("latency, ms (lower is better)")
    right.legend(loc="lower right", fontsize=8)
    m = doc["machine"]
    fig.suptitle(
        f"jobtoken-gateway bench {doc['started']} ({doc['mode']}) — {m['nproc']} cores {m['cpu_model']}, "
        f"c={doc['settings']['connections']}, {doc['settings']['duration']:g} s per setup",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH / "results" / "latest.json"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    render(json.loads(src.read_text(encoding="utf-8")), out)
    print(out)


if __name__ == "__main__":
    main()
