"""Upstream and client failures: 502/504 with GitLab-shaped JSON before the response starts;
after it started, an aborted connection (never a clean truncated body); a client that leaves
cancels the upstream request."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from fixtures.proxy import call, free_port


async def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    answer = await call("GET", url)
    return answer.status, dict(answer.headers), answer.body


async def test_an_unreachable_upstream_is_a_502(a_gateway, captured_logs):
    gateway = await a_gateway(f"http://127.0.0.1:{free_port()}")

    status, headers, body = await fetch(gateway.url + "/api/v4/projects")

    assert status == 502
    assert body == b'{"message":"502 Bad Gateway"}'
    assert headers["X-Gateway-Reason"] == "upstream_unreachable"
    (line,) = captured_logs.events("request")
    assert line["status"] == 502
    assert "UpstreamUnreachable" in line["error"]


async def test_a_slow_upstream_is_a_504(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url, read_timeout=0.3)

    status, headers, body = await fetch(gateway.url + "/-up-/slow?delay=3")

    assert status == 504
    assert body == b'{"message":"504 Gateway Timeout"}'
    assert headers["X-Gateway-Reason"] == "upstream_timeout"


async def test_an_upstream_speaking_garbage_is_a_502(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.garbage_url)

    status, headers, _ = await fetch(gateway.url + "/x")

    assert status == 502
    assert headers["X-Gateway-Reason"] == "upstream_bad_response"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_cut_by_the_upstream_is_not_passed_off_as_complete(
    an_upstream, a_gateway, captured_logs, framing
):
    gateway = await a_gateway(an_upstream.url)
    query = "?chunked=1" if framing == "chunked" else ""

    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(gateway.url + "/-up-/reset" + query)

    await asyncio.sleep(0.1)
    (line,) = captured_logs.events("request")
    assert line["error"].startswith("upstream_body_failed")
    assert not [entry for entry in captured_logs.lines() if entry["level"] == "error"]


async def test_a_client_that_leaves_cancels_the_upstream_request(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /-up-/hang HTTP/1.1\r\nHost: g\r\n\r\n")
    await asyncio.wait_for(an_upstream.hang_started.wait(), timeout=5)

    writer.close()

    await asyncio.wait_for(an_upstream.hang_cancelled.wait(), timeout=5)


async def test_a_client_gone_mid_download_is_logged_without_a_traceback(
    an_upstream, a_gateway, captured_logs
):
    gateway = await a_gateway(an_upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /-up-/bytes?size=268435456 HTTP/1.1\r\nHost: g\r\n\r\n")
    await reader.readexactly(1_000_000)

    writer.transport.abort()
    for _ in range(100):
        if captured_logs.events("request"):
            break
        await asyncio.sleep(0.05)

    (line,) = captured_logs.events("request")
    assert line["status"] == 499 or line["error"] == "client_disconnected"
    assert line["bytes_out"] < 268435456
    assert not [entry for entry in captured_logs.lines() if entry["level"] == "error"]


async def closed_within(port: int, data: bytes, seconds: float) -> bytes | None:
    """Send `data` and then nothing: the answer if the gateway closed in time, else None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    except ConnectionError:
        return b""
    except TimeoutError:
        return None
    finally:
        writer.close()


async def test_a_client_that_never_finishes_its_head_is_disconnected(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url, client_header_timeout=0.5)

    answer = await closed_within(gateway.port, b"GET /x HTTP/1.1\r\nHost: g\r\n", 3)

    assert answer is not None, "still open after 3 s"
    assert an_upstream.received == []


async def test_a_stalled_upload_is_cut_off_both_ways(an_upstream, a_gateway, captured_logs):
    gateway = await a_gateway(an_upstream.url, client_body_timeout=0.5)
    head = b"PUT /up HTTP/1.1\r\nHost: g\r\nContent-Length: 100000\r\n\r\n"

    answer = await closed_within(gateway.port, head + b"x" * 1000, 3)

    assert answer is not None, "still open after 3 s"
    await asyncio.sleep(0.2)
    assert an_upstream.received == []  # the upstream never got a complete request
    (line,) = captured_logs.events("request")
    assert line["status"] == 408
    assert "client_body_timeout" in line["error"]


async def test_connections_over_max_connections_get_a_503(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url, max_connections=2)
    held = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(2)]
    try:
        answer = await closed_within(gateway.port, b"GET /x HTTP/1.1\r\nHost: g\r\n\r\n", 3)
    finally:
        for _, writer in held:
            writer.close()

    assert answer is not None
    assert answer == b"" or answer.startswith(b"HTTP/1.1 503 ")
    assert b"X-Gateway-Reason: overloaded" in answer or answer == b""
    await asyncio.sleep(0.2)
    assert (await call("GET", gateway.url + "/x")).status == 200  # served again once below


@pytest.mark.parametrize("engine", ["aiohttp", "lean"])
@pytest.mark.parametrize("where", ["outbound", "response"])
async def test_a_fault_of_ours_before_the_answer_started_is_a_500(
    an_upstream, a_gateway, monkeypatch, engine, where
):
    # Building the upstream request (before anything is forwarded) or the relayed response's
    # headers (before anything is sent back) fails: a 500 answer, never a forward or a silent cut.
    from gateway.proxy.headers import HeaderPolicy

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug")

    gateway = await a_gateway(an_upstream.url, engine=engine)
    names = {"outbound": ["outbound", "outbound_from"], "response": ["response"]}[where]
    for name in names:
        monkeypatch.setattr(HeaderPolicy, name, broken)

    status, headers, body = await fetch(gateway.url + "/api/v4/projects")

    assert status == 500, body
    assert headers["X-Gateway-Reason"] == "internal_error"
    if where == "outbound":
        assert an_upstream.received == []
