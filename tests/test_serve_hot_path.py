"""The hot path of `python -m gateway serve` (issue 6): the proxy listener's server calls the
handler directly (no router), request lines are written once per loop iteration and all of them
by the time the process stops, small upstream answers go out whole, large ones still stream."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from fixtures.proxy import REPO, call

GRANTS = REPO / "policies" / "grants.example.yaml"
OWN_UPLOAD = "/api/v4/projects/acme%2Fapp/packages/generic/tool/1.0/tool.bin"
APP_TOKEN = "glcbt-demo-app-job"  # acme/app's job in policies/grants.example.yaml


@pytest.fixture
def a_served_gateway(an_upstream, a_gateway_process):
    return a_gateway_process("--upstream", an_upstream.url, "--store", f"file://{GRANTS}")


async def exchange(port: int, head: str, body: bytes | None = None) -> bytes:
    """Send `head`; if the first answer is `100 Continue`, send `body`; return all answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        if first.startswith(b"HTTP/1.1 100") and body is not None:
            writer.write(body)
        rest = await asyncio.wait_for(reader.read(65536), timeout=5)
        return first + rest
    finally:
        writer.close()


def upload_head(token: str, length: int) -> str:
    return (
        f"PUT {OWN_UPLOAD} HTTP/1.1\r\nHost: g\r\nJOB-TOKEN: {token}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )


async def test_expect_is_answered_after_the_decision_on_the_serve_path(
    a_served_gateway, an_upstream
):
    body = b"x" * 5000

    refused = await exchange(a_served_gateway.port, upload_head("glcbt-unknown-job", 5000), body)
    allowed = await exchange(a_served_gateway.port, upload_head(APP_TOKEN, 5000), body)

    assert refused.startswith(b"HTTP/1.1 401"), refused[:200]  # never a 100 Continue first
    assert b"X-Gateway-Reason: token_invalid" in refused
    assert allowed.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), allowed[:200]
    (received,) = [r for r in an_upstream.received if r.raw_path == OWN_UPLOAD]
    assert received.body_sha256 == hashlib.sha256(body).hexdigest()


async def test_targets_no_route_could_hold_get_the_gateways_refusal(a_served_gateway):
    port = a_served_gateway.port

    answers = [
        await exchange(port, "OPTIONS * HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"),
        await exchange(port, "GET http://other.example/x HTTP/1.1\r\nHost: g\r\n\r\n"),
    ]

    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"X-Gateway-Reason: bad_target" in answer


async def test_every_request_has_its_line_when_the_gateway_stops(a_served_gateway, an_upstream):
    url = a_served_gateway.url + "/api/v4/job"

    answers = await asyncio.gather(
        *(call("GET", url, headers={"JOB-TOKEN": APP_TOKEN}) for _ in range(40))
    )
    assert a_served_gateway.stop() == 0

    assert {answer.status for answer in answers} == {200}
    lines = a_served_gateway.events("request")
    logged = {line["request_id"] for line in lines}
    sent = {r.header("X-Request-Id")[0] for r in an_upstream.received}
    assert len(lines) == len(logged) == 40  # one line per request, ids unique
    assert logged == sent
    assert all(len(request_id) == 16 for request_id in logged)


@pytest.mark.parametrize("size", [1, 65536, 65537, 3 * 1024 * 1024])
async def test_answers_small_and_large_arrive_whole(a_served_gateway, size):
    answer = await call("GET", f"{a_served_gateway.url}/-up-/bytes?size={size}")

    assert answer.status == 200
    assert len(answer.body) == size
    assert answer.headers["Content-Length"] == str(size)
    (line,) = [e for e in a_served_gateway.wait_for_event("request") if "bytes" in e["path"]]
    assert line["bytes_out"] == size
