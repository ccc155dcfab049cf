"""Resource limits: oversized heads, slow clients, too many connections and bodies too large to
inspect are refused (or cut) without a forward, and never leave a connection hanging.

Settings under test (gateway/settings.py): max_line_size, max_field_size, max_headers,
body_inspect_limit, max_body_size, client_header_timeout, client_body_timeout, max_connections.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import ALLOWED, APP, DENIED, Attack, assert_forwarded, assert_refused, http

FORM = ("Content-Type", "application/x-www-form-urlencoded")
UPLOAD = "/api/v4/projects/20/packages/generic/pkg/1.0/file.bin"  # admin_packages: granted


async def test_an_oversized_header_is_refused_before_any_decision(guarded):
    answer = await guarded.attack.send("GET", ALLOWED, [("X-Big", "a" * 9000)], token=APP)

    assert_refused(answer, 400, None)


async def test_the_header_size_limit_is_a_setting(a_guarded_gateway):
    guarded = await a_guarded_gateway(max_field_size=1024)

    small = await guarded.attack.send("GET", ALLOWED, [("X-Big", "a" * 500)], token=APP)
    large = await guarded.attack.send("GET", ALLOWED, [("X-Big", "a" * 2000)], token=APP)

    assert_forwarded(small, ALLOWED)
    assert_refused(large, 400, None)


async def test_too_many_headers_are_refused(guarded):
    many = [(f"X-H{i}", "v") for i in range(200)]

    answer = await guarded.attack.send("GET", ALLOWED, many, token=APP)

    assert_refused(answer, 400, None)


async def test_an_oversized_request_line_is_refused(guarded):
    answer = await guarded.attack.send("GET", ALLOWED + "?q=" + "a" * 9000, token=APP)

    assert_refused(answer, 400, None)


async def test_a_long_token_header_is_refused_not_looked_up(guarded):
    # GitLab rejects job tokens over 8192 bytes (MAX_JOB_TOKEN_SIZE_BYTES) before any lookup.
    answer = await guarded.attack.send("GET", DENIED, [("JOB-TOKEN", "glcbt-" + "a" * 8180)])

    assert answer.status in (400, 401), answer.describe()
    assert answer.forwarded == []


async def test_a_form_body_over_the_inspection_limit_is_refused(a_guarded_gateway):
    guarded = await a_guarded_gateway(body_inspect_limit=1024)
    body = b"a=" + b"x" * 2000 + f"&job_token={APP}".encode()

    answer = await guarded.attack.send("POST", DENIED, [FORM], body)

    assert_refused(answer, 413, "body_not_inspectable")


async def test_a_chunked_form_body_over_the_inspection_limit_is_refused(a_guarded_gateway):
    guarded = await a_guarded_gateway(body_inspect_limit=1024)
    body = b"a=" + b"x" * 2000 + f"&job_token={APP}".encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 500]), body[i : i + 500])
        for i in range(0, len(body), 500)
    )
    headers = [FORM, ("Transfer-Encoding", "chunked")]

    answer = await guarded.attack.send("POST", DENIED, headers, chunks + b"0\r\n\r\n", length=False)

    assert_refused(answer, 413, "body_not_inspectable")


async def test_a_body_over_max_body_size_is_refused_before_it_is_read(a_guarded_gateway):
    guarded = await a_guarded_gateway(max_body_size=1000)
    headers = [("Content-Type", "application/octet-stream")]

    answer = await guarded.attack.send("PUT", UPLOAD, headers, b"x" * 5000, token=APP)

    assert_refused(answer, 413, "body_too_large")


# ---- slow clients


async def closed_within(port: int, data: bytes, seconds: float) -> tuple[bool, bytes]:
    """Send `data`, then nothing: did the server close (or answer and close) in time?"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), seconds)
        return True, answer
    except ConnectionError:  # reset: closed, with whatever was unread discarded
        return True, b""
    except TimeoutError:
        return False, b""
    finally:
        writer.close()


async def test_a_client_that_never_finishes_its_headers_is_disconnected(a_guarded_gateway):
    # Slowloris: aiohttp's only guard is its keep-alive timer, 3630 s by default.
    guarded = await a_guarded_gateway(client_header_timeout=1)
    head = f"GET {ALLOWED} HTTP/1.1\r\nHost: g\r\nJOB-TOKEN: {APP}\r\n".encode()
    started = time.monotonic()

    closed, answer = await closed_within(guarded.port, head, 5)

    assert closed, "the connection was still open after 5 s"
    assert time.monotonic() - started < 4
    assert b" 200 " not in answer
    assert guarded.upstream.received == []


async def test_a_client_that_stalls_an_inspected_body_is_disconnected(a_guarded_gateway):
    guarded = await a_guarded_gateway(client_body_timeout=1)
    head = http("POST", DENIED, [FORM, ("Content-Length", "100")], length=False)

    closed, answer = await closed_within(guarded.port, head + b"job_token=glcbt", 5)

    assert closed, "the connection was still open after 5 s"
    assert b" 200 " not in answer
    assert guarded.upstream.received == []


async def test_a_client_that_stalls_a_streamed_body_is_cut_off_upstream_too(a_guarded_gateway):
    guarded = await a_guarded_gateway(client_body_timeout=1)
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", "100000"),
        ("JOB-TOKEN", APP),
    ]
    head = http("PUT", UPLOAD, headers, length=False)

    closed, _ = await closed_within(guarded.port, head + b"x" * 1000, 5)

    assert closed, "the connection was still open after 5 s"
    # The upstream never records a complete request from a truncated upload.
    assert [r for r in guarded.upstream.received if r.body_length != 100000] == []


async def test_connections_over_the_per_worker_limit_are_refused(an_upstream, a_served_gateway):
    gateway = a_served_gateway(an_upstream.url, "--max-connections", "20")
    attack = Attack(gateway.port, an_upstream)
    idle = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(20)]
    try:
        request = http("GET", ALLOWED, [("JOB-TOKEN", APP)])
        closed, answer = await closed_within(gateway.port, request, 3)

        assert closed, "the 21st connection was held open"
        assert b" 200 " not in answer, "the 21st connection was served"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503 ")
    finally:
        for _, writer in idle:
            writer.close()
    await asyncio.sleep(0.3)

    answer = await attack.send("GET", ALLOWED, token=APP)

    assert_forwarded(answer, ALLOWED)


@pytest.mark.parametrize("field", ["client_header_timeout", "client_body_timeout"])
def test_client_timeouts_are_bounded_by_default(field):
    from gateway.settings import Settings

    assert 0 < Settings.model_fields[field].default <= 120
