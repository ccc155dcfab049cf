"""The security suite's target and credential classes, run through the plain nginx recipe
(client -> nginx auth_request -> decision listener; nginx forwards): the case lists are the
suite's own (tests/security/test_credentials.py, test_dot_segments.py, test_target_forms.py).

The invariant differs from the proxy port's in one way: nginx reads the request first, so
some payloads are refused by nginx itself (400) or reach the gateway normalized, and header
names nginx considers invalid (`JOB_TOKEN`, `Job.Token`) are dropped for both the check and
the upstream. Either way the upstream must receive exactly what the gateway approved: a
refusal reaches nothing, and an allowed request carries only the credential that was judged.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from security.conftest import ALLOWED, APP, DENIED, OUTSIDER
from security.test_credentials import CARRIERS, DUPLICATES
from security.test_dot_segments import NESTED, PAYLOADS
from security.test_target_forms import FORMS

from .conftest import Answer, Backends, Front, stop
from .test_recipes import _start_nginx

FOLDED = ["JOB_TOKEN", "Job_Token", "Job.Token", "Job~Token", "job!token"]


@pytest.fixture(scope="module")
def nginx(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    port, process = _start_nginx(tmp_path_factory.mktemp("nginx-security"), backends, omnibus=False)
    try:
        yield Front("nginx", port, backends)
    finally:
        stop(process)


def assert_nothing_reached(answer: Answer, statuses: tuple[int, ...] = (400, 401, 403)) -> None:
    assert answer.status in statuses, (answer.status, answer.body)
    assert answer.received == [], [r.raw_path for r in answer.received]


def credentials_seen(answer: Answer) -> str:
    return " ".join(f"{name}: {value}" for r in answer.received for name, value in r.headers)


@pytest.mark.parametrize(("headers", "query"), CARRIERS.values(), ids=CARRIERS.keys())
def test_every_carrier_gitlab_reads_is_judged(
    nginx: Front, headers: list[tuple[str, str]], query: str
) -> None:
    answer = nginx.send("GET", DENIED + query, headers)
    assert_nothing_reached(answer, (403,))
    assert answer.reason == "insufficient_permissions"


@pytest.mark.parametrize(("headers", "query"), CARRIERS.values(), ids=CARRIERS.keys())
def test_every_carrier_is_allowed_where_the_token_is(
    nginx: Front, headers: list[tuple[str, str]], query: str
) -> None:
    answer = nginx.send("GET", ALLOWED + query, headers)
    assert answer.status == 200
    (received,) = answer.received
    assert received.raw_path == ALLOWED + query


@pytest.mark.parametrize("headers", DUPLICATES.values(), ids=DUPLICATES.keys())
def test_ambiguous_credentials_never_reach_the_upstream_unjudged(
    nginx: Front, headers: list[tuple[str, str]]
) -> None:
    answer = nginx.send("GET", ALLOWED, headers)
    if answer.status == 200:  # nginx dropped the second carrier (an invalid header name)
        assert OUTSIDER not in credentials_seen(answer)
    else:
        assert_nothing_reached(answer)


@pytest.mark.parametrize("name", FOLDED)
def test_a_header_name_that_folds_to_job_token_is_judged_or_dropped(
    nginx: Front, name: str
) -> None:
    answer = nginx.send("GET", DENIED, [(name, APP)])
    if answer.status == 200:  # dropped by nginx for the check and the upstream alike
        assert APP not in credentials_seen(answer)
    else:
        assert_nothing_reached(answer)


@pytest.mark.parametrize("target", PAYLOADS + NESTED)
def test_a_dot_segment_never_reaches_the_upstream(nginx: Front, target: str) -> None:
    assert_nothing_reached(nginx.send("GET", target, [("JOB-TOKEN", APP)]))


@pytest.mark.parametrize("line", FORMS.values(), ids=FORMS.keys())
def test_a_target_that_is_not_origin_form_never_reaches_a_denied_route(
    nginx: Front, line: str
) -> None:
    data = f"{line}\r\nHost: gateway.test\r\nJOB-TOKEN: {APP}\r\nConnection: close\r\n\r\n"
    answer = nginx.raw(data.encode())
    for received in answer.received:
        # nginx reads an absolute-form target as its path (and the gateway judges that path);
        # anything else it forwards is outside the API (`//evil.example/...` is no API path).
        assert received.raw_path == ALLOWED or not received.raw_path.startswith("/api/"), (
            received.raw_path
        )
