"""The oracle over the route families of `gateway.core.carriers` (issue 10's carriers): on a route of
each family GitLab also reads that family's carriers (TokenLocator `http_token`,
`http_bearer_token`, `http_header`, the package helpers' Basic password of any user), and it
tries an unprefixed Doorkeeper value as a job token everywhere. Whenever GitLab reads a job
token (a `glcbt-` value, or one the store knows) on a carrier of the request's family, the
gateway's `tokens.read` judges that value (a `Credential`, or a `Candidate` the gate resolves
through the store or the upstream) or refuses the request.

Not covered here: the Conan and Terraform registry JWTs (`Reading.CONAN_JWT`,
`Reading.TOKEN_PARAM_JWT`), which the oracle cannot mint (GitLab signs them).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.core.carriers import FAMILIES, Family, Reading

from .generate import KNOWN, POOL, requests
from .reader import GitLabReader, Raw, gateway_reads, job_tokens

pytestmark = pytest.mark.oracle

# Doorkeeper's carriers: `find_user_from_job_bearer_token` runs Ci::AuthJobFinder on any value.
DOORKEEPER = ("bearer_authorization", "access_token_param", "bearer_token_param")


def concrete(path: str) -> str:
    """A request path of a family pattern (`:id` a project id, `**` a few segments)."""
    return "/api/v4" + path.replace(":id", "20").replace("**", "pkg/1.0/file.bin")


def carriers_of(family: Family) -> dict[str, object]:
    """`job_tokens` options for the carriers GitLab reads on this family's routes."""
    any_value = [*DOORKEEPER, *(f"http_header:{name}" for name in family.headers)]
    if Reading.HTTP_TOKEN in family.readings:
        any_value.append("locator_http_token")
    if Reading.BEARER_LAST_WORD in family.readings:
        any_value.append("locator_http_bearer_token")
    return {
        "any_value": tuple(any_value),
        "basic_any_user": Reading.BASIC_ANY_USER in family.readings,
    }


@st.composite
def family_requests(draw: st.DrawFn) -> tuple[Family, Raw]:
    family = draw(st.sampled_from(FAMILIES))
    path = concrete(draw(st.sampled_from(family.paths)))
    raw = draw(requests(paths=dict.fromkeys(("GET", "POST", "PUT", "PATCH", "DELETE"), path)))
    headers = list(raw.headers)
    for name in family.headers:
        if draw(st.booleans()):
            headers.insert(draw(st.integers(0, len(headers))), (name, draw(POOL)))
    if draw(st.integers(0, 3)) == 0:  # a bare Authorization value (RubyGems clients send one)
        headers.append(("Authorization", draw(POOL)))
    return family, Raw(raw.method, raw.target, tuple(headers), raw.body, family.headers)


@settings(
    max_examples=800,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=family_requests())
def test_on_every_route_family_gitlab_reads_no_job_token_the_gateway_neither_judges_nor_refuses(
    gitlab: GitLabReader, case: tuple[Family, Raw]
) -> None:
    family, request = case
    reading = gitlab.read(request)
    found = job_tokens(reading, KNOWN, **carriers_of(family))  # type: ignore[arg-type]
    verdict = gateway_reads(request)
    outcome = "refused" if verdict.refused else "judged" if verdict.judged else "no token"
    event(f"{family.name}: {'job token' if found else 'no job token'} -> {outcome}")
    where = f"{family.name} {request!r}\n  GitLab reads {found}\n  gateway {verdict}\n  {reading}"
    if found and not verdict.refused:
        assert verdict.judged is not None, where
        assert set(found) == {verdict.judged}, where
