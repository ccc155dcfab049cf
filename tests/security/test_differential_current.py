"""The differential property of test_differential.py, on the current page's table
(policies/routes-current.yaml, `--routes current`): the same gateway and reference, fed the
templates of that table (pipelines, jobs lists, repository files, merge requests, work items,
Conan v2, the "Unavailable API endpoints" rows) and the same mutations."""

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

from .conftest import GRANTS_YAML, Guarded, http
from .reference import Deny, Forward, Reference, Refuse
from .test_differential import (
    IDS,
    JOB_IDS,
    METHODS,
    TOKENS,
    USERNAMES,
    VALUES,
    _drop_optionals,
    a_mutation,
    with_token,
)

CURRENT = shipped_table("current")
REFERENCE = Reference(CURRENT, GRANTS_YAML, now=time.time())
TEMPLATES = [(r["method"], r["path"]) for r in yaml.safe_load(CURRENT.read_text())["routes"]]


@pytest.fixture
async def guarded_current(a_guarded_gateway: Callable[..., Awaitable[Guarded]]) -> Guarded:
    return await a_guarded_gateway(routes="current")


@st.composite
def a_path(draw: st.DrawFn) -> tuple[str, str]:
    """A method and a concrete /api/v4 path from one of the current table's templates."""
    method, template = draw(st.sampled_from(TEMPLATES))
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


@st.composite
def a_request(draw: st.DrawFn) -> tuple[str, str, str | None, str, bool]:
    method, path = draw(a_path())
    if draw(st.booleans()):
        method = draw(st.sampled_from(METHODS))
    mutations = draw(st.integers(0, 2))
    for _ in range(mutations):
        path = draw(a_mutation(path))
    token = draw(st.sampled_from(TOKENS))
    carrier = draw(st.sampled_from(["JOB-TOKEN", "job_token", "Bearer"]))
    return method, path, token, carrier, mutations > 0


def test_the_fuzzed_table_is_the_current_one() -> None:
    paths = {path for _, path in TEMPLATES}
    assert len(TEMPLATES) == 188
    assert "/projects/:id/pipelines/:pipeline_id/metadata" in paths
    assert "/projects/:id/repository/files/:file_path/raw" in paths


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=a_request())
async def test_the_gateway_agrees_with_the_reference_on_the_current_table(
    guarded_current: Any, case: tuple[str, str, str | None, str, bool]
) -> None:
    method, path, token, carrier, mutated = case
    target, headers = with_token(path, token, carrier)
    expected = REFERENCE.verdict(method, target, token)

    answer = await guarded_current.attack.raw(http(method, target, headers))
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
