"""`python -m gateway.ops.healthcheck`: the container's health probe, standard library only.

Exit 0 when the admin listener answers `GET /-/health` with 200 within the timeout; otherwise
exit 1 with one line on stderr saying why (Docker keeps it in `docker inspect`'s health log).
Bad arguments or a bad GATEWAY_ADMIN_PORT also exit 1: Docker reserves exit code 2 for health
checks, so a misconfigured probe must read as "unhealthy", never as something else.

It runs every few seconds next to the gateway, so it imports nothing outside the standard
library (no pydantic start-up cost). That is also why it reads two variables itself instead of
going through `gateway.settings`: GATEWAY_ADMIN_HOST and GATEWAY_ADMIN_PORT, with the same names
and defaults as the Settings fields (tests/test_docker.py holds them equal), so a port changed
through the environment moves the probe with the listener.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "ADMIN_HOST_ENV",
    "ADMIN_PORT_ENV",
    "DEFAULT_TIMEOUT",
    "Target",
    "main",
    "probe",
    "target_from_env",
]

ADMIN_HOST_ENV = "GATEWAY_ADMIN_HOST"
ADMIN_PORT_ENV = "GATEWAY_ADMIN_PORT"
DEFAULT_ADMIN_HOST = "127.0.0.1"
DEFAULT_ADMIN_PORT = 9090
HEALTH_PATH = "/-/health"
DEFAULT_TIMEOUT = 3.0  # seconds; below the Dockerfile HEALTHCHECK --timeout
# A wildcard bind is reachable on loopback; connecting to the wildcard address itself is not portable.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    path: str = HEALTH_PATH

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"


def target_from_env(environ: Mapping[str, str], path: str = HEALTH_PATH) -> Target:
    """The admin listener as the gateway would bind it; raises ValueError for a bad port."""
    host = environ.get(ADMIN_HOST_ENV, DEFAULT_ADMIN_HOST).strip()
    raw_port = environ.get(ADMIN_PORT_ENV, str(DEFAULT_ADMIN_PORT)).strip()
    if not raw_port.isdigit() or not 0 < int(raw_port) <= 65535:
        raise ValueError(f"{ADMIN_PORT_ENV} must be a port number 1-65535 (got {raw_port!r})")
    return Target(_WILDCARDS.get(host, host), int(raw_port), path)


def target_from_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--url must be an http:// URL (got {url!r})")
    path = parts.path or "/"
    return Target(
        parts.hostname, parts.port or 80, f"{path}?{parts.query}" if parts.query else path
    )


def probe(target: Target, timeout: float) -> str | None:
    """None when the target answers 200, else why not.

    http.client rather than urllib: urllib would honour HTTP_PROXY/http_proxy from the container's
    environment and send the probe through a proxy.
    """
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        conn.request("GET", target.path, headers={"User-Agent": "jobtoken-gateway-healthcheck"})
        response = conn.getresponse()
        response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        return f"{target}: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if response.status != 200:
        return f"{target}: HTTP {response.status} {response.reason}"
    return None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.ops.healthcheck",
        description=f"Exit 0 when the gateway's admin listener answers {HEALTH_PATH} with 200.",
    )
    parser.add_argument("--path", default=HEALTH_PATH, help="admin path to probe (e.g. /-/ready)")
    parser.add_argument("--url", help="probe this http:// URL instead of the admin listener")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds (default {DEFAULT_TIMEOUT:g})",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's usage errors exit 2, which Docker reserves
        return 0 if exc.code == 0 else 1
    try:
        if args.url:
            target = target_from_url(args.url)
        else:
            target = target_from_env(os.environ if environ is None else environ, args.path)
    except ValueError as exc:
        print(f"unhealthy: bad configuration: {exc}", file=sys.stderr)
        return 1
    problem = probe(target, args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
