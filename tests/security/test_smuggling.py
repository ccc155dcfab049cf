"""Request smuggling over raw sockets against a real `python -m gateway serve`: every framing
two HTTP parsers could read differently is refused with 400 and nothing is forwarded; what the
upstream receives is re-framed by the gateway, so a body can never become a second request.

The gateway refuses to start without aiohttp's C parser (llhttp); the pure-Python parser is
where CVE-2023-47627, CVE-2024-23829, CVE-2024-52304 and CVE-2025-53643 lived.
"""

from __future__ import annotations

import asyncio

from .conftest import ALLOWED, APP, DENIED, Attack, assert_forwarded

POST = f"POST /api/v4/projects/10/releases HTTP/1.1\r\nHost: g\r\nJOB-TOKEN: {APP}\r\n"
TAIL = "Connection: close\r\n\r\n"
SMUGGLED = f"GET {DENIED} HTTP/1.1\r\nHost: g\r\nJOB-TOKEN: {APP}\r\n\r\n"

# (name, bytes): llhttp must refuse each with 400 before any handler runs.
REFUSED = {
    "CL and TE": POST + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n" + TAIL + "0\r\n\r\n",
    "TE and CL": POST + "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n" + TAIL + "0\r\n\r\n",
    "two CLs": POST + "Content-Length: 5\r\nContent-Length: 50\r\n" + TAIL + "hello",
    "CL list": POST + "Content-Length: 5, 5\r\n" + TAIL + "hello",
    "CL with sign": POST + "Content-Length: +5\r\n" + TAIL + "hello",
    "CL hex": POST + "Content-Length: 0x5\r\n" + TAIL + "hello",
    "CL space inside": POST + "Content-Length: 5 0\r\n" + TAIL + "hello",
    "TE twice": POST
    + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
    + TAIL
    + "0\r\n\r\n",
    "TE xchunked": POST + "Transfer-Encoding: xchunked\r\n" + TAIL + "0\r\n\r\n",
    "TE chunked, identity": POST + "Transfer-Encoding: chunked, identity\r\n" + TAIL + "0\r\n\r\n",
    "TE space before colon": POST + "Transfer-Encoding : chunked\r\n" + TAIL + "0\r\n\r\n",
    "TE vertical tab": POST + "Transfer-Encoding:\x0bchunked\r\n" + TAIL + "0\r\n\r\n",
    "TE obs-fold": POST + "Transfer-Encoding:\r\n chunked\r\n" + TAIL + "0\r\n\r\n",
    "obs-fold": f"GET {ALLOWED} HTTP/1.1\r\nHost: g\r\nX-A: a\r\n b\r\n" + TAIL,
    "obs-fold into a credential": f"GET {DENIED} HTTP/1.1\r\nHost: g\r\nX-A: a\r\n JOB-TOKEN: {APP}\r\n"
    + TAIL,
    "bare LF line ends": f"GET {ALLOWED} HTTP/1.1\nHost: g\nJOB-TOKEN: {APP}\n"
    + "Connection: close\n\n",
    "bare CR in a value": f"GET {ALLOWED} HTTP/1.1\r\nHost: g\r\nX-A: a\rb\r\n" + TAIL,
    "NUL in a value": f"GET {ALLOWED} HTTP/1.1\r\nHost: g\r\nX-A: a\x00b\r\n" + TAIL,
    "two Hosts": f"GET {ALLOWED} HTTP/1.1\r\nHost: g\r\nHost: h\r\n" + TAIL,
    "space in a name": f"GET {ALLOWED} HTTP/1.1\r\nHost: g\r\nJOB TOKEN: {APP}\r\n" + TAIL,
    "chunk size not hex": POST
    + "Transfer-Encoding: chunked\r\n"
    + TAIL
    + "5g\r\nhello\r\n0\r\n\r\n",
    "chunk size negative": POST
    + "Transfer-Encoding: chunked\r\n"
    + TAIL
    + "-5\r\nhello\r\n0\r\n\r\n",
    "chunk size 0x": POST + "Transfer-Encoding: chunked\r\n" + TAIL + "0x5\r\nhello\r\n0\r\n\r\n",
    "chunk size overflow": POST
    + "Transfer-Encoding: chunked\r\n"
    + TAIL
    + "f" * 20
    + "\r\nhello\r\n0\r\n\r\n",
    "chunk size with space": POST
    + "Transfer-Encoding: chunked\r\n"
    + TAIL
    + "5 \r\nhello\r\n0\r\n\r\n",
    "chunk ext with NUL": POST
    + "Transfer-Encoding: chunked\r\n"
    + TAIL
    + "5;a\x00\r\nhello\r\n0\r\n\r\n",
    "chunk ext unterminated quote": POST
    + "Transfer-Encoding: chunked\r\n"
    + TAIL
    + '5;a="b\r\nhello\r\n0\r\n\r\n',
    "chunk ext bare LF": POST + "Transfer-Encoding: chunked\r\n" + TAIL + "5;a\nhello\r\n0\r\n\r\n",
    "chunk bare LF": POST + "Transfer-Encoding: chunked\r\n" + TAIL + "5\nhello\n0\n\n",
    "chunk data too long": POST
    + "Transfer-Encoding: chunked\r\n"
    + TAIL
    + "3\r\nhello\r\n0\r\n\r\n",
    "lower-case method": f"get {ALLOWED} HTTP/1.1\r\nHost: g\r\n" + TAIL,
    "HTTP/2 preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "bad version": f"GET {ALLOWED} HTTP/1.2.3\r\nHost: g\r\n" + TAIL,
}

# Framings llhttp accepts that RFC 9112 says to treat as faulty, or that the gateway cannot
# forward faithfully: the gateway itself must refuse them (400, or 501 for an unknown coding).
GATEWAY_REFUSES = {
    # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 MUST be treated as faulty framing.
    "HTTP/1.0 + chunked": (
        "POST /api/v4/projects/10/releases HTTP/1.0\r\nHost: g\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
    "HTTP/1.0 + chunked + CL": (
        "POST /api/v4/projects/10/releases HTTP/1.0\r\nHost: g\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
    # A coding the gateway strips (the upstream would get `gzip` bytes as a plain body).
    "TE gzip, chunked": POST
    + "Transfer-Encoding: gzip, chunked\r\n"
    + TAIL
    + "5\r\nhello\r\n0\r\n\r\n",
    # HTTP/0.9 has no headers: nothing to judge, nothing a modern upstream expects.
    "HTTP/0.9": f"GET {ALLOWED}\r\n\r\n",
}


async def assert_still_serving(attack: Attack) -> None:
    answer = await attack.send("GET", ALLOWED, token=APP)
    assert_forwarded(answer, ALLOWED)


async def test_ambiguous_framing_is_refused_by_the_parser_and_nothing_forwarded(
    an_upstream, a_served_gateway
):
    gateway = a_served_gateway(an_upstream.url)
    attack = Attack(gateway.port, an_upstream)
    failures = []

    for name, data in REFUSED.items():
        answer = await attack.raw(data.encode("latin-1"), wait=5)
        if answer.status != 400 or answer.forwarded:
            failures.append(f"{name}: {answer.describe()}")

    assert failures == []
    await assert_still_serving(attack)


async def test_framing_llhttp_tolerates_is_refused_by_the_gateway(an_upstream, a_served_gateway):
    gateway = a_served_gateway(an_upstream.url)
    attack = Attack(gateway.port, an_upstream)
    failures = []

    for name, data in GATEWAY_REFUSES.items():
        answer = await attack.raw(data.encode(), wait=5)
        if answer.status not in (400, 501) or answer.forwarded:
            failures.append(f"{name}: {answer.describe()}")

    assert failures == []
    await assert_still_serving(attack)


async def test_a_body_never_becomes_a_second_request_upstream(an_upstream, a_served_gateway):
    gateway = a_served_gateway(an_upstream.url)
    attack = Attack(gateway.port, an_upstream)
    # CL.TE / TE.CL payloads: the "smuggled" request is body bytes to the gateway and arrives
    # upstream as body bytes of one request, re-framed with the gateway's own Content-Length.
    body = ("0\r\n\r\n" + SMUGGLED).encode()
    head = POST + f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n" + TAIL

    answer = await attack.raw(head.encode() + body)

    received = assert_forwarded(answer, "/api/v4/projects/10/releases", "POST")
    assert received.body_length == len(body)
    assert received.header("Content-Length") == [str(len(body))]
    assert received.header("Transfer-Encoding") == []


async def test_pipelined_requests_are_each_judged(an_upstream, a_served_gateway):
    gateway = a_served_gateway(an_upstream.url)
    attack = Attack(gateway.port, an_upstream)
    first = f"GET {ALLOWED} HTTP/1.1\r\nHost: g\r\nJOB-TOKEN: {APP}\r\n\r\n"
    second = f"GET {DENIED} HTTP/1.1\r\nHost: g\r\nJOB-TOKEN: {APP}\r\n" + TAIL

    answer = await attack.raw((first + second).encode())

    assert [r.raw_path for r in answer.forwarded] == [ALLOWED]
    assert answer.raw.count(b"HTTP/1.1 200 ") == 1
    assert answer.raw.count(b"HTTP/1.1 403 ") == 1
    assert b"X-Gateway-Reason: insufficient_permissions" in answer.raw


async def test_a_request_split_across_many_tcp_segments_is_judged_whole(
    an_upstream, a_served_gateway
):
    gateway = a_served_gateway(an_upstream.url)
    data = f"GET {DENIED} HTTP/1.1\r\nHost: g\r\nJOB-TOKEN: {APP}\r\n{TAIL}".encode()
    before = len(an_upstream.received)

    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    for index in range(len(data)):
        writer.write(data[index : index + 1])
        await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()

    assert answer.startswith(b"HTTP/1.1 403 ")
    assert an_upstream.received[before:] == []
