"""Path shapes GitLab normalizes (slash runs, trailing slashes, `.json`) are decided as the route
they normalize to, and forwarded byte-for-byte; shapes GitLab does not route (`;params`, case
variants, fragments, raw controls) never reach the upstream with a job token.

Prior art: Traefik's and Envoy's merge-slashes advisories (policy on `/a//b`, upstream on
`/a/b`), Spring/Tomcat `;` path parameters (`/admin;x=1`), case-insensitive prefix matching.
"""

from __future__ import annotations

import pytest

from .conftest import ALLOWED, APP, DENIED, assert_forwarded, assert_not_forwarded, assert_refused

# Grape::Router.normalize_path squeezes `/` runs and strips trailing `/` (ruby-grape/grape
# lib/grape/router.rb); Grape appends `(.json)` to every route (lib/grape/path.rb).
SAME_AS_ALLOWED = [
    "/api/v4/projects/20/deployments/",
    "/api/v4/projects/20/deployments//",
    "//api/v4/projects/20/deployments",
    "/api/v4//projects//20//deployments",
    "/api//v4/projects/20/deployments///",
    "/api/v4/projects/20/deployments.json",
    "/api/v4/projects/20/deployments?x=/api/v4/projects/20/releases",  # query is not the path
    "/api/v4/projects/20/deployments?job_id=1&ref=../../releases",
]
SAME_AS_DENIED = [
    "/api/v4/projects/20/releases/",
    "//api//v4//projects//20//releases//",
    "/api/v4/projects/20/releases.json",
    "/api/v4/projects/20/releases?x=/api/v4/projects/20/deployments",
    "/api/v4/projects/20/releases?next=" + ALLOWED,
]


@pytest.mark.parametrize("target", SAME_AS_ALLOWED)
async def test_a_normalized_form_of_an_allowed_route_is_forwarded_as_sent(guarded, target):
    answer = await guarded.attack.send("GET", target, token=APP)

    assert_forwarded(answer, target, "GET")


@pytest.mark.parametrize("target", SAME_AS_DENIED)
async def test_a_normalized_form_of_a_denied_route_is_denied(guarded, target):
    answer = await guarded.attack.send("GET", target, token=APP)

    assert_refused(answer, 403, "insufficient_permissions")


NOT_ROUTED = {
    # `;` path parameters: GitLab routes `deployments;x=1` as nothing; Tomcat/Jetty strip them
    "params after a literal": "/api/v4/projects/20/releases;x=1",
    "params after the id": "/api/v4/projects/21;x=1/deployments",
    "empty params": "/api/v4/projects/21;/deployments",
    "params hiding a segment": "/api/v4/projects/21/deployments;/../releases",
    # routes are case-sensitive in GitLab; case-insensitive readers exist (IIS, some CDNs)
    "upper-case prefix": "/API/V4/projects/21/deployments",
    "upper-case api": "/API/v4/projects/21/deployments",
    "upper-case route": "/api/v4/PROJECTS/21/deployments",
    "mixed-case route": "/api/v4/projects/21/Deployments",
    "mixed-case suffix": "/api/v4/projects/21/deployments.JSON",
    "other format suffix": "/api/v4/projects/21/deployments.xml",
    "suffix on the id": "/api/v4/projects/21.json/deployments",
    "api v3": "/api/v3/projects/21/deployments",
    "no version": "/api/projects/21/deployments",
    "api root": "/api/v4",
    "api root slash": "/api/v4/",
    "outside the api": "/projects/21/deployments",
    "prefix lookalike": "/api/v4x/projects/21/deployments",
    "prefix lookalike 2": "/api/v40/projects/21/deployments",
}


@pytest.mark.parametrize("target", NOT_ROUTED.values(), ids=NOT_ROUTED.keys())
async def test_a_shape_gitlab_does_not_route_is_not_forwarded_with_a_job_token(guarded, target):
    # #21 (acme/secret) does not admit APP: any reading that reached a route there would be a
    # 403 too, so a forward here can only mean the job token went through unchecked.
    answer = await guarded.attack.send("GET", target, token=APP)

    assert_not_forwarded(answer)


@pytest.mark.parametrize(
    "target",
    [
        "/api/v4/projects/20/releases#/deployments",
        "/api/v4/projects/20/deployments#",
        "/api/v4/projects/20/deployments?x=1#frag",
    ],
)
async def test_a_fragment_is_refused(guarded, target):
    # aiohttp's client drops `#...` when forwarding (raw_path_qs); the policy must never see a
    # different target than the upstream, so a fragment is refused outright.
    answer = await guarded.attack.send("GET", target, token=APP)

    assert_refused(answer, 400, "bad_target")


@pytest.mark.parametrize(
    "line",
    [
        b"GET /api/v4/projects/20/deployments\r/../releases HTTP/1.1",
        b"GET /api/v4/projects/20/deployments\n/../releases HTTP/1.1",
        b"GET /api/v4/projects/20/deploy\x00ments HTTP/1.1",
        b"GET /api/v4/projects/20/deploy\tments HTTP/1.1",
        b"GET /api/v4/projects/20/deploy ments HTTP/1.1",
        b"GET /api/v4/projects/20/deploy\x7fments HTTP/1.1",
        b"GET /api/v4/projects/20/deployments/caf\xc3\xa9 HTTP/1.1",  # raw UTF-8
        b"GET /api/v4/projects/20/deployments\xef\xbc\x8freleases HTTP/1.1",  # raw fullwidth /
        b"GET /api/v4/projects/20/deployments?x=\r\nJOB-TOKEN: glcbt-sec-outsider-job HTTP/1.1",
    ],
)
async def test_raw_control_and_non_ascii_bytes_in_the_target_are_refused(guarded, line):
    data = line + b"\r\nHost: g\r\nJOB-TOKEN: " + APP.encode() + b"\r\nConnection: close\r\n\r\n"

    answer = await guarded.attack.raw(data)

    # llhttp refuses most of these before the gateway sees them (no X-Gateway-Reason then).
    assert_refused(answer, 400, None)


async def test_a_raw_crlf_in_a_header_value_cannot_add_a_credential(guarded):
    data = (
        b"GET " + DENIED.encode() + b" HTTP/1.1\r\nHost: g\r\n"
        b"X-Note: a\rJOB-TOKEN: glcbt-sec-outsider-job\r\nConnection: close\r\n\r\n"
    )

    answer = await guarded.attack.raw(data)

    assert_refused(answer, 400, None)
