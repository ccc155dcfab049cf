"""Log configuration: JSON off a TTY, console on one, stdlib loggers through the same pipeline,
and the redaction of token-bearing query parameters."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage

from gateway.core.decision import Reason
from gateway.ops import log
from gateway.ops.exchange import Exchange, Recorder
from gateway.proxy.forward import Transfer
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
    logging.getLogger("gateway.gate").info("quiet too")
    log.get_logger("test").warning("loud")

    assert [json.loads(text)["event"] for text in stream.getvalue().splitlines()] == ["loud"]


# ---- the request line: LineLogger renders what structlog's chain renders, to the Output


class Opaque:
    """Not JSON: rendered by structlog's fallback (`__structlog__`, else repr)."""

    def __repr__(self) -> str:
        return "<opaque>"

    def __str__(self) -> str:
        return "not what the fallback renders"


EVENTS = [
    {"request_id": "r-1", "method": "GET", "status": 200, "reason": "ok", "remote": None},
    {"path": log.redact_target("/api/v4/job?job_token=glcbt-secret&a=1"), "total_ms": 0.125},
    {"required": ["read_packages"], "granted": ("read_packages", "write_packages")},
    {"decision_ms": 1e-06, "upstream_ms": 12345.678, "bytes_in": 0, "would_deny": True},
    {"target_project": "gröup/prøject ☃", "source_project": "日本/語"},
    {"reason": Reason.INSUFFICIENT_PERMISSIONS, "job_id": 2**70, "peer": "::1"},
    {"error": "upstream closed: glpat-abcdefghijklmnop", "nested": {"a": [1, None]}},
    {"error": "undecodable \udcff byte", "object": Opaque()},
]


@pytest.mark.parametrize("fmt_worker", [None, 3])
@pytest.mark.parametrize("fields", EVENTS)
def test_the_line_logger_writes_what_structlogs_chain_renders(
    fields: dict[str, object], fmt_worker: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log.time, "time", lambda: 1795787582.25149)  # one timestamp for both
    stream = io.StringIO()
    output = log.configure(Settings(log_format="json"), stream=stream, worker=fmt_worker)
    for level in (logging.INFO, logging.WARNING):
        log.get_logger("gateway.request").log(level, "request", **fields)
        log.LineLogger("gateway.request", output).log(level, "request", dict(fields))

    chain, direct, chain_warning, direct_warning = stream.getvalue().splitlines()
    assert direct == chain
    assert direct_warning == chain_warning
    assert json.loads(direct)["timestamp"] == "2026-11-27T13:53:02.251490Z"
    assert "glcbt-secret" not in direct
    assert "glpat-" not in direct


def test_the_line_logger_honours_the_outputs_level() -> None:
    stream = io.StringIO()
    output = log.configure(Settings(log_format="json", log_level="warning"), stream=stream)
    line = log.LineLogger("gateway.request", output)
    assert not line.enabled(logging.INFO)
    assert line.enabled(logging.WARNING)
    line.log(logging.INFO, "request", {"status": 200})
    line.log(logging.WARNING, "request", {"status": 502})
    assert [json.loads(text)["status"] for text in stream.getvalue().splitlines()] == [502]


def test_configure_returns_the_output_in_force() -> None:
    assert log.output() is None  # structlog's defaults: not configured by `configure`
    first = log.configure(Settings(log_format="json"), stream=io.StringIO())
    assert log.output() is first
    second = log.configure(Settings(log_format="json"), stream=io.StringIO())
    assert log.output() is second
    structlog.reset_defaults()
    assert log.output() is None


def an_exchange() -> Exchange:
    exchange = Exchange(Transfer("r-1"), "GET", "/api/v4/job?job_token=glcbt-x", "10.0.0.1", 0.0)
    exchange.status = 200
    return exchange


def test_a_recorder_built_before_configure_writes_through_the_configured_chain() -> None:
    early = Recorder()  # no Output yet: each line goes through structlog as configured then
    stream = io.StringIO()
    output = log.configure(Settings(log_format="json"), stream=stream)
    late = Recorder()  # the process's Output (`log.output()`)
    given = Recorder(output=output)
    for recorder in (early, late, given):
        recorder.finish(an_exchange())
        recorder.close()

    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert len(lines) == 3
    for line in lines:
        line.pop("timestamp"), line.pop("total_ms")
    assert lines[0] == lines[1] == lines[2]
    assert lines[0]["path"] == "/api/v4/job?job_token=[REDACTED]"
    assert (lines[0]["pid"], lines[0]["level"], lines[0]["event"]) == (
        os.getpid(),
        "info",
        "request",
    )
