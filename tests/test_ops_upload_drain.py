"""SIGTERM while an upload's body is still arriving: within --grace-period the gateway keeps
reading it and streaming it to the upstream, so the upload finishes; one still arriving at the
end of the grace period is cut like any other request (503 `drain_cut`). A real `serve`, a
real upstream and a client that sends its body slowly over a raw socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

from fixtures.upstream import BLOCK

PIECE = 64 * 1024
TARGET = "/api/v4/projects/10/packages/generic/tools/1.0/tool.bin"


async def slow_upload(
    port: int, pieces: int, every: float, started: asyncio.Event
) -> tuple[bytes, int]:
    """PUT `pieces` * PIECE bytes, one piece every `every` s; the answer and the bytes sent
    (fewer when the gateway stops reading or closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    size = pieces * PIECE
    writer.write(
        f"PUT {TARGET} HTTP/1.1\r\nHost: gitlab.example.com\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    sent = 0
    try:
        for index in range(pieces):
            writer.write(BLOCK[:PIECE])
            # A gateway that stopped reading lets the socket buffers fill: drain() then blocks.
            await asyncio.wait_for(writer.drain(), 30)
            sent += PIECE
            if index == 1:
                started.set()
            await asyncio.sleep(every)
        answer = await asyncio.wait_for(reader.read(), 30)
    except (ConnectionError, TimeoutError):
        answer = b""
        with contextlib.suppress(ConnectionError):
            answer = await reader.read()  # the answer, if the reset did not discard it
    finally:
        writer.close()
    return answer, sent


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


async def test_an_upload_arriving_during_the_drain_is_read_to_the_end(
    an_upstream: Any, a_gateway_process: Any
) -> None:
    gateway = a_gateway_process("--upstream", an_upstream.url, "--grace-period", "20")
    pieces, every = 40, 0.05  # 2.5 MiB over about 2 s: far more than the socket buffers hold
    started = asyncio.Event()
    upload = asyncio.create_task(slow_upload(gateway.port, pieces, every, started))
    await asyncio.wait_for(started.wait(), 10)

    gateway.signal(signal.SIGTERM)
    answer, sent = await upload
    assert await asyncio.to_thread(gateway.proc.wait, 30) == 0

    # Before: the gateway stopped reading the body at SIGTERM; the upload stalled and ended
    # as 499 client_disconnected with part of the body received.
    assert sent == pieces * PIECE
    assert status_of(answer) == 200, answer[:300]
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["length"] == pieces * PIECE
    assert an_upstream.last.body_length == pieces * PIECE
    # (`slow_upload` read to EOF: the gateway closed the connection after the answer.)
    (line,) = gateway.events("request")
    assert line["status"] == 200
    assert line["bytes_in"] == pieces * PIECE
    assert "error" not in line or line["error"] is None
    assert not gateway.events("drain_cut")


async def test_an_upload_outlasting_the_grace_period_is_cut_and_logged(
    an_upstream: Any, a_gateway_process: Any
) -> None:
    grace = 2.0
    gateway = a_gateway_process("--upstream", an_upstream.url, "--grace-period", str(grace))
    pieces, every = 200, 0.05  # about 10 s of upload: longer than the grace period
    started = asyncio.Event()
    upload = asyncio.create_task(slow_upload(gateway.port, pieces, every, started))
    await asyncio.wait_for(started.wait(), 10)

    signalled = time.monotonic()
    gateway.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.proc.wait, 30) == 0
    elapsed = time.monotonic() - signalled
    answer, sent = await upload

    assert elapsed < grace * 1.5
    assert sent < pieces * PIECE
    (line,) = gateway.events("request")
    assert line["reason"] == "drain_cut"
    assert line["error"] == "drain_cut"
    assert line["status"] == 503
    # The body kept streaming through the grace period (before: it stopped at SIGTERM).
    assert line["bytes_in"] > (grace - 1.0) / every * PIECE
    # (The client may or may not read the 503: the gateway closes a connection whose body is
    # still arriving, and the reset can discard the answer in the client's buffers.)
    assert not answer or status_of(answer) == 503
    (cut,) = gateway.events("drain_cut")
    assert cut["requests"] == 1
