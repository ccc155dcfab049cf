"""The benchmark's plumbing: processes pinned to cores, readiness, CPU and memory from /proc,
wrk's output, and a description of the machine. No policy or setup knowledge lives here.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Cores:
    """Where things run: the server under test on `server`, load and upstream on `load`."""

    server: str | None
    load: str | None
    note: str

    @classmethod
    def detect(cls, enabled: bool = True) -> Cores:
        count = os.cpu_count() or 1
        if not enabled:
            return cls(None, None, "pinning disabled (--no-pin)")
        if shutil.which("taskset") is None:
            return cls(None, None, "taskset not found: nothing pinned")
        if count < 2:
            return cls(None, None, "one core: nothing pinned")
        return cls("0", "1", "server under test on core 0; load generator and upstream on core 1")

    def wrap(self, argv: list[str], where: str | None) -> list[str]:
        return ["taskset", "-c", where, *argv] if where else argv


@dataclass
class Procs:
    """Processes started by one setup; each in its own session so the whole tree can be ended."""

    logdir: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        log = (self.logdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        log.close()
        self.running[name] = proc
        return proc.pid

    def pid(self, name: str) -> int:
        return self.running[name].pid

    def alive(self, name: str) -> bool:
        return self.running[name].poll() is None

    def log_tail(self, name: str, lines: int = 8) -> str:
        path = self.logdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop_all(self, grace: float = 5.0) -> None:
        for proc in self.running.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.running.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(5)
        self.running.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # Each process was started in its own session: its group id is its pid (ours to end).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def wait_http(port: int, timeout: float, alive: Any = None) -> bool:
    """True once something answers HTTP on 127.0.0.1:port (any status); False on timeout."""
    deadline = time.monotonic() + timeout
    probe = b"GET /-/bench-probe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(probe)
                if conn.recv(16).startswith(b"HTTP/1."):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


# --- /proc


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pid: int) -> list[int]:
    """The pid and all its descendants (nginx master + workers, gateway workers, ...)."""
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (gone processes count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return total / CLK_TCK


def memory_kib(pids: list[int], key: str) -> list[int]:
    """`VmRSS` or `VmHWM` of each live process, in KiB."""
    values = []
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    values.append(int(line.split()[1]))
        except OSError:
            continue
    return values


class CpuMeter:
    """CPU used by named process trees between `start()` and `stop()`."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.before: dict[str, tuple[list[int], float]] = {}
        self.wall = self.elapsed = 0.0

    def start(self) -> None:
        self.wall = time.monotonic()
        for name, root in self.roots.items():
            pids = tree(root)
            self.before[name] = (pids, cpu_seconds(pids))

    def stop(self) -> dict[str, dict[str, Any]]:
        self.elapsed = wall = time.monotonic() - self.wall
        used = {}
        for name, (pids, before) in self.before.items():
            pids = sorted(set(pids) | set(tree(self.roots[name])))
            seconds = cpu_seconds(pids) - before
            used[name] = {
                "cpu_s": round(seconds, 3),
                "util": round(seconds / wall, 3),
                "processes": len(pids),
            }
        return used


# --- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
    return round(float(number) * _UNITS[unit], 3)


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests, requests/s, p50/p75/p90/p99 (ms), non-2xx/3xx and socket errors from `wrk --latency`."""
    result: dict[str, Any] = {"latency_ms": {}, "non_2xx": 0, "errors": {}}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.M):
        result["latency_ms"][f"p{pct}"] = _ms(value)
    if match := re.search(r"^\s+(\d+) requests in ([\d.]+)(\w+),", output, re.M):
        result["requests"] = int(match.group(1))
        result["duration_s"] = round(_ms(match.group(2) + match.group(3)) / 1000, 3)
    if match := re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M):
        result["requests_per_s"] = float(match.group(1))
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        result["non_2xx"] = int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        names = ("connect", "read", "write", "timeout")
        result["errors"] = {n: int(v) for n, v in zip(names, match.groups(), strict=True) if int(v)}
    if "requests" not in result or "requests_per_s" not in result:
        raise ValueError("unexpected wrk output: " + output.strip()[-300:])
    return result


# --- the machine


def _version(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip()
    version = re.search(r"\d+\.\d+\.\d+", text)
    return version.group(0) if version else (text.splitlines()[0][:80] if text else None)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _dist(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine(tools: dict[str, str | None]) -> dict[str, Any]:
    versions = {name: _version([path, flag]) for name, path, flag in _tool_flags(tools)}
    return {
        "nproc": os.cpu_count(),
        # Other work on the machine skews every figure: the 1-minute load average at the start.
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": _dist("aiohttp"),
        "uvloop": _dist("uvloop"),
        "yarl": _dist("yarl"),
        "multidict": _dist("multidict"),
        "tools": versions,
    }


def _tool_flags(tools: dict[str, str | None]) -> list[tuple[str, str, str]]:
    flags = {"wrk": "-v", "nginx": "-v", "envoy": "--version", "py-spy": "--version"}
    return [(name, path, flags[name]) for name, path in tools.items() if path and name in flags]
