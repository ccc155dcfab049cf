"""Issue 17 points 1-2 against a real `serve`: over --max-connections a GitLab-shaped 503, no
traceback, counted; SIGTERM ends within --grace-period, the cut request answered 503 and logged
`drain_cut` (not a client disconnect)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

from fixtures.proxy import call
from prometheus_client.parser import text_string_to_metric_families


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


async def test_over_max_connections_is_a_gitlab_503_without_traceback(
    an_upstream, a_gateway_process
):
    gateway = a_gateway_process("--upstream", an_upstream.url, "--max-connections", "1")
    holder = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", gateway.port))
    try:
        await asyncio.sleep(0.2)  # the held connection is accepted first
        request = b"GET /api/v4/projects/1 HTTP/1.1\r\nHost: x\r\n\r\n"
        answers = [await asyncio.to_thread(raw_request, gateway.port, request) for _ in range(3)]
    finally:
        holder.close()

    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"X-Gateway-Reason: overloaded" in head
        assert b"Connection: close" in head
        assert json.loads(body) == {"message": "503 Service Unavailable"}
    metrics = (await call("GET", gateway.admin_url + "/metrics")).body.decode()
    assert metric(metrics, "gateway_connections_refused_total") == 3
    log = gateway.log_text()
    assert "Traceback" not in log
    assert "AssertionError" not in log
    (refused,) = gateway.events("connections_refused")  # rate-limited: one line, not three
    assert refused["level"] == "warning"


async def test_sigterm_ends_within_the_grace_period_and_logs_the_cut(
    an_upstream, a_gateway_process
):
    grace = 2.0
    gateway = a_gateway_process("--upstream", an_upstream.url, "--grace-period", str(grace))
    stuck = asyncio.create_task(call("GET", gateway.url + "/-up-/hang"))
    await asyncio.wait_for(an_upstream.hang_started.wait(), 10)

    signalled = time.monotonic()
    gateway.signal(signal.SIGTERM)
    answer = await stuck
    code = await asyncio.to_thread(gateway.proc.wait, 20)
    elapsed = time.monotonic() - signalled

    assert code == 0
    # Before: up to twice the grace period (aiohttp waits, cancels, then waits again).
    assert elapsed < grace * 1.5
    assert answer.status == 503
    assert answer.json() == {"message": "503 Service Unavailable"}
    assert answer.headers["X-Gateway-Reason"] == "drain_cut"
    (line,) = gateway.events("request")
    assert line["reason"] == "drain_cut"
    assert line["status"] == 503
    assert line["error"] == "drain_cut"
    (cut,) = gateway.events("drain_cut")
    assert cut["requests"] == 1
    events = [e["event"] for e in gateway.logs()]
    assert events.index("draining") < events.index("drained") < events.index("stopped")


async def test_a_request_finishing_inside_the_grace_period_is_not_cut(
    an_upstream, a_gateway_process
):
    gateway = a_gateway_process("--upstream", an_upstream.url, "--grace-period", "5")
    in_flight = asyncio.create_task(call("GET", gateway.url + "/-up-/slow?delay=1"))
    await asyncio.sleep(0.4)
    gateway.signal(signal.SIGTERM)

    answer = await in_flight
    assert answer.status == 200
    assert await asyncio.to_thread(gateway.proc.wait, 15) == 0
    assert not gateway.events("drain_cut")


async def test_a_response_still_streaming_at_the_end_of_the_drain_is_cut_and_logged(
    an_upstream, a_gateway_process
):
    gateway = a_gateway_process("--upstream", an_upstream.url, "--grace-period", "2")
    size = 1 << 30  # far more than the socket buffers hold: the stalled client blocks it
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(f"GET /-up-/bytes?size={size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")  # then never read again
    assert head.startswith(b"HTTP/1.1 200")

    gateway.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.proc.wait, 20) == 0
    writer.close()

    (line,) = gateway.events("request")
    assert line["reason"] == "drain_cut"
    assert line["status"] == 200  # what the client had been sent
    assert line["error"] == "drain_cut"
    assert 0 < line["bytes_out"] < size
