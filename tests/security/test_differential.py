"""Differential fuzzing: the gateway against `reference.py`, on targets built from the route
table's own templates and mutated with the bypass classes of this suite.

Property, for every generated request:
- the gateway refuses (400/401/403) and the upstream receives nothing, or it forwards exactly
  the target it authorized (the upstream's recorded raw path is byte-for-byte the target);
- its verdict equals the reference's: same status for an unmutated target; for a mutated one
  the same status or a 400 (refusing an ambiguous spelling is always allowed), and a 400 only
  where the reference says the spelling is ambiguous for every reader.

It runs on both shipped tables: the seed's (with the supplementary routes) and the current
page's (`--routes current`: pipelines, jobs lists, repository files, merge requests, work items,
Conan v2, the "Unavailable API endpoints" rows), with the same mutations.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.settings import shipped_table

from .conftest import APP, EXPIRED, GRANTS_YAML, OUTSIDER, ROUTES, SECRET, UNKNOWN, Guarded, http
from .reference import Deny, Forward, Reference, Refuse

REFERENCE = Reference(
    ROUTES,
    GRANTS_YAML,
    now=time.time(),
    supplementary=ROUTES.with_name("routes-supplementary.yaml"),
)
SUPPLEMENTARY = ROUTES.with_name("routes-supplementary.yaml")
TEMPLATES = [
    (r["method"], r["path"])
    for table in (ROUTES, SUPPLEMENTARY)
    for r in yaml.safe_load(table.read_text())["routes"]
]
CURRENT = shipped_table("current")
CURRENT_REFERENCE = Reference(CURRENT, GRANTS_YAML, now=time.time())
CURRENT_TEMPLATES = [
    (r["method"], r["path"]) for r in yaml.safe_load(CURRENT.read_text())["routes"]
]

# Includes a fullwidth "20" and an Arabic-Indic "10": Ruby's \d is ASCII-only, so GitLab reads
# them as (unknown) full paths, never as project ids.
IDS = ["20", "10", "21", "30", "40", "12", "999", "010", "acme%2Fplatform%2Ftarget",
       "acme%2Fapp", "ACME%2Fsecret", "open%2Funlisted", "acme%2flegacy",
       "%EF%BC%92%EF%BC%90", "%D9%A1%D9%A0"]  # fmt: skip
JOB_IDS = ["7001", "7002", "7003", "7000", "999"]
USERNAMES = ["acme+app", "acme+platform+target", "acme+secret", "open+unlisted", "nobody"]
VALUES = ["1", "42", "v1.0", "x.json", "@scope%2Fpkg", "a+b", "-", "latest", "caf%C3%A9",
          "%40v", "file.bin", "main", "dist-tags", "authorize", "w"]  # fmt: skip
TOKENS = [APP, OUTSIDER, SECRET, EXPIRED, UNKNOWN, None]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

# Mutations from the bypass classes (each maps a path to a path).
DOTS = ["..", ".", "%2e%2e", ".%2e", "%2E.", "%252e%252e", "..;", "%2e"]
SEPARATORS = ["%2F", "%2f", "%5C", "\\", "%252F", "%EF%BC%8F", "%C0%AF", "//", "/./", "%2F..%2F"]
SUFFIXES = ["/", "//", ";x=1", ".json", "#frag", "%23x", "%3Fx=1", "%00", "%0a", ".JSON", ";"]
QUERIES = ["x=/api/v4/projects/20/deployments", "next=/../releases", "q=%2F%2e%2e", "a=1&a=2"]


@st.composite
def a_path(draw: st.DrawFn, templates: list[tuple[str, str]]) -> tuple[str, str]:
    """A method and a concrete /api/v4 path from one of the route table's templates."""
    method, template = draw(st.sampled_from(templates))
    text = _drop_optionals(draw, template)

    def fill(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        if name == "id":
            return draw(st.sampled_from(JOB_IDS if text.startswith("/jobs/") else IDS))
        if name == "package_username":
            return draw(st.sampled_from(USERNAMES))
        if kind == "*" or name == "ref_name":
            parts = draw(st.lists(st.sampled_from(VALUES + USERNAMES), min_size=1, max_size=3))
            return "/".join(parts)
        return draw(st.sampled_from(VALUES))

    path = re.sub(r"([:*])(\w+)", fill, text)
    return method, "/api/v4" + re.sub("/+", "/", path).rstrip("/")


def _drop_optionals(draw: st.DrawFn, template: str) -> str:
    while "(" in template:
        start = template.rindex("(")
        end = template.index(")", start)
        keep = draw(st.booleans())
        inner = template[start + 1 : end] if keep else ""
        template = template[:start] + inner + template[end + 1 :]
    return template


@st.composite
def a_mutation(draw: st.DrawFn, path: str) -> str:
    slashes = [i for i, char in enumerate(path) if char == "/"][3:]  # after /api/v4
    kind = draw(st.sampled_from(["dots", "separator", "suffix", "case", "unreserved", "query"]))
    if kind == "dots" and slashes:
        at = draw(st.sampled_from(slashes))
        return path[:at] + "/" + draw(st.sampled_from(DOTS)) + path[at:]
    if kind == "separator" and slashes:
        at = draw(st.sampled_from(slashes))
        return path[:at] + draw(st.sampled_from(SEPARATORS)) + path[at + 1 :]
    if kind == "case":
        parts = path.split("/")
        index = draw(st.integers(1, len(parts) - 1))
        parts[index] = parts[index].upper()
        return "/".join(parts)
    if kind == "unreserved":
        letters = [i for i, char in enumerate(path) if char.isalpha()]
        at = draw(st.sampled_from(letters))
        return path[:at] + f"%{ord(path[at]):02X}" + path[at + 1 :]
    if kind == "query":
        return path + "?" + draw(st.sampled_from(QUERIES))
    return path + draw(st.sampled_from(SUFFIXES))


@st.composite
def a_request(
    draw: st.DrawFn, templates: list[tuple[str, str]] = TEMPLATES
) -> tuple[str, str, str | None, str, bool]:
    method, path = draw(a_path(templates))
    if draw(st.booleans()):
        method = draw(st.sampled_from(METHODS))
    mutations = draw(st.integers(0, 2))
    for _ in range(mutations):
        path = draw(a_mutation(path))
    token = draw(st.sampled_from(TOKENS))
    carrier = draw(st.sampled_from(["JOB-TOKEN", "job_token", "Bearer"]))
    return method, path, token, carrier, mutations > 0


def with_token(target: str, token: str | None, carrier: str) -> tuple[str, list[tuple[str, str]]]:
    if token is None:
        return target, []
    if carrier == "JOB-TOKEN":
        return target, [("JOB-TOKEN", token)]
    if carrier == "Bearer":
        return target, [("Authorization", f"Bearer {token}")]
    if "#" in target:  # keep the fragment where the mutation put it
        path, _, fragment = target.partition("#")
        return f"{path}{'&' if '?' in path else '?'}job_token={token}#{fragment}", []
    return f"{target}{'&' if '?' in target else '?'}job_token={token}", []


@pytest.fixture
async def guarded_current(a_guarded_gateway: Callable[..., Awaitable[Guarded]]) -> Guarded:
    return await a_guarded_gateway(routes="current")


def test_the_fuzzed_table_is_the_current_one() -> None:
    paths = {path for _, path in CURRENT_TEMPLATES}
    assert len(CURRENT_TEMPLATES) == 188
    assert "/projects/:id/pipelines/:pipeline_id/metadata" in paths
    assert "/projects/:id/repository/files/:file_path/raw" in paths


@settings(
    max_examples=2500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=a_request())
async def test_the_gateway_agrees_with_the_reference(guarded, case):
    method, _, token, carrier, _ = case
    await agrees(guarded, case, lambda target: REFERENCE.verdict(method, target, token, carrier))


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=a_request(CURRENT_TEMPLATES))
async def test_the_gateway_agrees_with_the_reference_on_the_current_table(
    guarded_current: Any, case: tuple[str, str, str | None, str, bool]
) -> None:
    method, _, token, _, _ = case  # (this reference reads every token as a JOB-TOKEN header's)
    await agrees(
        guarded_current, case, lambda target: CURRENT_REFERENCE.verdict(method, target, token)
    )


async def agrees(
    guarded: Any, case: tuple[str, str, str | None, str, bool], reference: Callable[[str], Any]
) -> None:
    """The property (module docstring) for one request; `reference(target)` is the verdict."""
    method, path, token, carrier, mutated = case
    target, headers = with_token(path, token, carrier)
    expected = reference(target)

    answer = await guarded.attack.raw(http(method, target, headers))
    event(f"{type(expected).__name__} -> {answer.status}")

    where = f"{method} {target!r} token={token} via {carrier}: expected {expected}, got " + (
        answer.describe()
    )
    if answer.status == 200:  # forwarded: exactly the authorized bytes, once
        assert isinstance(expected, Forward), where
        assert [(r.method, r.raw_path) for r in answer.forwarded] == [(method, target)], where
        return
    assert answer.forwarded == [], where
    if isinstance(expected, Refuse):  # a strict-only ambiguity may also end in a denial
        assert answer.status == 400 or (expected.strict_only and answer.status in (401, 403)), where
    elif isinstance(expected, Deny):
        assert answer.status == expected.status or (mutated and answer.status == 400), where
    else:  # the reference forwards: only a mutated spelling may be refused instead
        assert mutated, where
        assert answer.status == 400, where
