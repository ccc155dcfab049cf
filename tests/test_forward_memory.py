"""256 MiB each way through a real `python -m gateway serve`: the gateway's memory stays flat.

The data is generated on the fly (no files); the gateway's peak RSS (VmHWM, /proc) after the
transfer is compared with its RSS before it.
"""

from __future__ import annotations

import hashlib

import aiohttp
import pytest
from fixtures.upstream import BLOCK, pattern

SIZE = 256 * 1024 * 1024
GROWTH_LIMIT_KIB = 32 * 1024  # measured: ~3 MiB; far below SIZE, nothing is buffered


def expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for _ in range(size // len(BLOCK)):
        digest.update(BLOCK)
    return digest.hexdigest()


@pytest.mark.slow
async def test_large_bodies_stream_both_ways_in_bounded_memory(an_upstream, a_gateway_process):
    gateway = a_gateway_process("--upstream", an_upstream.url)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        async with client.get(gateway.url + "/warm-up") as warm:
            assert warm.status == 200
        before = gateway.memory_kib("VmRSS")

        headers = {"Content-Length": str(SIZE), "Content-Type": "application/octet-stream"}
        async with client.put(gateway.url + "/upload", data=pattern(SIZE), headers=headers) as up:
            assert up.status == 200
        received = 0
        async with client.get(gateway.url + f"/-up-/bytes?size={SIZE}") as down:
            assert down.headers["Content-Length"] == str(SIZE)
            async for chunk in down.content.iter_any():
                received += len(chunk)

    peak = gateway.memory_kib("VmHWM")
    assert an_upstream.last.body_length == SIZE
    assert an_upstream.last.body_sha256 == expected_sha256(SIZE)
    assert received == SIZE
    assert peak - before < GROWTH_LIMIT_KIB, f"RSS grew from {before} to {peak} KiB"
