"""Bodies: streamed untouched both ways, bounded, inspected only when the gate asks, and never
sent (nor a `100 Continue`) before the decision."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest
from fixtures.proxy import ScriptedGate, call
from fixtures.upstream import GZIP_PAYLOAD
from test_forward_target import raw_request

from gateway.core.decision import Decision, Reason


def deny(view):
    return Decision(allowed=False, reason=Reason.INSUFFICIENT_PERMISSIONS, message="403 Forbidden")


async def test_a_gzip_upload_reaches_the_upstream_still_compressed(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    answer = await call("PUT", gateway.url + "/up", data=GZIP_PAYLOAD, headers=headers)

    assert answer.status == 200

    seen = an_upstream.last
    assert seen.body_sha256 == hashlib.sha256(GZIP_PAYLOAD).hexdigest()
    assert seen.header("Content-Encoding") == ["gzip"]
    assert seen.header("Content-Length") == [str(len(GZIP_PAYLOAD))]


async def test_a_gzip_download_reaches_the_client_still_compressed(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)
    answer = await call("GET", gateway.url + "/-up-/gzip", decompress=False)

    assert answer.body == GZIP_PAYLOAD
    assert answer.headers["Content-Encoding"] == "gzip"
    assert answer.headers["Content-Length"] == str(len(GZIP_PAYLOAD))


async def test_a_chunked_upload_is_streamed_chunked(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)

    async def chunks():
        for _ in range(8):
            yield b"x" * 10_000
            await asyncio.sleep(0)

    answer = await call("POST", gateway.url + "/up", data=chunks())

    assert answer.status == 200
    assert an_upstream.last.body_length == 80_000
    assert an_upstream.last.header("Transfer-Encoding") == ["chunked"]


async def test_a_declared_body_over_max_body_size_is_refused_before_forwarding(
    an_upstream, a_gateway
):
    gateway = await a_gateway(an_upstream.url, max_body_size=1000)
    answer = await call("PUT", gateway.url + "/up", data=b"x" * 1001)

    assert answer.status == 413
    assert answer.headers["X-Gateway-Reason"] == "body_too_large"
    assert an_upstream.received == []


async def test_a_chunked_body_over_max_body_size_is_cut_off(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url, max_body_size=50_000)

    async def chunks():
        for _ in range(10):
            yield b"x" * 10_000

    try:
        answer = await call("POST", gateway.url + "/up", data=chunks())
    except aiohttp.ClientError:
        pass  # the connection was cut while the client was still sending
    else:
        assert answer.status == 413
        assert answer.headers["X-Gateway-Reason"] == "body_too_large"
    await asyncio.sleep(0.2)
    assert all(seen.body_length < 100_000 for seen in an_upstream.received)


async def test_an_inspected_body_is_authorized_and_forwarded_from_the_same_buffer(
    an_upstream, a_gateway
):
    gate = ScriptedGate(wants_body=True)
    gateway = await a_gateway(an_upstream.url, gate=gate)
    form = b"name=x&job_token=secret-in-body"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = await call("POST", gateway.url + "/form", data=form, headers=headers)

    assert answer.status == 200
    assert gate.seen[0].body == form
    assert an_upstream.last.body_sha256 == hashlib.sha256(form).hexdigest()


async def test_a_body_too_large_to_inspect_is_refused(an_upstream, a_gateway):
    gate = ScriptedGate(wants_body=True)
    gateway = await a_gateway(an_upstream.url, gate=gate, body_inspect_limit=100)

    async def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(5):
            yield b"a=" + b"b" * 48

    answer = await call("POST", gateway.url + "/form", data=chunks())

    assert answer.status == 413
    assert answer.headers["X-Gateway-Reason"] == "body_not_inspectable"
    assert gate.seen == []
    assert an_upstream.received == []


async def test_a_denied_expect_100_continue_gets_the_status_first(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url, gate=ScriptedGate(decide=deny))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"PUT /big HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )

    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    rest = await asyncio.wait_for(reader.read(), timeout=5)  # the gateway closes after refusing
    writer.close()

    assert status_line.startswith(b"HTTP/1.1 403 ")
    assert b"100 Continue" not in rest
    assert b"X-Gateway-Reason: insufficient_permissions" in rest
    assert an_upstream.received == []


async def test_an_allowed_expect_100_continue_continues_and_is_not_forwarded(
    an_upstream, a_gateway
):
    gateway = await a_gateway(an_upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"PUT /big HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n"
    )

    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    writer.write(b"hello")
    final = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 ")
    assert an_upstream.last.body_sha256 == hashlib.sha256(b"hello").hexdigest()
    assert an_upstream.last.header("Expect") == []


async def test_expect_with_a_body_to_inspect_continues_then_decides_on_the_body(
    an_upstream, a_gateway
):
    gate = ScriptedGate(wants_body=True)
    gateway = await a_gateway(an_upstream.url, gate=gate)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /form HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n"
    )

    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    writer.write(b"a=1")
    final = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 ")
    assert [view.body for view in gate.seen] == [b"a=1"]  # decided once, on the body


async def test_upgrade_requests_are_refused(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)
    head = (
        "GET /-/cable HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )

    answer = await raw_request(gateway.port, head)

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"X-Gateway-Reason: upgrade_refused" in answer
    assert an_upstream.received == []


async def test_denials_are_answered_in_enforce_mode(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url, gate=ScriptedGate(decide=deny))
    answer = await call("GET", gateway.url + "/api/v4/projects/1")

    assert answer.status == 403
    assert answer.json() == {"message": "403 Forbidden"}
    assert answer.headers["X-Gateway-Reason"] == "insufficient_permissions"
    assert an_upstream.received == []


async def test_dry_run_forwards_denials_and_logs_them(an_upstream, a_gateway, captured_logs):
    gateway = await a_gateway(an_upstream.url, gate=ScriptedGate(decide=deny), mode="dry-run")
    answer = await call("GET", gateway.url + "/api/v4/projects/1")

    assert answer.status == 200
    (line,) = captured_logs.events("request")
    assert line["would_deny"] is True
    assert line["decision"] == "deny"
    assert line["reason"] == "insufficient_permissions"
    assert an_upstream.last.raw_path == "/api/v4/projects/1"


async def test_a_gate_fault_fails_closed(an_upstream, a_gateway, captured_logs):
    def broken(view):
        raise RuntimeError("bug in the gate")

    gateway = await a_gateway(an_upstream.url, gate=ScriptedGate(decide=broken))
    async with aiohttp.ClientSession() as client, client.get(gateway.url + "/x") as answer:
        assert answer.status == 500
        assert answer.headers["X-Gateway-Reason"] == "internal_error"
        assert await answer.json() == {"message": "500 Internal Server Error"}
    assert an_upstream.received == []
    assert captured_logs.events("decision_failed")


async def send_then_leave(port: int, head: bytes, first: bytes) -> None:
    """Start a chunked upload, then disconnect in the middle of it."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + first)
    await asyncio.sleep(0.3)
    writer.transport.abort()
    await asyncio.sleep(0.3)


async def test_an_upload_cut_by_the_client_never_reaches_the_upstream_complete(
    an_upstream, a_gateway, captured_logs
):
    gateway = await a_gateway(an_upstream.url)
    head = b"POST /up HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"

    await send_then_leave(gateway.port, head, b"5\r\nhello\r\n")

    assert an_upstream.received == []  # the upstream saw a cut body, never a complete one
    (line,) = captured_logs.events("request")
    assert line["status"] == 499
    assert not [entry for entry in captured_logs.lines() if entry["level"] == "error"]


async def test_an_upload_cut_under_inspection_is_never_evaluated(an_upstream, a_gateway):
    gate = ScriptedGate(wants_body=True)
    gateway = await a_gateway(an_upstream.url, gate=gate)
    head = b"POST /form HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"

    await send_then_leave(gateway.port, head, b"5\r\na=b&c\r\n")

    assert gate.seen == []
    assert an_upstream.received == []


FRAMINGS = {
    "HTTP/1.0 + chunked": ("POST /up HTTP/1.0\r\nTransfer-Encoding: chunked\r\n", b"400"),
    "gzip, chunked": ("POST /up HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n", b"501"),
}


@pytest.mark.parametrize(("head", "status"), FRAMINGS.values(), ids=FRAMINGS.keys())
async def test_framing_the_gateway_cannot_forward_faithfully_is_refused(
    an_upstream, a_gateway, head, status
):
    gateway = await a_gateway(an_upstream.url)

    answer = await raw_request(gateway.port, f"{head}Host: g\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n")

    assert answer.split(b" ", 2)[1] == status
    assert b"X-Gateway-Reason: bad_framing" in answer
    assert an_upstream.received == []
