"""The request-target reaches the upstream byte-for-byte, or is refused before anything is sent."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.routing import targets

# Targets a naive proxy changes (reference aiohttp-proxying.md §1.1-1.3): encoded slashes in
# ids and npm scopes, `+` and `%20`, `%25`, `%7E`, invalid escapes, repeated parameters, `//`.
FORWARDED_AS_IS = [
    "/api/v4/projects/group%2Fproject/packages/npm/@scope%2fpkg",
    "/api/v4/projects/group%2Fsub%2Fproject/repository/files/a%2Fb.txt/raw?ref=main",
    "/search?q=a+b&q=c%20d&q=%2F%25&q=%2f",
    "/search?bad=%ZZ&worse=%&tail=%2",
    "/api/v4/projects/1/packages/generic/pkg/1.0/file%20name.bin?x=%7E&y=~",
    "/repeat?a=1&a=2&a=1&b&=&c==",
    "/~user/%7Euser/p%7E",
    "/emoji?e=%F0%9F%98%80&sub=%2B",
    "/semi;param=1/x;y",
    "//evil.example/steal?u=//evil.example/",
]
# Refused by targets.check_target: never forwarded (dot segments, fragments, backslashes, ...).
REFUSED = [
    "/api/v4/projects/1/../2",
    "/api/v4/projects/1/%2e%2e/2",
    "/a/./b",
    "/a%5Cb",
    "/a\\b",
    "http://evil.example/x",
]


async def raw_request(port: int, head: str, body: bytes = b"") -> bytes:
    """Send bytes exactly as written and read the whole answer (Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return answer


def get(target: str) -> str:
    return f"GET {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("target", FORWARDED_AS_IS)
async def test_the_upstream_receives_the_target_byte_for_byte(an_upstream, a_gateway, target):
    assert targets.check_target(target) is None, "the table above lists forwardable targets"
    gateway = await a_gateway(an_upstream.url)

    answer = await raw_request(gateway.port, get(target))

    assert answer.startswith(b"HTTP/1.1 200 ")
    assert an_upstream.last.raw_path == target
    # The host stays the upstream's: a `//host` target is a path there, never a new host.
    assert len(an_upstream.received) == 1


@pytest.mark.parametrize("target", REFUSED)
async def test_malformed_targets_are_refused_and_never_forwarded(an_upstream, a_gateway, target):
    gateway = await a_gateway(an_upstream.url)

    answer = await raw_request(gateway.port, get(target))

    head, _, body = answer.partition(b"\r\n\r\n")
    if targets.check_target(target) is None:
        pytest.fail(f"check_target accepts {target!r}; move it to FORWARDED_AS_IS")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"X-Gateway-Reason: bad_target" in head
    assert json.loads(body)["message"].startswith("400 Bad request - ")
    assert an_upstream.received == []


async def test_asterisk_form_is_refused(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)

    head = "OPTIONS * HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"
    answer = await raw_request(gateway.port, head)

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"X-Gateway-Reason: bad_target" in answer
    assert an_upstream.received == []


async def test_connect_is_refused_never_tunnelled(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)

    answer = await raw_request(gateway.port, get("/api/v4/projects").replace("GET", "CONNECT"))

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"X-Gateway-Reason: bad_target" in answer
    assert an_upstream.received == []


async def test_an_empty_query_is_the_one_target_change(an_upstream, a_gateway):
    # yarl drops a bare trailing `?` (an empty query); no server tells the two apart, and this is
    # the only normalisation the upstream URL goes through.
    gateway = await a_gateway(an_upstream.url)

    await raw_request(gateway.port, get("/trailing/?"))

    assert an_upstream.last.raw_path == "/trailing/"


async def test_a_body_target_pair_is_forwarded_with_its_method(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)
    head = (
        "PATCH /x%2Fy?z=%2F HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
    )

    answer = await raw_request(gateway.port, head, b"abc")

    assert answer.startswith(b"HTTP/1.1 200 ")
    assert (an_upstream.last.method, an_upstream.last.raw_path) == ("PATCH", "/x%2Fy?z=%2F")
    assert an_upstream.last.body_length == 3
