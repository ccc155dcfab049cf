"""Redaction as a property (issue 16 point 3): for generated requests carrying credentials
anywhere (the query in every spelling and encoding Rack reads as a credential parameter,
credential headers, Authorization schemes, form/JSON/multipart bodies), no line of a real
gateway's log, no metric (labels included) and no answer the gateway makes itself contains a
raw credential value. Needs no Ruby: it runs everywhere.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from fixtures.proxy import call
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security.conftest import exchange, http, parse_answer

from gateway.core import params
from gateway.ops import log

from .generate import POOL, credential_query, requests, secrets, urlencoded
from .test_oracle_e2e import PATHS

DRAWN: list[str] = []  # the secrets drawn for the current example (strategies run before it)


def _recorded(value: str) -> str:
    DRAWN.append(value)
    return value


VALUES = secrets().map(_recorded)


@st.composite
def carrying_requests(
    draw: st.DrawFn,
) -> tuple[str, str, tuple[tuple[str, str], ...], bytes, list[str]]:
    raw = draw(requests(values=VALUES, paths=PATHS))
    query, wire = draw(credential_query(VALUES))
    path = raw.target.partition("?")[0]
    return raw.method, f"{path}?{query}", raw.headers, raw.body, wire


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(case=carrying_requests())
async def test_no_credential_reaches_a_log_line_a_metric_or_an_answer(
    served_gateway, an_upstream, case
):
    drawn = list(DRAWN)
    DRAWN.clear()
    method, target, headers, body, wire = case
    gateway = served_gateway(an_upstream.url)
    raw = await exchange(gateway.port, http(method, target, headers, body), wait=30)
    _, answer_headers, answer = parse_answer(raw)
    log = await _log_after(gateway)
    metrics = (await call("GET", gateway.admin_url + "/metrics")).body.decode()
    gateway_made = answer.decode(errors="replace") if "X-Gateway-Reason" in answer_headers else ""
    for secret in drawn:
        tail = secret[-20:]  # the unique part, whatever the encoding of the prefix
        assert tail not in log, f"{secret} in the log for {case!r}"
        assert tail not in metrics, f"{secret} in /metrics for {case!r}"
        assert tail not in gateway_made, f"{secret} in the answer for {case!r}"
    for value in wire:
        assert value not in log, f"{value!r} in the log for {case!r}"


async def _log_after(gateway) -> str:  # type: ignore[no-untyped-def]
    """The log once every line of the requests sent so far is written: a marker request's line
    comes after theirs (one worker writes its lines in order). Some refusals have no line."""
    marker = f"/oracle-marker-{uuid.uuid4().hex}"
    await exchange(gateway.port, http("GET", marker), wait=30)
    deadline = time.monotonic() + 30  # generous: the machine may be shared
    while time.monotonic() < deadline:
        log = gateway.log_text()
        if marker in log:
            return log
        await asyncio.sleep(0.02)
    raise AssertionError(f"no log line for {marker}")


@settings(max_examples=1000, deadline=None)
@given(query=urlencoded(POOL))
def test_the_log_redacts_every_parameter_the_extractor_reads(query):
    """The function-level form: every pair `extract` reads as a credential (`parse_form` +
    `credential_param`) has its value replaced in the logged target."""
    query = query.replace(" ", "%20")
    logged = log.redact_target("/x?" + query).partition("?")[2]
    for key, value in params.parse_form(logged):
        if params.credential_param(key) is not None:
            assert value in ("", log.REDACTED), (query, logged)
