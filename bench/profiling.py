"""Where the CPU of one proxied request goes: py-spy samples sorted into the proxy's layers.

`record()` samples a running server (and its worker processes) with `py-spy record --native`
while load runs, then `layers()` assigns every sample to one layer:

1. a sample with a decision-core frame anywhere on its stack (gateway/core, routing,
   stores) is "decision"; one with logging/metrics frames is "log + metrics";
2. otherwise the innermost *Python* frame decides (generic helpers such as asyncio, yarl or
   aiohttp's streams are skipped outward), except that native socket-write frames (uvloop's
   write path, writev/send) always count as "socket writes";
3. a sample with no Python frame at all is the event loop itself (epoll, reads, callbacks).

Usage (standalone): python bench/profiling.py STACKS.txt  -> prints the layer table
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

LAYERS = (
    ("server", "server: HTTP parsing, dispatch"),
    ("decision", "decision: extract, match, resolve, decide"),
    ("handler", "proxy handler: headers, URL, body loop"),
    ("client", "upstream client (aiohttp ClientSession; lean: gateway/wire/client)"),
    ("response", "server response: headers, body"),
    ("writes", "socket writes (both legs)"),
    ("log", "log line + metrics"),
    ("loop", "event loop, socket reads (native)"),
    ("other", "other"),
)
TITLES = dict(LAYERS)

DECISION = re.compile(r"gateway/(core|routing|stores)/\w+\.py")
LOGGING = re.compile(
    r"gateway/ops/(log|metrics)\.py|structlog/|prometheus_client/|logging/__init__\.py"
)
NATIVE_WRITE = re.compile(
    r"UVStream_?_?\w*[Ww]rite|uv__write|uv_try_write|\bwritev\b|\bsendmsg\b|\b__?send\b"
)
BY_MODULE = (
    # The lean engine (issue 13): its client connection and pipes are the server side, its
    # upstream connection and pool the client side, its pipeline the handler.
    (re.compile(r"gateway/wire/client\.py"), "client"),
    (re.compile(r"gateway/proxy/lean/(connection|listener)\.py"), "server"),
    (re.compile(r"gateway/proxy/lean/\w+\.py|bare_lean\.py"), "handler"),
    (re.compile(r"gateway/wire/\w+\.py|httptools/"), "server"),  # the lean HTTP machinery
    (re.compile(r"gateway/authz/\w+\.py"), "handler"),  # the decision listener's own work
    (re.compile(r"aiohttp/http_writer\.py"), "writes"),
    (
        re.compile(
            r"aiohttp/(client|client_reqrep|connector|client_proto|client_middlewares|tracing|cookiejar)\.py"
        ),
        "client",
    ),
    (re.compile(r"aiohttp/web_response\.py"), "response"),
    (
        re.compile(
            r"aiohttp/(web_protocol|web_request|web_app|web_urldispatcher|web_server|http_parser|web_middlewares|_http_parser\w*)\.py"
        ),
        "server",
    ),
    (re.compile(r"gateway/(proxy|ops)/\w+\.py|bare_proxy\.py"), "handler"),
)
GENERIC = re.compile(
    r"asyncio/|yarl/|multidict/|random\.py|secrets\.py|json/|dataclasses\.py|aiohttp/(streams|helpers|base_protocol|payload|abc|typedefs)\.py|typing\.py|enum\.py|contextlib\.py"
)
# The frames that own the event loop: a sample whose innermost Python frame is one of these
# is spent in the loop itself (uvloop/libuv: epoll, reads, callbacks).
LOOP_OWNER = re.compile(
    r"aiohttp/web\.py|asyncio/(runners|base_events)\.py|uvloop/|gateway/commands/|gateway/(proxy/app|proxy/server|ops/supervisor|cli|__main__)\.py|\(<module>|^main "
)
RATE = 100  # native unwinding pauses the process per sample: keep the rate modest
# A thread parked on a lock, a condition or a queue uses no CPU: py-spy --native still reports
# some of those samples (thread pools of the sqlite store), so they are dropped and counted.
IDLE = re.compile(
    r"_queue_SimpleQueue_get|PyThread_acquire_lock_timed|pthread_cond_(timed)?wait|\bsem_(timed)?wait"
)
FRAME = re.compile(r"^(.*) \((.*)\)$")


def _python(frame: str) -> str | None:
    """The file of a Python frame (`fn (pkg/mod.py:12)`), or None for a native one."""
    match = FRAME.match(frame)
    if match is None:
        return None
    where = match.group(2)
    return where if ".py:" in where else None


def classify(frames: list[str]) -> str:
    """The layer of one sample; `frames` run from the outermost to the innermost."""
    joined = ";".join(frames)
    if DECISION.search(joined):
        return "decision"
    if LOGGING.search(joined):
        return "log"
    for frame in reversed(frames):
        if NATIVE_WRITE.search(frame.split(" (", 1)[0]):
            return "writes"
        where = _python(frame)
        if where is None or GENERIC.search(where):
            continue
        if LOOP_OWNER.search(where) or LOOP_OWNER.search(frame):
            return "loop"
        for pattern, layer in BY_MODULE:
            if pattern.search(where):
                return layer
        return "other"
    return "loop"


def parse(text: str) -> list[tuple[list[str], int]]:
    samples = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        samples.append((frames, int(count)))
    return samples


def layers(text: str) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    by_layer: dict[str, Counter[str]] = {key: Counter() for key, _ in LAYERS}
    idle = 0
    for frames, count in parse(text):
        if any(IDLE.search(frame) for frame in frames[-6:]):
            idle += count
            continue
        layer = classify(frames)
        counts[layer] += count
        python_leaf = next((f for f in reversed(frames) if _python(f)), "(native only)")
        leaf = re.sub(r":\d+\)$", ")", python_leaf)
        leaves[leaf] += count
        by_layer[layer][_own_frame(frames, layer) or leaf] += count
    total = sum(counts.values()) or 1
    return {
        "samples": total,
        "idle_samples_dropped": idle,
        "layers": [
            {"layer": key, "title": title, "share": round(counts[key] / total, 3)}
            for key, title in LAYERS
        ],
        "top_python_leaves": [
            {"frame": frame, "share": round(n / total, 3)} for frame, n in leaves.most_common(12)
        ],
        # Per layer, the frames of that layer's own code that the samples sat under.
        "layer_frames": {
            key: [{"frame": f, "share": round(n / total, 3)} for f, n in c.most_common(5)]
            for key, c in by_layer.items()
            if c
        },
    }


def _own_frame(frames: list[str], layer: str) -> str | None:
    """The innermost frame of the code that owns the layer (e.g. gateway/core/tokens.py for decision)."""
    owner = {"decision": DECISION, "log": LOGGING}.get(layer)
    if owner is None:
        return None
    for frame in reversed(frames):
        if owner.search(frame):
            return re.sub(r":\d+\)$", ")", frame)
    return None


def record(
    spy: str, pid: int, load: Callable[[], dict[str, Any]], work: Path, duration: float
) -> dict[str, Any]:
    """Samples `pid` (and children) at RATE Hz while `load()` runs; returns layers + load figures."""
    out = work / f"py-spy-{pid}.txt"
    argv = [spy, "record", "--pid", str(pid), "--subprocesses", "--native", "--rate", str(RATE)]
    argv += ["--format", "raw", "--output", str(out), "--duration", str(int(duration) + 1)]
    spy_proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    try:
        figures = load()
    finally:
        log, _ = spy_proc.communicate(timeout=duration + 60)
    if spy_proc.returncode != 0 or not out.exists():
        return {"status": "failed", "reason": "py-spy: " + log.strip()[-300:]}
    result = layers(out.read_text(errors="replace"))
    result.update(
        status="ok", rate_hz=RATE, requests_per_s_under_profiler=figures.get("requests_per_s")
    )
    return result


def main() -> None:
    result = layers(Path(sys.argv[1]).read_text(errors="replace"))
    for layer in result["layers"]:
        print(f"{layer['title']:45} {layer['share']:6.1%}")
    print(f"({result['samples']} samples)")
    for leaf in result["top_python_leaves"]:
        print(f"  {leaf['share']:6.1%}  {leaf['frame']}")


if __name__ == "__main__":
    main()
