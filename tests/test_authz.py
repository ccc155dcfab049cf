"""The decision listener (gateway/authz) with a real gate and store, over real sockets: the three
ways a check request names its original request, who is believed, bodies, answers, dry-run,
the Task-free cache hit, and `serve --decision-port` as a process."""

from __future__ import annotations

import asyncio
import base64
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from job_grants import APP, TOOL, a_gate

from gateway.authz import DecisionService, start_listener
from gateway.core.decision import Reason
from gateway.ops.exchange import Recorder
from gateway.wire import Request, Response

API = "/api/v4"
GRANTED = f"{API}/projects/20/deployments"  # acme/app's job: read_deployments on deployer
DENIED = f"{API}/projects/20/releases"  # not granted to acme/app


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def reason(self) -> str | None:
        value = self.headers.get("X-Gateway-Reason")
        return str(value) if value is not None else None

    def json(self) -> Any:
        return orjson.loads(self.body)


Ask = Callable[..., Any]


@pytest.fixture
async def a_listener() -> AsyncIterator[Callable[..., Any]]:
    started: list[Any] = []

    async def start(**overrides: Any) -> Ask:
        overrides.setdefault("decision_port", 0)
        store = overrides.pop("store_obj", None)
        gate = await a_gate(store, **overrides)
        listener = await start_listener(gate.settings, gate)
        started.append((listener, gate))
        base = f"http://127.0.0.1:{listener.port}"

        async def ask(
            method: str = "GET", target: str = "/", body: bytes | None = None, **headers: str
        ) -> Answer:
            names = {k.replace("_", "-"): v for k, v in headers.items()}
            async with (
                aiohttp.ClientSession(skip_auto_headers=["User-Agent", "Accept"]) as client,
                client.request(
                    method,
                    base + target,
                    data=body,
                    headers=names,
                    skip_auto_headers=["Content-Type"],
                ) as answer,
            ):
                return Answer(answer.status, answer.headers, await answer.read())

        ask.port = listener.port  # type: ignore[attr-defined]
        return ask

    yield start
    for listener, gate in started:
        await listener.stop(1)
        await gate.close()


def nginx(method: str, uri: str) -> dict[str, str]:
    return {"X_Original_Method": method, "X_Original_URI": uri}


def forwarded(method: str, uri: str) -> dict[str, str]:
    return {"X_Forwarded_Method": method, "X_Forwarded_Uri": uri, "X_Forwarded_Host": "gitlab"}


@pytest.mark.parametrize("protocol", [nginx, forwarded])
async def test_allow_and_deny_from_the_original_request_headers(
    a_listener: Callable[..., Any], protocol: Callable[[str, str], dict[str, str]]
) -> None:
    ask = await a_listener()
    allowed = await ask(**protocol("GET", GRANTED), JOB_TOKEN=APP)
    assert (allowed.status, allowed.reason, allowed.body) == (200, "policies_granted", b"")
    assert allowed.headers["X-Gateway-Job-Id"] == "5001"
    assert allowed.headers["X-Gateway-Source-Project"] == "acme/app"
    assert len(allowed.headers["X-Gateway-Request-Id"]) == 16
    denied = await ask(**protocol("GET", DENIED), JOB_TOKEN=APP)
    assert (denied.status, denied.reason) == (403, "insufficient_permissions")
    assert "read_releases" in denied.headers["X-Gateway-Message"]
    unknown = await ask(**protocol("GET", GRANTED), JOB_TOKEN="glcbt-nobody")
    assert (unknown.status, unknown.reason) == (401, "token_invalid")
    assert unknown.headers["X-Gateway-Message"] == "401 Unauthorized"
    if protocol is nginx:  # nginx never passes the body on: only the header carries it
        assert (denied.body, unknown.body) == (b"", b"")
    else:
        assert denied.headers["Content-Type"] == "application/json"
        assert denied.json()["message"] == denied.headers["X-Gateway-Message"]
        assert unknown.json() == {"message": "401 Unauthorized"}
    anonymous = await ask(**protocol("GET", DENIED))
    assert (anonymous.status, anonymous.reason) == (200, "no_token")
    assert "X-Gateway-Job-Id" not in anonymous.headers


async def test_envoy_check_requests_are_the_original_after_the_prefix(
    a_listener: Callable[..., Any],
) -> None:
    ask = await a_listener(decision_path_prefix="/ext-authz")
    allowed = await ask("GET", "/ext-authz" + GRANTED, JOB_TOKEN=APP)
    assert (allowed.status, allowed.reason) == (200, "policies_granted")
    denied = await ask("GET", "/ext-authz" + DENIED, JOB_TOKEN=APP)
    assert denied.status == 403
    missing = await ask("GET", GRANTED, JOB_TOKEN=APP)  # no prefix: not a check request
    assert (missing.status, missing.reason) == (403, "bad_check_request")
    # SECURITY: with a prefix, headers naming another original request cannot take over.
    smuggled = await ask("GET", "/ext-authz" + DENIED, JOB_TOKEN=APP, **nginx("GET", GRANTED))
    assert (smuggled.status, smuggled.reason) == (403, "bad_check_request")


async def test_without_a_prefix_the_check_request_itself_is_the_original(
    a_listener: Callable[..., Any],
) -> None:
    ask = await a_listener()
    assert (await ask("GET", GRANTED, JOB_TOKEN=APP)).status == 200
    assert (await ask("GET", DENIED, JOB_TOKEN=APP)).status == 403


@pytest.mark.parametrize(
    "headers",
    [
        {**nginx("GET", GRANTED), **forwarded("GET", DENIED)},  # two protocols
        {"X_Original_Method": "GET"},  # half a pair
        {"X_Forwarded_Uri": GRANTED},
        {"X_Original_Method": "GET/x", "X_Original_URI": GRANTED},
        {"X_Original_Method": "G T", "X_Original_URI": GRANTED},
    ],
)
async def test_ambiguous_or_incomplete_check_requests_are_refused(
    a_listener: Callable[..., Any], headers: dict[str, str]
) -> None:
    ask = await a_listener()
    answer = await ask(**headers, JOB_TOKEN=APP)
    assert answer.status == 403
    assert answer.reason == "bad_check_request"


async def test_a_repeated_protocol_header_is_refused(a_listener: Callable[..., Any]) -> None:
    ask = await a_listener()
    reader_writer = await _raw(
        ask,
        b"GET / HTTP/1.1\r\nX-Original-Method: GET\r\nX-Original-URI: "
        + DENIED.encode()
        + b"\r\nX-Original-URI: "
        + GRANTED.encode()
        + b"\r\nJOB-TOKEN: "
        + APP.encode()
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert reader_writer.startswith(b"HTTP/1.1 403")
    assert b"X-Gateway-Reason: bad_check_request" in reader_writer


async def _raw(ask: Ask, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", ask.port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_only_trusted_peers_are_believed(a_listener: Callable[..., Any]) -> None:
    ask = await a_listener(decision_trusted_peers=["10.9.0.0/16"])
    answer = await ask(**nginx("GET", GRANTED), JOB_TOKEN=APP)
    assert (answer.status, answer.reason) == (403, "untrusted_peer")


@pytest.mark.parametrize(
    ("method", "content_type"),
    [
        ("POST", None),  # Rack reads a POST without Content-Type as a form
        ("PUT", "application/x-www-form-urlencoded"),
        ("GET", "application/json"),
        ("PATCH", "multipart/form-data; boundary=x"),
        ("DELETE", "application/vnd.git-lfs+json"),
    ],
)
async def test_requests_whose_body_may_carry_a_token_are_not_decided_blind(
    a_listener: Callable[..., Any], method: str, content_type: str | None
) -> None:
    ask = await a_listener()
    headers = nginx(method, GRANTED)
    if content_type is not None:
        headers["Content_Type"] = content_type
    answer = await ask(**headers, JOB_TOKEN=APP)
    assert (answer.status, answer.reason) == (403, "body_not_visible")


async def test_other_bodies_are_decided_on_the_headers(a_listener: Callable[..., Any]) -> None:
    ask = await a_listener()
    headers = {**nginx("PUT", f"{API}/projects/20/packages/generic/p/1/f.bin")}
    answer = await ask(**headers, Content_Type="application/octet-stream", JOB_TOKEN=APP)
    assert answer.reason != "body_not_visible"


async def test_envoy_request_body_is_read(a_listener: Callable[..., Any]) -> None:
    ask = await a_listener(decision_path_prefix="/ext-authz")
    form = {"Content_Type": "application/x-www-form-urlencoded"}
    whole = {"x_envoy_auth_partial_body": "false", **form}
    # The token only in the body: judged as GitLab would read it (job_token param).
    answer = await ask("POST", "/ext-authz" + DENIED, f"job_token={APP}".encode(), **whole)
    assert (answer.status, answer.reason) == (403, "insufficient_permissions")
    answer = await ask("POST", "/ext-authz" + DENIED, b"job_token=glcbt-nobody", **whole)
    assert (answer.status, answer.reason) == (401, "token_invalid")
    # A conflict between the header and the body, as on the proxy port.
    answer = await ask(
        "POST", "/ext-authz" + GRANTED, b"job_token=" + TOOL.encode(), JOB_TOKEN=APP, **whole
    )
    assert (answer.status, answer.reason) == (403, "credential_conflict")
    partial = {"x_envoy_auth_partial_body": "true", **form}
    answer = await ask("POST", "/ext-authz" + GRANTED, f"job_token={APP}".encode(), **partial)
    assert (answer.status, answer.reason) == (403, "body_not_visible")
    # Without the marker the check request's own (empty) body says nothing about the original.
    answer = await ask("POST", "/ext-authz" + GRANTED, b"", JOB_TOKEN=APP, **form)
    assert (answer.status, answer.reason) == (403, "body_not_visible")


@pytest.mark.parametrize(
    "header",
    ["X-HTTP-Method-Override", "X_HTTP_Method_Override", "X-Original-URL", "X-Rewrite-URL"],
)
async def test_headers_that_change_what_gitlab_runs_are_refused(
    a_listener: Callable[..., Any], header: str
) -> None:
    ask = await a_listener()
    answer = await ask(**nginx("GET", GRANTED), JOB_TOKEN=APP, **{header: "DELETE"})
    assert (answer.status, answer.reason) == (403, "reinterpreting_header")


async def test_proxy_port_400_refusals_are_403_here_with_their_own_reason(
    a_listener: Callable[..., Any],
) -> None:
    ask = await a_listener()
    dotted = await ask(**nginx("GET", f"{API}/projects/20/x/../deployments"), JOB_TOKEN=APP)
    assert (dotted.status, dotted.reason) == (403, "bad_target")
    assert dotted.headers["X-Gateway-Message"].startswith("403 Forbidden - dot segment")
    encoded = await ask(**nginx("GET", f"{API}/projects/20%2Fdeployments"), JOB_TOKEN=APP)
    assert encoded.status == 403
    basic = "Basic " + base64.b64encode(f"gitlab-ci-token:{TOOL}".encode()).decode()
    conflict = await ask(**nginx("GET", GRANTED), JOB_TOKEN=APP, Authorization=basic)
    assert (conflict.status, conflict.reason) == (403, "credential_conflict")
    connect = await ask(**nginx("CONNECT", "gitlab:443"))
    assert (connect.status, connect.reason) == (403, "bad_target")


async def test_query_carriers_are_read(a_listener: Callable[..., Any]) -> None:
    ask = await a_listener()
    answer = await ask(**nginx("GET", f"{DENIED}?job_token={APP}"))
    assert (answer.status, answer.reason) == (403, "insufficient_permissions")


async def test_dry_run_allows_what_enforce_denies_and_says_so(
    a_listener: Callable[..., Any],
) -> None:
    ask = await a_listener(mode="dry-run")
    answer = await ask(**nginx("GET", DENIED), JOB_TOKEN=APP)
    assert (answer.status, answer.reason) == (200, "insufficient_permissions")
    assert answer.headers["X-Gateway-Would-Deny"] == "true"
    blind = await ask(**nginx("POST", DENIED), JOB_TOKEN=APP)
    assert (blind.status, blind.reason) == (403, "body_not_visible")


async def test_a_cache_hit_is_answered_without_a_task() -> None:
    gate = await a_gate(decision_port=0)
    try:
        service = DecisionService(gate.settings, gate, Recorder())
        headers = [("X-Original-Method", "GET"), ("X-Original-URI", GRANTED), ("JOB-TOKEN", APP)]

        def request() -> Request:
            return Request("GET", "/", "1.1", headers, b"", True, "127.0.0.1")

        first = service.handle(request())
        if not isinstance(first, Response):  # a cold cache asks the store (in a Task)
            first = await first
        assert first.status == 200
        again = service.handle(request())
        assert isinstance(again, Response), "a cache hit must not need a Task"
        assert again.status == 200
        denied = Request("GET", "/", "1.1", [("X-Original-Method", "GET")], b"", True, "10.1.1.1")
        answer = service.handle(denied)
        assert isinstance(answer, Response)
        assert answer.status == 403
    finally:
        await gate.close()


def test_reason_codes_of_the_listener_are_403() -> None:
    from gateway.core.decision import STATUS

    for reason in (
        Reason.UNTRUSTED_PEER,
        Reason.BAD_CHECK_REQUEST,
        Reason.BODY_NOT_VISIBLE,
        Reason.REINTERPRETING_HEADER,
    ):
        assert STATUS[reason] == 403


# ---- serve --decision-port


def _get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_serve_runs_the_decision_listener_beside_the_proxy(
    a_gateway_process: Callable[..., Any],
) -> None:
    from conftest import free_port

    port = free_port()
    process = a_gateway_process("--upstream", "http://127.0.0.1:9", "--decision-port", str(port))
    status, headers, _ = _get(
        f"http://127.0.0.1:{port}/", {"X-Original-Method": "GET", "X-Original-URI": GRANTED}
    )
    assert (status, headers["X-Gateway-Reason"]) == (200, "no_token")
    status, headers, _ = _get(
        f"http://127.0.0.1:{port}/",
        {"X-Original-Method": "GET", "X-Original-URI": GRANTED, "JOB-TOKEN": "glcbt-nobody"},
    )
    assert (status, headers["X-Gateway-Reason"]) == (401, "token_invalid")
    (line,) = [e for e in process.wait_for_event("request", 2) if e["status"] == 401]
    assert line["protocol"] == "nginx"
    assert line["path"] == GRANTED
    assert "glcbt-nobody" not in process.log_text()
    with urllib.request.urlopen(process.admin_url + "/metrics", timeout=5) as answer:
        metrics = answer.read().decode()
    assert 'gateway_decision_checks_total{protocol="nginx"} 2.0' in metrics
    # The proxy listener is there too (its upstream is down: 502).
    status, headers, _ = _get(process.url + GRANTED, {})
    assert headers.get("X-Gateway-Reason") == "upstream_unreachable"


def test_port_0_runs_the_decision_listener_alone_without_an_upstream(
    a_gateway_process: Callable[..., Any],
) -> None:
    from conftest import free_port

    port = free_port()
    process = a_gateway_process("--port", "0", "--decision-port", str(port))
    status, headers, _ = _get(
        f"http://127.0.0.1:{port}/", {"X-Original-Method": "GET", "X-Original-URI": GRANTED}
    )
    assert (status, headers["X-Gateway-Reason"]) == (200, "no_token")
    assert process.events("listening")[0]["proxy"] == []
    assert process.stop() == 0


def test_every_worker_runs_a_decision_listener_on_the_shared_port(
    a_gateway_process: Callable[..., Any],
) -> None:
    from conftest import free_port

    port = free_port()
    process = a_gateway_process(
        "--upstream", "http://127.0.0.1:9", "--workers", "2", "--decision-port", str(port)
    )
    for _ in range(20):  # SO_REUSEPORT spreads connections over both workers
        status, headers, _ = _get(
            f"http://127.0.0.1:{port}/", {"X-Original-Method": "GET", "X-Original-URI": GRANTED}
        )
        assert (status, headers["X-Gateway-Reason"]) == (200, "no_token")
    pids = {line["pid"] for line in process.wait_for_event("request", 20)}
    assert len(pids) == 2, pids
    assert process.stop() == 0


def test_a_reload_reaches_the_decision_listener(
    a_gateway_process: Callable[..., Any], tmp_path: Any
) -> None:
    import signal

    from conftest import free_port
    from job_grants import GRANTS_YAML

    grants = tmp_path / "grants.yaml"
    grants.write_text(GRANTS_YAML)
    port = free_port()
    process = a_gateway_process(
        "--port", "0", "--decision-port", str(port), "--store", f"file://{grants}"
    )
    ask = {"X-Original-Method": "GET", "X-Original-URI": GRANTED, "JOB-TOKEN": APP}
    status, headers, _ = _get(f"http://127.0.0.1:{port}/", ask)
    assert (status, headers["X-Gateway-Reason"]) == (200, "policies_granted")
    grants.write_text(GRANTS_YAML.replace("token: glcbt-app-job,", "token: glcbt-app-gone,"))
    process.signal(signal.SIGHUP)
    process.wait_for_event("reloaded")
    status, headers, _ = _get(f"http://127.0.0.1:{port}/", ask)
    assert (status, headers["X-Gateway-Reason"]) == (401, "token_invalid")


async def test_a_store_that_cannot_answer_fails_closed(a_listener: Callable[..., Any]) -> None:
    from job_grants import the_grants

    from gateway.errors import StoreUnavailable
    from gateway.stores.grants import Job
    from gateway.stores.memory import MemoryStore

    class DownStore(MemoryStore):
        async def job(self, digest: str) -> Job | None:
            raise StoreUnavailable("down for the test")

    ask = await a_listener(store_obj=DownStore(the_grants()))
    answer = await ask(**nginx("GET", GRANTED), JOB_TOKEN=APP)
    # 503 stays a 5xx: nginx turns it into a 500, Envoy and Traefik pass it on: never an allow.
    assert (answer.status, answer.reason) == (503, "store_unavailable")


async def test_the_log_line_names_the_client_behind_the_asking_proxy(
    a_listener: Callable[..., Any], captured_logs: Any
) -> None:
    ask = await a_listener()
    await ask(**nginx("GET", GRANTED), JOB_TOKEN=APP, X_Forwarded_For="203.0.113.9, 127.0.0.1")
    await ask(**nginx("GET", GRANTED), JOB_TOKEN=APP)
    with_client, without = captured_logs.events("request")[-2:]
    assert (with_client["remote"], with_client["peer"]) == ("203.0.113.9", "127.0.0.1")
    assert with_client["protocol"] == "nginx"
    assert without["remote"] == "127.0.0.1"
    assert "peer" not in without


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_decision_port_in_use_is_a_one_line_start_up_error(workers: str, tmp_path: Any) -> None:
    import os
    import socket
    import subprocess
    import sys

    from conftest import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "gateway", "serve", "--upstream", "http://127.0.0.1:9"]
        command += ["--port", str(free_port()), "--admin-port", str(free_port())]
        command += ["--decision-port", str(port), "--workers", workers, "--store", "memory://"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
        )
    assert done.returncode == 2, done.stderr
    assert f"--decision-port / GATEWAY_DECISION_PORT: cannot listen on 127.0.0.1:{port}" in (
        done.stderr
    )
