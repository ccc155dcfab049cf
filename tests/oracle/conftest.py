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
