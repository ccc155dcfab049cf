"""The differential oracle end to end: a real gateway (the security suite's: real Gate, memory
store, `require_job_token` on) in front of the real recording upstream. For every generated
request the upstream receives, GitLab's parsers (tests/oracle/gitlab_reader.rb) read no job
token but the one the gateway judged and permitted (APP, the only token allowed on these
routes): the upstream never receives an unjudged token. And GitLab routes it as the method the
gateway authorized.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from security.conftest import APP, http

from .generate import KNOWN, requests
from .reader import Raw, job_tokens

# A route per method that APP may use on project 20 (tests/security/conftest.py grants).
PATHS = {
    "GET": "/api/v4/projects/20/deployments",
    "POST": "/api/v4/projects/20/environments",
    "PUT": "/api/v4/projects/20/environments/1",
    "DELETE": "/api/v4/projects/20/environments/1",
    "PATCH": "/api/v4/projects/20/deployments",
}

pytestmark = pytest.mark.oracle


# APP in a plain carrier too (or not), so that many requests are forwarded.
CARRIERS = (
    lambda raw: raw,
    lambda raw: Raw(raw.method, raw.target, (("JOB-TOKEN", APP), *raw.headers), raw.body),
    lambda raw: Raw(
        raw.method,
        raw.target + ("&" if "?" in raw.target else "?") + f"job_token={APP}",
        raw.headers,
        raw.body,
    ),
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(raw=requests(paths=PATHS, favour=APP), carrier=st.sampled_from(CARRIERS))
async def test_the_upstream_never_receives_a_job_token_the_gateway_did_not_judge(
    a_guarded_gateway, gitlab, raw, carrier
):
    gateway = await _gateway(a_guarded_gateway)
    raw = carrier(raw)
    answer = await gateway.attack.raw(http(raw.method, raw.target, raw.headers, raw.body))
    event(f"{answer.status} {answer.reason}")
    for received in answer.forwarded:
        # The body is forwarded byte for byte (the upstream records its digest): read the sent one.
        assert received.body_sha256 == hashlib.sha256(raw.body).hexdigest(), answer.describe()
        forwarded = Raw(received.method, received.raw_path, tuple(received.headers), raw.body)
        reading = gitlab.read(forwarded)
        found = job_tokens(reading, KNOWN)
        assert set(found) <= {APP.encode()}, f"{raw!r}\n{found}\n{answer.describe()}"
        # ... and GitLab routes it as the method the gateway authorized (Rack::MethodOverride).
        assert reading.rails.method == received.method, f"{raw!r}\n{reading}"


_GATEWAYS: dict[int, object] = {}


async def _gateway(start):  # one gateway per test run (hypothesis calls the test many times)
    key = id(start)
    if key not in _GATEWAYS:
        _GATEWAYS.clear()
        _GATEWAYS[key] = await start(require_job_token=True)
    return _GATEWAYS[key]
