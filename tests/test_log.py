"""Log configuration: JSON off a TTY, console on one, stdlib loggers through the same pipeline,
and the redaction of token-bearing query parameters."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage

from gateway.ops import log
from gateway.settings import Settings


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.mark.parametrize(
    ("target", "redacted"),
    [
        ("/api/v4/job", "/api/v4/job"),
        ("/x?job_token=abc", "/x?job_token=[REDACTED]"),
        ("/x?a=1&private_token=abc&b=2", "/x?a=1&private_token=[REDACTED]&b=2"),
        ("/x?token=a&access_token=b&bearer_token=c", "/x?token=[REDACTED]&access_token=[REDACTED]&bearer_token=[REDACTED]"),
        ("/x?JOB_TOKEN=abc", "/x?JOB_TOKEN=[REDACTED]"),
        ("/x?job%5Ftoken=abc", "/x?job%5Ftoken=[REDACTED]"),
        ("/x?job_token[]=abc", "/x?job_token[]=[REDACTED]"),
        ("/x?a=1;job_token=abc;b=2&c=3", "/x?a=1;job_token=[REDACTED]&c=3"),
        ("/x?job_token=abc&job_token=def", "/x?job_token=[REDACTED]&job_token=[REDACTED]"),
        ("/x?tokens=visible&my_token=visible", "/x?tokens=visible&my_token=visible"),
        ("/x?job_token", "/x?job_token"),
        ("/x?=job_token", "/x?=job_token"),
    ],
)  # fmt: skip
def test_token_query_parameters_are_redacted(target, redacted):
    assert log.redact_target(target) == redacted


def test_prefixed_secrets_are_scrubbed_from_free_text():
    assert log.scrub("bad header: JOB-TOKEN: glcbt-64_abcdefghijkl") == (
        "bad header: JOB-TOKEN: [REDACTED]"
    )


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_format_is_json_off_a_tty_and_console_on_one():
    piped, tty = io.StringIO(), FakeTTY()

    log.configure(Settings(log_format="auto"), stream=piped)
    log.get_logger("test").info("hello", n=1)
    log.configure(Settings(log_format="auto"), stream=tty)
    log.get_logger("test").info("hello", n=1)

    line = json.loads(piped.getvalue())
    assert (line["event"], line["n"], line["level"], line["logger"]) == ("hello", 1, "info", "test")
    assert "timestamp" in line
    assert "hello" in tty.getvalue()
    assert not tty.getvalue().startswith("{")


def test_stdlib_loggers_go_through_the_same_pipeline():
    stream = io.StringIO()
    log.configure(Settings(log_format="json"), stream=stream)

    logging.getLogger("aiohttp.server").warning("upstream said %s", "no")
    logging.getLogger("aiohttp.access").info("GET / 200")  # disabled: the proxy logs requests

    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["event"] == "upstream said no"
    assert line["logger"] == "aiohttp.server"
    assert line["level"] == "warning"


def test_malformed_requests_are_one_quiet_line_without_the_raw_bytes():
    stream = io.StringIO()
    log.configure(Settings(log_format="json"), stream=stream)
    try:
        raise BadHttpMessage("Invalid header value char: b'JOB-TOKEN: 0123456789abcdef\\x01'")
    except BadHttpMessage:
        logging.getLogger("aiohttp.server").exception("Error handling request from 127.0.0.1")

    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["level"] == "info"
    assert line["event"] == "malformed request refused: BadHttpMessage"
    assert "0123456789abcdef" not in stream.getvalue()


def test_the_level_setting_filters():
    stream = io.StringIO()
    log.configure(Settings(log_format="json", log_level="warning"), stream=stream)

    log.get_logger("test").info("quiet")
    logging.getLogger("gateway.core.gate").info("quiet too")
    log.get_logger("test").warning("loud")

    assert [json.loads(text)["event"] for text in stream.getvalue().splitlines()] == ["loud"]
