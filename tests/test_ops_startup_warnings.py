"""Start-up warnings of a real `serve`: `--unknown-credential` resolving to `forward` (an
unprefixed job token in a shared carrier then reaches the upstream unjudged) is said once at
start-up, naming the setting and what to set; with upstream validation it is not."""

from __future__ import annotations

from typing import Any

import pytest

FORWARDED = "unknown credentials are forwarded unjudged"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((), "(--unknown-credential auto without --upstream-validation)"),
        (("--unknown-credential", "forward"), "(--unknown-credential forward)"),
    ],
    ids=["auto", "forward"],
)
def test_forwarding_unknown_credentials_is_warned_at_start_up(
    an_upstream: Any, a_gateway_process: Any, args: tuple[str, ...], named: str
) -> None:
    gateway = a_gateway_process("--upstream", an_upstream.url, *args)
    events = gateway.logs()
    (warning,) = [e for e in events if FORWARDED in e.get("event", "")]
    assert warning["level"] == "warning"
    assert named in warning["event"]
    assert "set --upstream-validation (GATEWAY_UPSTREAM_VALIDATION=true)" in warning["event"]
    assert "without GitLab's job-token prefix" in warning["event"]
    assert "glcbt-" not in gateway.log_text()  # the log stays free of anything token-shaped
    names = [e.get("event") for e in events]
    assert names.index(warning["event"]) < names.index("listening")  # said at start-up


@pytest.mark.parametrize(
    "args",
    [("--upstream-validation",), ("--upstream-validation", "--unknown-credential", "upstream")],
    ids=["auto", "upstream"],
)
def test_no_warning_when_the_upstream_judges_unknown_credentials(
    an_upstream: Any, a_gateway_process: Any, args: tuple[str, ...]
) -> None:
    gateway = a_gateway_process("--upstream", an_upstream.url, *args)
    assert "listening" in [e.get("event") for e in gateway.logs()]
    assert FORWARDED not in gateway.log_text()
