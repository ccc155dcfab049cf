"""gateway.wire, the lean HTTP/1.1 machinery, over real loopback sockets: keep-alive,
pipelining in order, strict parsing, limits, timeouts, the connection limit, drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.wire import Limits, Request, Response, WireServer


class Echo:
    """Answers `<method> <target>` synchronously; targets under /slow/ wait for `release`."""

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.release = asyncio.Event()

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        self.seen.append(request)
        body = f"{request.method} {request.target}".encode()
        if request.target.startswith("/slow/"):
            return self._later(body)
        if request.target == "/boom":
            raise RuntimeError("handler fault")
        if request.target == "/split":
            return Response(200, [("X-Bad", "a\r\nInjected: yes")])
        return Response(200, [("X-Echo", "1")], body)

    async def _later(self, body: bytes) -> Response:
        await self.release.wait()
        return Response(200, [], body)

    def error(self, status: int, detail: str) -> Response:
        return Response(status, [("X-Error", detail)], detail.encode(), close=True)


Started = Callable[..., Awaitable[tuple[WireServer, Echo]]]


@pytest.fixture
async def a_server() -> AsyncIterator[Started]:
    servers: list[WireServer] = []

    async def start(**limits: Any) -> tuple[WireServer, Echo]:
        handler = Echo()
        server = WireServer(handler, Limits(**limits))
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server, handler

    yield start
    for server in servers:
        await server.stop(1)


async def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if until_close:
            return await asyncio.wait_for(reader.read(), 5)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of Content-Length-framed responses."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers["Content-Length"])
        found.append((status, headers, rest[:length]))
        raw = rest[length:]
    return found


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(a_server: Started) -> None:
    server, _handler = await a_server()
    requests = (
        b"".join(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(12))
        + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answers = responses(await exchange(server.port, requests))
    assert [body for _, _, body in answers] == [f"GET /{i}".encode() for i in range(12)] + [
        b"GET /last"
    ]
    assert answers[-1][1]["Connection"] == "close"
    assert "Connection" not in answers[0][1]


async def test_an_awaited_answer_keeps_later_pipelined_answers_behind_it(a_server: Started) -> None:
    server, handler = await a_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow/1 HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\nConnection: close\r\n\r\n")
    await asyncio.sleep(0.2)
    assert [r.target for r in handler.seen] == ["/slow/1"]  # /fast waits its turn
    handler.release.set()
    answers = responses(await asyncio.wait_for(reader.read(), 5))
    writer.close()
    assert [body for _, _, body in answers] == [b"GET /slow/1", b"GET /fast"]


async def test_request_fields(a_server: Started) -> None:
    server, handler = await a_server(max_body=100)
    await exchange(
        server.port,
        b"PUT /a%2Fb?x=1 HTTP/1.1\r\nJOB-TOKEN: t\r\nJob-Token: u\r\nContent-Length: 3\r\n"
        b"Connection: close\r\n\r\nabc",
    )
    (seen,) = handler.seen
    assert (seen.method, seen.target, seen.version, seen.body) == (
        "PUT",
        "/a%2Fb?x=1",
        "1.1",
        b"abc",
    )
    assert seen.headers.getall("job-token") == ["t", "u"]
    assert seen.peer == "127.0.0.1"


async def test_chunked_body_within_the_limit(a_server: Started) -> None:
    server, handler = await a_server(max_body=100)
    raw = await exchange(
        server.port,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    assert responses(raw)[0][0] == 200
    assert handler.seen[0].body == b"abcde"


async def test_head_answers_carry_no_body(a_server: Started) -> None:
    server, _ = await a_server()
    raw = await exchange(server.port, b"HEAD /h HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert raw.endswith(b"\r\n\r\n")
    assert b"Content-Length: 7\r\n" in raw


async def test_http10_keep_alive_is_said(a_server: Started) -> None:
    server, _ = await a_server()
    raw = await exchange(
        server.port, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", until_close=False
    )
    assert b"Connection: keep-alive\r\n" in raw
    raw = await exchange(server.port, b"GET /a HTTP/1.0\r\n\r\n")
    assert b"Connection: close\r\n" in raw


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\nHost: x\n\n", 400),  # bare LF
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),  # space before the colon
        (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400),  # obs-fold
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", 400),
        (b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", 400),
        (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX: " + b"v" * 300 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X: v\r\n" * 9 + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),
    ],
)
async def test_refusals_answer_and_close(
    a_server: Started, request_bytes: bytes, status: int
) -> None:
    server, handler = await a_server(
        max_line_size=256, max_field_size=256, max_headers=8, max_body=100
    )
    answers = responses(await exchange(server.port, request_bytes))
    assert [s for s, _, _ in answers] == [status]
    assert answers[0][1]["Connection"] == "close"
    assert handler.seen == []


async def test_a_handler_fault_is_a_500_and_a_split_header_is_never_sent(a_server: Started) -> None:
    server, _ = await a_server()
    answers = responses(
        await exchange(server.port, b"GET /boom HTTP/1.1\r\nConnection: close\r\n\r\n")
    )
    assert answers[0][0] == 500
    raw = await exchange(server.port, b"GET /split HTTP/1.1\r\n\r\n")
    assert b"Injected" not in raw
    assert responses(raw)[0][0] == 500


async def test_a_silent_head_gets_408_and_an_idle_connection_is_closed(a_server: Started) -> None:
    server, _ = await a_server(header_timeout=0.3, body_timeout=0.3, max_body=100)
    raw = await exchange(server.port, b"GET / HTTP/1.1\r\nHost:")
    assert responses(raw)[0][0] == 408
    raw = await exchange(server.port, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    assert responses(raw)[0][0] == 408
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # idle: closed without an answer
    writer.close()


async def test_connections_over_the_limit_get_503(a_server: Started) -> None:
    server, _ = await a_server(max_connections=2)
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    await asyncio.sleep(0.05)
    raw = await exchange(server.port, b"GET / HTTP/1.1\r\n\r\n")
    assert responses(raw)[0][0] == 503
    for _, writer in held:
        writer.close()


async def test_stop_lets_the_answer_in_progress_finish(a_server: Started) -> None:
    server, handler = await a_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow/x HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.1)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(server.stop(5))
    await asyncio.sleep(0.1)
    assert await asyncio.wait_for(idle_reader.read(), 2) == b""  # idle: closed at once
    handler.release.set()
    answers = responses(await asyncio.wait_for(reader.read(), 5))
    assert answers[0][0] == 200
    assert answers[0][1]["Connection"] == "close"
    await stopping
    writer.close()
    idle_writer.close()


async def test_expect_100_continue_is_answered_before_the_body(a_server: Started) -> None:
    server, handler = await a_server(max_body=100)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"PUT /e HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    assert (
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"abc")
    answers = responses(await asyncio.wait_for(reader.read(), 5))
    writer.close()
    assert [status for status, _, _ in answers] == [200]
    assert handler.seen[0].body == b"abc"


async def test_a_body_over_the_limit_is_refused_before_it_is_read(a_server: Started) -> None:
    server, handler = await a_server(max_body=10)
    raw = await exchange(
        server.port, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n" + b"x" * 32
    )
    assert responses(raw)[0][0] == 413
    assert handler.seen == []
