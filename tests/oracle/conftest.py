"""The oracle process, shared by the session: skipped with the reason where Ruby or its gems are
missing, a failure in CI (CI=true), where scripts/system-deps.sh installs them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .reader import GitLabReader, in_ci, unavailable


@pytest.fixture(scope="session")
def gitlab() -> Iterator[GitLabReader]:
    """What GitLab's parsers read (tests/oracle/gitlab_reader.rb, one process)."""
    reason = unavailable()
    if reason is not None:
        if in_ci():
            pytest.fail(f"the oracle is required in CI: {reason}")
        pytest.skip(reason)
    reader = GitLabReader.start()
    yield reader
    reader.close()


# The security suite's gateways (a real Gate in front of the recording upstream, and a served
# `python -m gateway serve` process with its JSON log), reused by the end-to-end properties.
from security.conftest import (  # noqa: E402
    a_guarded_gateway,
    a_served_gateway,
    grants_file,
)


@pytest.fixture
def served_gateway(a_served_gateway):  # type: ignore[no-untyped-def]
    """One `python -m gateway serve` per test, however many examples hypothesis runs."""
    started = {}

    def start(upstream: str):  # type: ignore[no-untyped-def]
        if upstream not in started:
            started[upstream] = a_served_gateway(upstream, "--log-level", "debug")
        return started[upstream]

    return start


__all__ = ["a_guarded_gateway", "a_served_gateway", "gitlab", "grants_file", "served_gateway"]
