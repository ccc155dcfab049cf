"""Dot segments in every spelling are refused (400 bad_target) before any lookup, and never
reach the upstream: a reader that resolves them sees another path than the one authorized.

Prior art: CVE-2021-28681 (Envoy path normalization), GHSA-qvp4-rpmr-xwrr (Traefik), Ory
Oathkeeper's and oauth2-proxy's path-matching bypasses: the policy matched the raw path while
the upstream resolved `..`. Here `deployments` (granted) is used to reach `releases` (not).
"""

from __future__ import annotations

import pytest

from .conftest import ALLOWED, APP, DENIED, assert_forwarded, assert_refused

DOTS = ["..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2E.", "%252e%252e", "%25252e%25252e", ".%252e"]
SINGLE = [".", "%2e", "%2E", "%252e"]


PAYLOADS = [
    *[f"{ALLOWED}/{dots}/releases" for dots in DOTS],  # reads as .../20/releases
    *[f"{ALLOWED}/x/{dots}" for dots in DOTS],  # trailing dot segment
    *[f"/api/v4/projects/20/{one}/releases" for one in SINGLE],  # `.` segments
    f"{ALLOWED}/..;/releases",  # Tomcat/Jetty path parameter
    f"{ALLOWED}/..;x=1/releases",
    f"{ALLOWED}/%2e%2e;/releases",
    f"{ALLOWED}/..%3B/releases",
    f"{ALLOWED}/..%2Freleases",  # dots behind an encoded slash
    f"{ALLOWED}/..%2freleases",
    f"{ALLOWED}%2F..%2F..%2Freleases",
    f"{ALLOWED}%2f%2e%2e%2freleases",
    "/api/v4/projects/10%2F..%2F20/releases",  # own project id, resolved elsewhere
    "/api/v4/projects/acme%2F..%2Fsecret/deployments",
    "/api/v4/projects/acme%252F..%252Fsecret/deployments",
    "/api/v4/projects/../projects/20/releases",
    "/api/v4/../v4/projects/20/releases",
    "/../api/v4/projects/20/releases",
    "/api/v4/projects/20/releases/.",
    "/api/v4/projects/20/releases/..",
    "/api/v4/projects/20/releases/%2e",
    "/api/v4/projects/20/deployments/..%00/releases",
]


@pytest.mark.parametrize("target", PAYLOADS)
async def test_a_dot_segment_is_refused_and_never_forwarded(guarded, target):
    answer = await guarded.attack.send("GET", target, token=APP)

    assert_refused(answer, 400, "bad_target")
    assert answer.message.startswith("400 Bad request - ")


# Nested encodings decode to `%2e` on a first pass and to `.` on a second (the IIS
# double-decoding class, CVE-2001-0333): every escape valid, or an invalid `%2` a lenient
# decoder keeps as is.
NESTED = [
    f"{ALLOWED}/%25%32%65%25%32%65/releases",
    f"{ALLOWED}/%2%65%2%65/releases",
    f"{ALLOWED}/%2%65./releases",
    f"{ALLOWED}/.%2%65/releases",
    f"{ALLOWED}/%%32%65%%32%65/releases",
    f"{ALLOWED}/%25%32%45%25%32%45/releases",
]


@pytest.mark.parametrize("target", NESTED)
async def test_a_nested_encoding_of_a_dot_segment_is_refused(guarded, target):
    answer = await guarded.attack.send("GET", target, token=APP)

    assert_refused(answer, 400, "bad_target")


@pytest.mark.parametrize("target", PAYLOADS[:6] + NESTED)
async def test_dot_segments_are_refused_without_a_token_too(guarded, target):
    # Nothing to authorize, but an upstream resolving `..` could still be walked out of the
    # API prefix (`/api/v4/../../admin`): refused for every request.
    answer = await guarded.attack.send("GET", target)

    assert_refused(answer, 400, "bad_target")


@pytest.mark.parametrize(
    "target",
    [
        f"{ALLOWED}?next=/../releases",  # dots in the query are data, not path
        f"{ALLOWED}?x=%2e%2e%2F..%2Freleases",
        "/api/v4/projects/20/deployments/...",  # three dots is a name
        "/api/v4/projects/20/deployments/.hidden",
        "/api/v4/projects/20/deployments/a..b",
    ],
)
async def test_dots_that_are_not_segments_are_decided_like_any_path(guarded, target):
    answer = await guarded.attack.send("GET", target, token=APP)

    assert_forwarded(answer, target, "GET")


async def test_the_denied_route_stays_denied_when_spelled_plainly(guarded):
    # The control for every payload above: the resolved form is a denial.
    answer = await guarded.attack.send("GET", DENIED, token=APP)

    assert_refused(answer, 403, "insufficient_permissions")
