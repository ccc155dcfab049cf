"""Percent-encodings another reader could decode differently: refused (400) or decided on the
project and route GitLab would route, never a forward of what the policy did not approve.

`%2F` is legal inside a project id (`group%2Fproject`, GitLab's NO_SLASH_URL_PART_REGEX) and
is decided as that project; an encoded slash elsewhere never joins two segments. Prior art:
Envoy CVE-2019-9901 and Traefik's encoded-slash advisories (the proxy decoded `%2F`, the policy
did not), Heimdall's double-decoding, Go's overlong UTF-8 handling.
"""

from __future__ import annotations

import pytest

from .conftest import (
    ALLOWED,
    APP,
    a_sqlite_store,
    assert_forwarded,
    assert_not_forwarded,
    assert_refused,
)

REFUSED = {
    # backslashes: IIS, Windows upstreams and some normalizers read them as `/`
    "backslash": "/api/v4/projects/20/deployments\\..\\releases",
    "encoded backslash": "/api/v4/projects/20/deployments%5C..%5Creleases",
    "encoded backslash, lower": "/api/v4/projects/20/deployments%5c%2e%2e%5creleases",
    "backslash in the id": "/api/v4/projects/acme%5Csecret/deployments",
    # double encoding: a second decoder sees %2F / %2e / %5C
    "double-encoded slash": "/api/v4/projects/20/deployments%252F..%252Freleases",
    "double-encoded dot": "/api/v4/projects/20/deployments/%252e%252e/releases",
    "double-encoded slash in an id": "/api/v4/projects/acme%252Fsecret/deployments",
    "double-encoded percent": "/api/v4/projects/20/deployments%2525",
    # NUL and controls: C strings end there, logs split there
    "encoded NUL": "/api/v4/projects/20/deployments%00",
    "encoded NUL mid-id": "/api/v4/projects/20%00/releases",
    "encoded LF": "/api/v4/projects/20/deployments%0a",
    "encoded CR": "/api/v4/projects/20/deployments%0D",
    "encoded CRLF header injection": "/api/v4/projects/20/deployments%0d%0aJOB-TOKEN:%20x",
    "encoded TAB": "/api/v4/projects/20/deploy%09ments",
    "encoded DEL": "/api/v4/projects/20/deployments%7f",
    # invalid escapes: `%ZZ` and truncated ones decode differently everywhere
    "invalid escape": "/api/v4/projects/20/deployments%ZZ",
    "truncated escape": "/api/v4/projects/20/deployments%2",
    # overlong UTF-8 slash and dot (CVE-2000-0884 style): not UTF-8, refused
    "overlong slash": "/api/v4/projects/20/deployments%C0%AF..%C0%AFreleases",
    "overlong dot": "/api/v4/projects/20/deployments/%C0%AE%C0%AE/releases",
    "lone continuation byte": "/api/v4/projects/20/deployments%80",
    # encoded unreserved characters: Mustermann matches `%61pi` as `api`
    "encoded prefix letter": "/%61pi/v4/projects/20/releases",
    "encoded route letter": "/api/v4/projects/20/%72eleases",
    "encoded id digit": "/api/v4/projects/%32%30/releases",
    "encoded hyphen": "/api/v4/projects/20/packages/npm/%2D/package/x/dist-tags",
    "encoded tilde": "/api/v4/projects/20/packages/%7E",
}


@pytest.mark.parametrize("target", REFUSED.values(), ids=REFUSED.keys())
async def test_an_ambiguous_encoding_is_refused(guarded, target):
    answer = await guarded.attack.send("GET", target, token=APP)

    assert_refused(answer, 400, "bad_target")


# Readings GitLab has for these: a project it cannot find, a route it does not have. Denied
# (or refused), and the upstream sees nothing.
DENIED = {
    "encoded slash joins id and route": "/api/v4/projects/20%2Freleases",
    "encoded slash between routes": "/api/v4/projects/20/deployments%2Freleases",
    "encoded slash in the prefix": "/api%2Fv4%2Fprojects%2F20%2Freleases",
    "encoded slash before the id": "/api/v4/projects%2F20/releases",
    "fullwidth slash": "/api/v4/projects/20/deployments%EF%BC%8Freleases",
    "fullwidth slash in an id": "/api/v4/projects/acme%EF%BC%8Fsecret/deployments",
    "division slash in an id": "/api/v4/projects/acme%E2%88%95secret/deployments",
    "one-dot leader pair": "/api/v4/projects/20/deployments/%E2%80%A4%E2%80%A4/releases",
    "fullwidth full stop pair": "/api/v4/projects/20/deployments/%EF%BC%8E%EF%BC%8E/releases",
    "encoded question mark": "/api/v4/projects/20/releases%3Fx=/deployments",
    "encoded hash": "/api/v4/projects/20/releases%23/deployments",
    "encoded semicolon": "/api/v4/projects/20/releases%3Bx",
}


@pytest.mark.parametrize("target", DENIED.values(), ids=DENIED.keys())
async def test_an_encoding_that_names_another_resource_is_not_forwarded(guarded, target):
    answer = await guarded.attack.send("GET", target, token=APP)

    assert_not_forwarded(answer)


@pytest.mark.parametrize(
    ("target", "canonical"),
    [
        ("/api/v4/projects/acme%2Fplatform%2Ftarget/deployments", ALLOWED),
        ("/api/v4/projects/acme%2fplatform%2ftarget/deployments", ALLOWED),
        ("/api/v4/projects/ACME%2FPlatform%2FTarget/deployments", ALLOWED),  # find_by_full_path
        ("/api/v4/projects/acme%2Fplatform%2Ftarget/releases", "/api/v4/projects/20/releases"),
        ("/api/v4/projects/acme%2Fsecret/deployments", "/api/v4/projects/21/deployments"),
        ("/api/v4/projects/acme%2Fapp/releases", "/api/v4/projects/10/releases"),  # own project
        ("/api/v4/projects/010/releases", "/api/v4/projects/10/releases"),  # find_by(id: "010")
    ],
)
async def test_a_project_path_is_decided_as_the_project_it_names(guarded, target, canonical):
    plain = await guarded.attack.send("GET", canonical, token=APP)
    encoded = await guarded.attack.send("GET", target, token=APP)

    assert (encoded.status, encoded.reason) == (plain.status, plain.reason), encoded.describe()
    if plain.status == 200:
        assert_forwarded(encoded, target)  # the bytes authorized are the bytes sent
    else:
        assert encoded.forwarded == []


@pytest.mark.parametrize(
    "digits",
    [
        "%EF%BC%92%EF%BC%90",  # fullwidth "２０": Ruby's /\A\d+\z/ is ASCII-only: a path, not #20
        "%D9%A2%D9%A0",  # Arabic-Indic "٢٠"
        "%C2%B2%C2%B0",  # superscript two + degree sign
        "%C2%B2",  # superscript two: str.isdigit() but int() fails
    ],
)
async def test_unicode_digits_are_not_a_numeric_project_id(guarded, digits):
    # GitLab reads a non-ASCII id as a full path (find_by_full_path), finds no project and
    # answers 404: the gateway must not resolve it to project #20 (or #10, the job's own), and
    # a client must not be able to make the token store look unavailable with it.
    target = f"/api/v4/projects/{digits}/deployments"

    answer = await guarded.attack.send("GET", target, token=APP)

    assert_not_forwarded(answer, (400, 403))
    assert answer.reason in ("bad_target", "not_allowlisted"), answer.describe()
    assert guarded.gate.store.healthy, guarded.gate.store.last_error


@pytest.mark.parametrize(
    "target",
    [
        "/api/v4/projects/99999999999999999999999/deployments",  # over GitLab's bigint ids
        "/api/v4/jobs/99999999999999999999999/artifacts",
        "/api/v4/jobs/%C2%B2/artifacts",
    ],
)
async def test_an_id_no_project_can_have_is_denied_not_a_store_fault(
    a_guarded_gateway, tmp_path, target
):
    # GitLab's ids are bigints: `find_by(id: <larger>)` finds nothing. SQLite cannot even bind
    # such an integer; that must read as "no such project", not as a store outage.
    guarded = await a_guarded_gateway(store=await a_sqlite_store(tmp_path / "store.db"))

    answer = await guarded.attack.send("GET", target, token=APP)

    assert_not_forwarded(answer, (400, 403))
    assert answer.reason in ("bad_target", "not_allowlisted", "target_unresolved")
    assert guarded.gate.store.healthy, guarded.gate.store.last_error


@pytest.mark.parametrize(
    "target",
    [
        f"{ALLOWED}?q=%252F..%252F&r=%5C&s=%00&t=%ZZ&u=%C0%AF",  # query values are data
        "/api/v4/projects/20/deployments/caf%C3%A9",  # valid UTF-8 in a parameter
        "/api/v4/projects/20/deployments/%40scope",
        "/api/v4/projects/20/deployments/a%20b+c",
    ],
)
async def test_encodings_in_data_positions_are_forwarded_byte_for_byte(guarded, target):
    answer = await guarded.attack.send("GET", target, token=APP)

    assert_forwarded(answer, target, "GET")
