"""The differential oracle, function level: whenever GitLab's own parsers (Rack 2.2, ActionPack,
Grape, Doorkeeper, with GitLab's carrier code mirrored in tests/oracle/gitlab_reader.rb) read a
job token from a request, the gateway's reading (`tokens.extract` on the view the proxy builds)
either judges that same token or refuses the request.

Also: a POST that Rack::MethodOverride turns into another method is refused (`bad_body`).

The over-strict cases (the gateway refuses, GitLab reads no job token and answers normally) are
counted per reason; `ORACLE_REPORT=path` writes the counts as JSON (docs/security.md lists them).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from urllib.parse import unquote_plus

import pytest
from hypothesis import HealthCheck, event, given, settings
from multidict import CIMultiDict

from gateway.core import params, tokens
from gateway.core.request import RequestView

from .generate import KNOWN, requests
from .reader import (
    SCRIPT,
    GitLabReader,
    Raw,
    Reading,
    gateway_reads,
    job_tokens,
    overridden_method,
    tries_a_job_carrier,
)

OVER_STRICT: Counter[str] = Counter()
SEEN: Counter[str] = Counter()
EXAMPLES: dict[str, str] = {}
VERSIONS: dict[str, str] = {}

pytestmark = pytest.mark.oracle


def _reason(refused: str) -> str:
    """A refusal reason without the carrier lists' details (one bucket per kind)."""
    head = refused.split(";")[0]
    head = re.sub(r"\(.*?\)", "(...)", head)
    return re.sub(r"\d+", "N", head)


def _gitlab_answers_normally(reading: Reading) -> bool:
    """GitLab reads this request without a parse error on one of its stacks and tries no value
    on a job-token carrier (else it answers 401 itself, or 400)."""
    api = reading.api
    api_ok = api.status is not None and 200 <= api.status < 300 and api.error is None
    return (reading.rails.error is None or api_ok) and not tries_a_job_carrier(reading)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    path = os.environ.get("ORACLE_REPORT")
    if path:
        report = {
            "versions": VERSIONS,
            "seen": dict(SEEN),
            "over_strict": dict(OVER_STRICT.most_common()),
            "examples": EXAMPLES,
        }
        with open(path, "w") as out:
            json.dump(report, out, indent=1)


def check(gitlab: GitLabReader, request: Raw) -> str:
    """The property, for one request (raises AssertionError with both readings); returns what
    happened, for hypothesis' statistics."""
    VERSIONS.update(gitlab.versions)
    reading = gitlab.read(request)
    found = job_tokens(reading, KNOWN)
    verdict = gateway_reads(request)
    where = f"{request!r}\n  GitLab reads {found}\n  gateway {verdict}\n  {reading}"
    outcome = "refused" if verdict.refused else "judged" if verdict.judged else "no token"
    what = f"{'job token' if found else 'no job token'} -> {outcome}"
    SEEN[what] += 1
    if found and not verdict.refused:
        assert verdict.judged is not None, where
        assert set(found) == {verdict.judged}, where
    if overridden_method(reading, request) is not None:
        assert verdict.refused is not None, where
        assert verdict.refused.startswith("bad_body"), where
    if verdict.refused and not found and _gitlab_answers_normally(reading):
        reason = _reason(verdict.refused)
        OVER_STRICT[reason] += 1
        EXAMPLES.setdefault(reason, repr(request)[:400])
    return what


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=requests())
def test_gitlab_never_reads_a_job_token_the_gateway_neither_judges_nor_refuses(gitlab, raw):
    event(check(gitlab, raw))


# The review's findings and their neighbours, each checked against the oracle too: the oracle
# must see what the review saw (else it proves nothing), and the gateway must agree with it.
APP = "glcbt-sec-app-job"


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


FINDINGS = {
    "comma in a form Content-Type": (
        Raw(
            "POST",
            "/api/v4/x",
            (("Content-Type", "application/x-www-form-urlencoded, text/plain"),),
            f"job_token={APP}".encode(),
        ),
        {"rails:job_token_param"},
    ),
    "comma in a JSON Content-Type": (
        Raw(
            "POST",
            "/api/v4/x",
            (("Content-Type", "application/json,text/plain"),),
            json.dumps({"token": APP}).encode(),
        ),
        {"rails:token_param", "api:token_param"},
    ),
    "Basic after a tab": (
        Raw("GET", "/api/v4/x", (("Authorization", "Basic\t" + _basic("gitlab-ci-token", APP)),)),
        {"rails:basic_password", "api:basic_password"},
    ),
    "bracketed job_token": (
        Raw("GET", f"/api/v4/x?%5Bjob_token%5D={APP}"),
        {"rails:job_token_param", "api:job_token_param"},
    ),
    "bracket-suffixed token after ;": (
        Raw("GET", f"/api/v4/x?x=1;[token]={APP}"),
        {"rails:token_param", "api:token_param"},
    ),
}


@pytest.mark.parametrize(("request_", "carriers"), FINDINGS.values(), ids=FINDINGS.keys())
def test_the_oracle_reads_the_review_findings(gitlab, request_, carriers):
    reading = gitlab.read(request_)
    found = job_tokens(reading, KNOWN)
    assert carriers <= found.get(APP.encode(), set()), reading
    check(gitlab, request_)
    assert gateway_reads(request_).judged == APP.encode()


OVERRIDES = {
    "comma": "application/x-www-form-urlencoded, x",
    # Rack::Request#content_type: an empty CONTENT_TYPE is none, so a POST is a form (ActionPack
    # then refuses "" as a MIME type, but Rack::MethodOverride has already run).
    "empty": "",
}


@pytest.mark.parametrize("content_type", OVERRIDES.values(), ids=OVERRIDES.keys())
def test_the_oracle_reads_a_method_override_the_gateway_refuses(gitlab, content_type):
    request = Raw("POST", "/api/v4/x", (("Content-Type", content_type),), b"_method=DELETE")
    assert gitlab.read(request).rails.method == "DELETE"
    assert (gateway_reads(request).refused or "").startswith("bad_body")


def test_deep_json_is_a_400_for_rails_and_for_the_gateway(gitlab):
    request = Raw(
        "POST",
        "/api/v4/x",
        (("Content-Type", "application/json"),),
        b"[" * 100_000 + b"]" * 100_000,
    )
    reading = gitlab.read(request)
    assert reading.rails.error is not None  # ActionDispatch's ParseError: Rails answers 400
    # Grape 1.6's JSON parser has no nesting limit: Ruby's stack overflows (SystemStackError,
    # a 500 in the API unless a middleware limits JSON depth first). Either way: no params.
    assert reading.api.status == 400 or reading.api.error is not None, reading
    assert not reading.api.carriers, reading
    view = RequestView("POST", "/api/v4/x", CIMultiDict(request.headers), request.body)
    with pytest.raises(params.BodyError):
        tokens.extract(view)


def test_ruby_decode64_is_rubys(gitlab):
    """`params.ruby_decode64` against Ruby's own `Base64.decode64`, on strings made of the
    alphabet, padding, and the bytes Ruby skips."""
    del gitlab  # only for the skip-with-reason: the same Ruby runs the comparison
    cases = [
        "", "=", "Zg", "Zg=", "Zg==", "Zm9v", "Zm9vYg", "Zm=9v", "Z=m9v", "Zm9=v", "Zm9v=YmFy",
        "Zm9v YmFy", "Zm9v\tYmFy", "Zm9v-YmFy", "Z*m9v", "é Zm9v", "Zm9vY", "====Zm9v",
        "eDpnbGNidC1zZWMtYXBwLWpvYg==", "eDpn*bGNidC1zZWMtYXBwLWpvYg", "glcbt-sec-app-job",
        "Zm9v.YmFy.YmF6", "ZZ==ZZ", "Z=Z=ZZ", "ZZZ=Z", "ab+/cd_-ef",
    ]  # fmt: skip
    rng = __import__("random").Random(16)
    alphabet = "ABCxyz019+/=-_.* \té"
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(400)]
    lines = "".join(json.dumps(case) + "\n" for case in cases)
    out = subprocess.run(
        ["ruby", str(SCRIPT), "--decode64"], input=lines.encode(), capture_output=True, check=True
    )
    expected = [base64.b64decode(line) for line in out.stdout.splitlines()]
    for case, want in zip(cases, expected, strict=True):
        assert params.ruby_decode64(case) == want, case


def _ruby_primitives(calls: list[tuple[str, str]]) -> list[dict[str, object]]:
    lines = "".join(json.dumps(list(call)) + "\n" for call in calls)
    out = subprocess.run(
        ["ruby", str(SCRIPT), "--primitives"], input=lines.encode(), capture_output=True, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def _strings(alphabet: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(count)]


def test_the_reading_primitives_are_rubys(gitlab):
    """`authorization_scheme`, `media_type` and `param_base` against the Ruby they mirror, on
    generated strings (header values as a server hands them over: no surrounding spaces)."""
    del gitlab  # only for the skip-with-reason
    schemes = _strings(["Basic", "Bearer", " ", "\t", "  ", "\v", "x", "=", ":"], 300, 1)
    schemes = [value.strip(" \t") for value in schemes]
    types = _strings(
        ["application/json", "text/plain", "Multipart/Form-Data", ";", ",", " ", "x=1", "A"], 300, 2
    )
    types = [value.strip(" \t") for value in types if value.strip(" \t")]
    keys = _strings(["job_token", "token", "[", "]", "x", "%5B", "%5D", "_", "+"], 400, 3)
    keys = [key for key in keys if key and not key.startswith(("+", "%20"))]
    calls = [("split2", v) for v in schemes] + [("media_type", v) for v in types]
    calls += [("param", key) for key in keys]
    answers = iter(_ruby_primitives(calls))
    for value in schemes:
        ruby = next(answers)["result"]
        # Ruby splits a blank non-empty value into [""]: no scheme either way.
        want = (ruby[0] or None if ruby else None, ruby[1] if len(ruby) > 1 else None)  # type: ignore[index, arg-type]
        assert params.authorization_scheme(value) == want, value
    for value in types:
        assert params.media_type(value) == next(answers)["result"], value
    for key in keys:
        ruby_params = dict(next(answers)["result"])  # type: ignore[call-overload]
        decoded = unquote_plus(key)
        base = params.param_base(decoded)
        # Whenever Rack fills a top-level key (a name without brackets, as every credential
        # name is) with the plain string, the gateway reads that key, not nested; whenever the
        # gateway reads a plain key, Rack filled it so. (`x[` fills the key `x[` itself.)
        for name, plain in ruby_params.items():
            if plain and name.strip() == name and not set(name) & set("[]"):
                assert base == (name, False), (key, ruby_params)
        if base is not None and not base[1] and " " not in decoded:  # (spaces: stricter)
            assert ruby_params.get(base[0]) is True, (key, ruby_params)
