"""Log configuration (structlog) and the redaction helpers every log line goes through.

`configure(settings)` is called once per process. Our own events and the stdlib loggers
(aiohttp.server, aiohttp.web, aiohttp.client, asyncio) are rendered by the same processors:
JSON lines off a TTY, coloured key=value on a TTY (`log_format` overrides). aiohttp's access
log is disabled: the proxy writes one structured line per request itself.

Tokens never reach a log line: the request line carries the target with token-bearing query
parameters replaced by `[REDACTED]` (`redact_target`), headers are never logged, and text
coming from third-party loggers (parser errors quote raw request bytes) is scrubbed.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, TextIO
from urllib.parse import unquote_plus

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.settings import LogFormat, Settings

__all__ = ["REDACTED", "TOKEN_PARAMS", "configure", "get_logger", "redact_target", "scrub"]

REDACTED = "[REDACTED]"

# Query parameters GitLab reads credentials from: `job_token` (CI job tokens, API and package
# endpoints), `private_token`/`access_token` (PATs, OAuth), `token` (e.g. the deprecated
# trigger/runner endpoints), `bearer_token`. GitLab: lib/gitlab/auth/auth_finders.rb
# (JOB_TOKEN_PARAM, PRIVATE_TOKEN_PARAM, ...).
TOKEN_PARAMS = frozenset({"job_token", "token", "private_token", "access_token", "bearer_token"})

# GitLab-issued secrets carry a `gl<kind>-` prefix (glcbt- job tokens, glpat-, glrt-, ...).
# Free text from other libraries is scrubbed of anything shaped like one.
_PREFIXED_SECRET = re.compile(r"\bgl[a-z]{2,10}-[A-Za-z0-9_.\-]{8,}")
_SCRUBBED_KEYS = ("event", "error", "exception")


def redact_target(target: str) -> str:
    """The request target with the value of every token-bearing query parameter redacted.

    Names are compared after percent-decoding (Rack decodes them: `job%5Ftoken` is
    `job_token`), case-insensitively, ignoring a `[...]` suffix. Rack before 3.0 also splits
    the query on `;`, so a `;`-separated token parameter is redacted up to the next `&`.
    """
    path, sep, query = target.partition("?")
    if not sep:
        return target
    return path + "?" + "&".join(_redact_pair(pair) for pair in query.split("&"))


def _redact_pair(pair: str) -> str:
    pieces = pair.split(";")
    for index, piece in enumerate(pieces):
        name, eq, _ = piece.partition("=")
        if eq and _is_token_name(name):
            return ";".join([*pieces[:index], f"{name}={REDACTED}"])
    return pair


def _is_token_name(name: str) -> bool:
    decoded = unquote_plus(name).strip().lower()
    return decoded.split("[", 1)[0] in TOKEN_PARAMS


def scrub(text: str) -> str:
    """Replace anything shaped like a GitLab-prefixed secret in free text."""
    return _PREFIXED_SECRET.sub(REDACTED, text)


def _scrub_free_text(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in _SCRUBBED_KEYS:
        value = event.get(key)
        if isinstance(value, str):
            event[key] = scrub(value)
    return event


def _add_process(fields: dict[str, Any]) -> Processor:
    """Per-process fields (pid, worker index): fixed at `configure`, cheaper than contextvars."""

    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.update(fields)
        return event

    return add


class _QuietParserErrors(logging.Filter):
    """aiohttp logs every malformed request at ERROR with a traceback whose message quotes the
    raw bytes received (headers included, so possibly a token). Keep one INFO line naming the
    error class instead (reference aiohttp-proxying.md §1.24)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "malformed request refused: %s", (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _renderer(settings: Settings, stream: TextIO) -> tuple[list[Processor], Processor]:
    """(extra processors, final renderer) for the chosen format."""
    fmt = settings.log_format
    if fmt is LogFormat.AUTO:
        fmt = LogFormat.CONSOLE if stream.isatty() else LogFormat.JSON
    if fmt is LogFormat.CONSOLE:
        return [], structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return [structlog.processors.format_exc_info], structlog.processors.JSONRenderer()


def configure(
    settings: Settings, stream: TextIO | None = None, *, worker: int | None = None
) -> None:
    """Configure structlog and the stdlib root logger to write to `stream` (stderr).

    Every line carries the process id, and `worker` (its index) in a worker process.
    """
    stream = stream or sys.stderr
    process: dict[str, Any] = {"pid": os.getpid()}
    if worker is not None:
        process["worker"] = worker
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    extra, renderer = _renderer(settings, stream)
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process(process),
    ]
    structlog.configure(
        processors=[*shared, *extra, _scrub_free_text, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        # The per-request logger is bound once at start-up (`get_logger`); module-level loggers
        # only log rare events, so they may follow a later `configure` (tests reconfigure).
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib(level, stream, [*shared, structlog.stdlib.add_logger_name], extra, renderer)


def _bridge_stdlib(
    level: int, stream: TextIO, pre: list[Processor], extra: list[Processor], renderer: Processor
) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *extra,
            _scrub_free_text,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_QuietParserErrors())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The proxy writes its own request line; aiohttp's access log would duplicate it.
    logging.getLogger("aiohttp.access").disabled = True


def get_logger(name: str, **initial: Any) -> structlog.typing.FilteringBoundLogger:
    """A logger bound now, under the current configuration (cheap to call per request)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger.bind(logger=name, **initial)
