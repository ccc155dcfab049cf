"""A bounded load run on loopback: 500 concurrent keep-alive connections for 15 s against a real
`python -m gateway serve`, mixing allowed and denied requests. Every response must be exactly
the expected one (status counts per kind), the upstream must receive exactly the allowed
requests, and every connection must finish: no unexpected status, no hang, no leak of a denial.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

import aiohttp
import pytest
from yarl import URL

from .conftest import ALLOWED, APP, DENIED, OUTSIDER, UNKNOWN

CONNECTIONS = 500
SECONDS = 15.0

# kind -> (target, headers, the status every such request must get)
KINDS: dict[str, tuple[str, dict[str, str], int]] = {
    "allowed": (ALLOWED, {"JOB-TOKEN": APP}, 200),
    "denied": (DENIED, {"JOB-TOKEN": APP}, 403),
    "no_token": ("/-/anonymous", {}, 200),
    "bad_target": (ALLOWED + "/%2e%2e/releases", {"JOB-TOKEN": APP}, 400),
    "unknown_token": (ALLOWED, {"JOB-TOKEN": UNKNOWN}, 401),
    "conflict": (ALLOWED + f"?job_token={OUTSIDER}", {"JOB-TOKEN": APP}, 400),
}
FORWARDED_KINDS = ("allowed", "no_token")


@pytest.mark.slow
async def test_mixed_load_gets_exactly_the_expected_statuses(an_upstream, a_served_gateway):
    gateway = a_served_gateway(an_upstream.url, "--log-level", "warning")
    sent: Counter[str] = Counter()
    got: Counter[tuple[str, int]] = Counter()
    errors: Counter[str] = Counter()
    before = len(an_upstream.received)
    deadline = time.monotonic() + SECONDS

    async def worker(session: aiohttp.ClientSession, offset: int) -> None:
        kinds = itertools.islice(itertools.cycle(KINDS), offset % len(KINDS), None)
        for kind in kinds:
            if time.monotonic() >= deadline:
                return
            target, headers, _ = KINDS[kind]
            url = URL(gateway.url + target, encoded=True)
            sent[kind] += 1
            try:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    got[(kind, response.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[f"{kind}: {type(exc).__name__}"] += 1

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        workers = [worker(session, index) for index in range(CONNECTIONS)]
        await asyncio.wait_for(asyncio.gather(*workers), SECONDS + 45)  # nothing hangs

    assert errors == Counter(), f"client errors: {errors}"
    expected = Counter({(kind, KINDS[kind][2]): count for kind, count in sent.items()})
    assert got == expected
    received = an_upstream.received[before:]
    assert len(received) == sum(sent[kind] for kind in FORWARDED_KINDS)
    assert {r.raw_path for r in received} == {ALLOWED, "/-/anonymous"}
    assert sum(sent.values()) >= 2 * CONNECTIONS, f"the load was too small to mean much: {sent}"
