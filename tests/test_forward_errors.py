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
    assert body == b'{"message": "502 Bad Gateway"}'
    assert headers["X-Gateway-Reason"] == "upstream_unreachable"
    (line,) = captured_logs.events("request")
    assert line["status"] == 502
    assert "UpstreamUnreachable" in line["error"]


async def test_a_slow_upstream_is_a_504(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url, read_timeout=0.3)

    status, headers, body = await fetch(gateway.url + "/-up-/slow?delay=3")

    assert status == 504
    assert body == b'{"message": "504 Gateway Timeout"}'
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
