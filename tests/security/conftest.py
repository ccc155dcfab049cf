"""The gateway under attack, in front of the real recording upstream (tests/fixtures/upstream.py).

- `a_guarded_gateway(**settings)`: the proxy listener (`a_gateway`) in-process on a loopback
  port, with the real Gate over a memory store holding GRANTS_YAML; `.attack` sends raw bytes.
- `a_served_gateway(*flags)`: a real `python -m gateway serve` subprocess over a file store
  holding the same grants (raw-socket smuggling, limits, load).

Every probe returns an `Answer`: the status, headers and body the client saw, and the requests
the upstream received while it was in flight (`forwarded`), so a test can assert both the
verdict and that nothing unapproved went through.

The grants (job token -> project, and the allowlists) make one request pair per rule:
- APP (acme/app, #10) on acme/platform/target (#20): read_deployments, admin_packages,
  read_jobs, admin_environments. So GET .../deployments is allowed, GET .../releases is not.
- acme/secret (#21) admits only other/outsider; open/unlisted (#30) has its allowlist off;
  acme/legacy (#40) admits the acme group with default permissions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fixtures.proxy import GatewayProcess
from fixtures.upstream import Received, Upstream
from multidict import CIMultiDict

from gateway.core.gate import Gate
from gateway.settings import Settings
from gateway.stores import Store, open_store
from gateway.stores.grants import Grants, parse_grants
from gateway.stores.memory import MemoryStore

REPO = Path(__file__).resolve().parents[2]
ROUTES = REPO / "policies" / "routes.yaml"

APP = "glcbt-sec-app-job"  # job 7001 in acme/app (#10)
OUTSIDER = "glcbt-sec-outsider-job"  # job 7002 in other/outsider (#12), on acme/secret's list
SECRET = "glcbt-sec-secret-job"  # job 7003 in acme/secret (#21)
EXPIRED = "glcbt-sec-expired-job"  # job 7000 in acme/app, finished
UNKNOWN = "glcbt-sec-unknown-job"  # no such job

GRANTS_YAML = """
projects:
  - {id: 10, path: acme/app}
  - {id: 12, path: other/outsider}
  - {id: 20, path: acme/platform/target}
  - {id: 21, path: acme/secret}
  - {id: 30, path: open/unlisted}
  - {id: 40, path: acme/legacy}
jobs:
  - {token: glcbt-sec-app-job, job_id: 7001, project: acme/app, expires_at: "2099-01-01T00:00:00Z"}
  - {token: glcbt-sec-outsider-job, job_id: 7002, project: 12, expires_at: "2099-01-01T00:00:00Z"}
  - {token: glcbt-sec-secret-job, job_id: 7003, project: acme/secret}
  - {token: glcbt-sec-expired-job, job_id: 7000, project: acme/app, expires_at: "2020-01-01T00:00:00Z"}
allowlists:
  - project: acme/platform/target
    entries:
      - {source: acme/app, default_permissions: false,
         policies: [read_deployments, admin_packages, read_jobs, admin_environments]}
  - project: acme/secret
    entries:
      - {source: other/outsider, default_permissions: true}
  - project: open/unlisted
    enabled: false
  - project: acme/legacy
    entries:
      - {source: acme, kind: group, default_permissions: true}
"""

# Two requests the tests build on: the same project, one allowed and one denied for APP.
ALLOWED = "/api/v4/projects/20/deployments"  # read_deployments: granted
DENIED = "/api/v4/projects/20/releases"  # read_releases: not granted -> 403


@dataclass
class Answer:
    """What the client saw, and what the upstream received meanwhile."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    forwarded: list[Received] = field(default_factory=list)
    raw: bytes = b""

    @property
    def reason(self) -> str | None:
        """The gateway's own answers carry X-Gateway-Reason; forwarded ones never do."""
        return self.headers.get("X-Gateway-Reason")

    @property
    def message(self) -> str:
        return str(json.loads(self.body)["message"])

    def describe(self) -> str:
        seen = [(r.method, r.raw_path) for r in self.forwarded]
        return f"{self.status} reason={self.reason} forwarded={seen} body={self.body[:200]!r}"


def parse_answer(raw: bytes) -> tuple[int, CIMultiDict[str], bytes]:
    """Status, headers and (de-chunked) body of one HTTP/1.x response; 0 when there is none."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return 0, CIMultiDict(), raw
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return int(parts[1]), headers, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def http(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    length: bool = True,
) -> bytes:
    """A request exactly as written (Host and `Connection: close` added, and Content-Length
    for a body unless `length=False`)."""
    lines = [f"{method} {target} {version}", "Host: gateway.test"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body and length:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange(port: int, data: bytes, wait: float = 10) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


@dataclass
class Attack:
    """Sends requests to one gateway and tells what the upstream received meanwhile."""

    port: int
    upstream: Upstream

    async def raw(self, data: bytes, wait: float = 10) -> Answer:
        before = len(self.upstream.received)
        raw = await exchange(self.port, data, wait)
        await asyncio.sleep(0)  # let the upstream finish recording a forwarded request
        status, headers, body = parse_answer(raw)
        return Answer(status, headers, body, self.upstream.received[before:], raw)

    async def send(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        token: str | None = None,
        **options: Any,
    ) -> Answer:
        """One request; `token` adds a JOB-TOKEN header."""
        all_headers = [*headers, *([("JOB-TOKEN", token)] if token is not None else [])]
        return await self.raw(http(method, target, all_headers, body, **options))


@dataclass
class Guarded:
    url: str
    port: int
    upstream: Upstream
    gate: Gate

    def __repr__(self) -> str:  # hypothesis prints fixtures: keep the upstream's log out
        return f"Guarded({self.url})"

    @property
    def attack(self) -> Attack:
        return Attack(self.port, self.upstream)


@pytest.fixture
async def a_guarded_gateway(
    an_upstream: Upstream, a_gateway: Callable[..., Awaitable[Any]]
) -> AsyncIterator[Callable[..., Awaitable[Guarded]]]:
    """Start the in-process gateway (real Gate, memory store with GRANTS_YAML)."""
    gates: list[Gate] = []

    async def start(
        store: Store | None = None, upstream: str | None = None, **overrides: Any
    ) -> Guarded:
        """`upstream` replaces the recording upstream's URL (a dead port, a garbage server)."""
        overrides.setdefault("store", "memory://")
        url = upstream or an_upstream.url
        settings = Settings(upstream=url, **overrides)
        store = store or MemoryStore(the_grants())
        gate = await Gate.open(settings, store=store)
        gates.append(gate)
        running = await a_gateway(url, gate=gate, **overrides)
        return Guarded(running.url, running.port, an_upstream, gate)

    yield start
    for gate in gates:
        await gate.close()


@pytest.fixture
async def guarded(a_guarded_gateway: Callable[..., Awaitable[Guarded]]) -> Guarded:
    """The gateway with default settings."""
    return await a_guarded_gateway()


def the_grants() -> Grants:
    return parse_grants(GRANTS_YAML, "security grants")


async def a_sqlite_store(path: Path) -> Store:
    """A real SQLite store file holding GRANTS_YAML."""
    store = open_store(f"sqlite:///{path}", create=True)
    await store.load(the_grants())
    return store


@pytest.fixture
def grants_file(tmp_path: Path) -> Path:
    path = tmp_path / "security-grants.yaml"
    path.write_text(GRANTS_YAML)
    return path


@pytest.fixture
def a_served_gateway(
    a_gateway_process: Callable[..., GatewayProcess], grants_file: Path
) -> Callable[..., GatewayProcess]:
    """`python -m gateway serve --upstream URL --store file://grants` with extra flags."""

    def start(upstream: str, *flags: str, env: dict[str, str] | None = None) -> GatewayProcess:
        store = f"file://{grants_file}"
        return a_gateway_process("--upstream", upstream, "--store", store, *flags, env=env)

    return start


# --------------------------------------------------------------------------- assertions


def assert_refused(answer: Answer, status: int = 400, reason: str | None = "bad_target") -> None:
    """The gateway answered itself with `status` (and `reason`, when it could set one) and
    nothing reached the upstream."""
    assert answer.status == status, answer.describe()
    if reason is not None:
        assert answer.reason == reason, answer.describe()
    assert answer.forwarded == [], answer.describe()


def assert_not_forwarded(answer: Answer, statuses: Iterable[int] = (400, 401, 403)) -> None:
    """Refused or denied (any of `statuses`), and the upstream received nothing."""
    assert answer.status in set(statuses), answer.describe()
    assert answer.forwarded == [], answer.describe()


CREDENTIAL_HEADERS = frozenset({"JOB_TOKEN", "PRIVATE_TOKEN", "DEPLOY_TOKEN", "AUTHORIZATION"})


def folded(name: str) -> str:
    """A header name as the most lenient CGI-style server sees it: upper case, every byte
    outside [A-Za-z0-9] as `_` (Rack folds `-`; lighttpd's CGI/FastCGI env folds them all)."""
    return "".join(char if char.isascii() and char.isalnum() else "_" for char in name.upper())


def credentials_received(received: Received) -> list[tuple[str, str]]:
    """The headers of a forwarded request that some upstream would read as a credential."""
    return [(k, v) for k, v in received.headers if folded(k) in CREDENTIAL_HEADERS]


def assert_judged_or_dropped(answer: Answer, statuses: Iterable[int] = (400, 401, 403)) -> None:
    """Either the gateway judged the credential (refused/denied, nothing forwarded), or it
    dropped it: forwarded with no header any upstream could read as a credential."""
    if answer.status in set(statuses):
        assert answer.forwarded == [], answer.describe()
        return
    assert answer.status == 200, answer.describe()
    assert len(answer.forwarded) == 1, answer.describe()
    assert credentials_received(answer.forwarded[0]) == [], answer.describe()


def assert_forwarded(answer: Answer, target: str, method: str | None = None) -> Received:
    """Forwarded once, byte-for-byte, and the upstream's answer relayed (no gateway reason)."""
    assert answer.status == 200, answer.describe()
    assert answer.reason is None, answer.describe()
    assert len(answer.forwarded) == 1, answer.describe()
    received = answer.forwarded[0]
    assert received.raw_path == target, answer.describe()
    if method is not None:
        assert received.method == method, answer.describe()
    return received
