"""Log configuration (structlog) and the redaction helpers every log line goes through.

`configure(settings)` is called once per process and returns the process's `Output`. Our own
events and the stdlib loggers (aiohttp.server, aiohttp.web, aiohttp.client, asyncio) are rendered
by the same processors: JSON lines off a TTY, coloured key=value on a TTY (`log_format`
overrides). aiohttp's access log is disabled: the proxy writes one structured line per request
itself, through a `LineLogger` bound to that `Output` (a `Recorder`'s, gateway/ops/exchange.py).

The `Output` is structlog's logger factory too: structlog's configuration (process-wide by its
design: "configure once") is its only owner, and `output()` finds it there, so no module global
here can disagree with the configuration in force.

Tokens never reach a log line: the request line carries the target with token-bearing query
parameters replaced by `[REDACTED]` (`redact_target`), headers are never logged, and text
coming from third-party loggers (parser errors quote raw request bytes) is scrubbed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from typing import Any, TextIO
from urllib.parse import unquote_plus

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.core import params
from gateway.settings import LogFormat, Settings

__all__ = [
    "REDACTED",
    "TOKEN_PARAMS",
    "LineLogger",
    "Output",
    "configure",
    "get_logger",
    "output",
    "redact_target",
    "scrub",
]

REDACTED = "[REDACTED]"

# Query parameters GitLab reads credentials from: every name `params.credential_param` knows
# (`job_token`, `token`, `access_token`, `bearer_token`, `private_token`: lib/gitlab/auth/
# auth_finders.rb, config/initializers/doorkeeper.rb), plus secrets that are no job-token
# carrier: `feed_token`/`rss_token` (AuthFinders#find_user_from_feed_token).
TOKEN_PARAMS = frozenset(
    {
        "job_token",
        "token",
        "private_token",
        "access_token",
        "bearer_token",
        "feed_token",
        "rss_token",
    }
)
# The separators `params.parse_form` splits on (Rack 2's `[&;] *`), kept to rebuild the target.
_QUERY_SEP = re.compile(r"([&;] *)")

# GitLab-issued secrets carry a `gl<kind>-` prefix (glcbt- job tokens, glpat-, glrt-, ...).
# Free text from other libraries is scrubbed of anything shaped like one.
_PREFIXED_SECRET = re.compile(r"\bgl[a-z]{2,10}-[A-Za-z0-9_.\-]{8,}")
_SCRUBBED_KEYS = ("event", "error", "exception")


def redact_target(target: str) -> str:
    """The request target with the value of every credential-bearing query parameter redacted.

    The query is split as `params.parse_form` splits it (on `&` and `;`, as Rack 2 does) and
    each name is read by `params.credential_param` after percent-decoding: whatever name the
    extractor reads a credential from (`[job_token]`, `job_token]`, `%5Bjob_token%5D`,
    `job%5Ftoken`, `x=1;[token]=...`) is redacted, so the two cannot disagree. Names are also
    compared lower-cased (redacting more is harmless).
    """
    path, sep, query = target.partition("?")
    if not sep:
        return target
    pieces = _QUERY_SEP.split(query)  # pair, separator, pair, ...
    out: list[str] = []
    redacting = False  # Rack 3 splits on `&` only: `job_token=a;b` is the value `a;b` there
    for index, piece in enumerate(pieces):
        if index % 2:  # a separator
            redacting = redacting and not piece.startswith("&")
            if not redacting:
                out.append(piece)
            continue
        if redacting:
            continue
        name, eq, _ = piece.partition("=")
        if eq and _is_token_name(name):
            out.append(f"{name}={REDACTED}")
            redacting = True
        else:
            out.append(piece)
    return path + "?" + "".join(out)


def _is_token_name(name: str) -> bool:
    decoded = unquote_plus(name)
    if params.credential_param(decoded) is not None:
        return True
    base = params.param_base(decoded.lower())
    return base is not None and base[0] in TOKEN_PARAMS


def scrub(text: str) -> str:
    """Replace anything shaped like a GitLab-prefixed secret in free text."""
    return _PREFIXED_SECRET.sub(REDACTED, text)


def _scrub_free_text(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in _SCRUBBED_KEYS:
        value = event.get(key)
        if isinstance(value, str):
            event[key] = scrub(value)
    return event


class _Clock:
    """ISO 8601 UTC timestamps with microseconds (`2026-11-27T14:13:02.251490Z`), the date and
    time of day formatted once per second: `datetime.now().isoformat()` per line cost ~1 us.
    Each `Output` owns one, shared by its structlog chain and its `LineLogger`s."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"

    def stamp(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        """The structlog processor: the `timestamp` field."""
        event["timestamp"] = self.now()
        return event


def _dumps(obj: Any, **kw: Any) -> str:
    """JSON for a log line: orjson (~10x faster than `json.dumps`), else the standard encoder
    for what orjson refuses (lone surrogates from undecodable bytes, integers over 64 bits)."""
    default = kw.get("default")
    try:
        return orjson.dumps(obj, default=default).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, **kw)


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
    return [structlog.processors.format_exc_info], structlog.processors.JSONRenderer(_dumps)


class Output:
    """Where and how this process logs, as `configure` chose it: the stream, the level, JSON or
    console, the per-process fields (pid, worker index) and the clock. Built only by
    `configure`, which installs it as structlog's logger factory (so `output()` finds it)."""

    __slots__ = ("clock", "json", "level", "process", "stream")

    def __init__(
        self, stream: TextIO, level: int, json_lines: bool, process: dict[str, Any]
    ) -> None:
        self.stream = stream
        self.level = level
        self.json = json_lines
        self.process = process
        self.clock = _Clock()

    def __call__(self, *args: Any) -> structlog.WriteLogger:
        """structlog's logger factory (`structlog.WriteLoggerFactory`'s contract)."""
        return structlog.WriteLogger(self.stream)


def configure(
    settings: Settings, stream: TextIO | None = None, *, worker: int | None = None
) -> Output:
    """Configure structlog and the stdlib root logger to write to `stream` (stderr); the
    `Output` this chose, for the `LineLogger`s (`Recorder`s) the process builds.

    Every line carries the process id, and `worker` (its index) in a worker process.
    """
    stream = stream or sys.stderr
    process: dict[str, Any] = {"pid": os.getpid()}
    if worker is not None:
        process["worker"] = worker
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    extra, renderer = _renderer(settings, stream)
    made = Output(stream, level, isinstance(renderer, structlog.processors.JSONRenderer), process)
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        made.clock.stamp,
        _add_process(process),
    ]
    structlog.configure(
        processors=[*shared, *extra, _scrub_free_text, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=made,
        # The per-request logger is bound once at start-up (`get_logger`); module-level loggers
        # only log rare events, so they may follow a later `configure` (tests reconfigure).
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib(level, stream, [*shared, structlog.stdlib.add_logger_name], extra, renderer)
    return made


def output() -> Output | None:
    """The `Output` of the configuration in force: the last `configure`'s, or None when
    structlog was never configured by `configure` or was reset or reconfigured since (tests)."""
    factory = structlog.get_config()["logger_factory"]
    return factory if isinstance(factory, Output) else None


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


_BATCH_LINES = 256  # at most this many lines wait for the end of a loop iteration
_LEVEL_NAMES = {
    level: logging.getLevelName(level).lower()
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}


class LineLogger:
    """A logger for one high-volume event (the per-request line), writing to `output`.

    With a JSON `Output` the line is built as one dict and rendered at once: the same keys in
    the same order, the same timestamp, scrubbing, serializer and sink as the structlog chain
    `configure` sets up, without the chain's three copies of the fields (it costs a third as
    much; tests/test_log.py holds the two equal). With a console `Output` the line goes through
    structlog's chain. Without an `Output` (a process that never called `configure`: tools,
    tests) every line goes through structlog's chain as configured when the line is written,
    so a logger built before `configure` still writes where and how `configure` said, at the
    chain's cost.

    Under an event loop, JSON lines are written together at the end of the loop iteration that
    made them (one write and flush instead of one per request: under load the write syscall
    cost more than building the line). `flush()` writes what is pending at once; the app calls
    it when it stops.
    """

    def __init__(self, name: str, output: Output | None) -> None:
        self._name = name
        # The console format's chain, bound now; None without an output (bound per line).
        self._bound = get_logger(name) if output is not None else None
        self._direct = output if output is not None and output.json else None
        self._sink = structlog.WriteLogger(output.stream if output is not None else None)
        self._pending: list[str] = []

    def enabled(self, level: int) -> bool:
        if self._direct is not None:
            return level >= self._direct.level
        return (self._bound or get_logger(self._name)).is_enabled_for(level)

    def log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        """Write `event` with `fields` at `level` (a stdlib level number), if that is enabled."""
        direct = self._direct
        if direct is None:
            (self._bound or get_logger(self._name)).log(level, event, **fields)
            return
        if level < direct.level:
            return
        line = {"logger": self._name, **fields, "event": event, "level": _LEVEL_NAMES[level]}
        line["timestamp"] = direct.clock.now()
        line.update(direct.process)
        # `event` is the caller's literal: of the free text, only the fields need scrubbing.
        for key in ("error", "exception"):
            value = line.get(key)
            if isinstance(value, str):
                line[key] = scrub(value)
        pending = self._pending
        pending.append(_dumps(line, default=repr))  # like structlog's JSONRenderer fallback
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop in this thread: write now
                self.flush()
        elif len(pending) >= _BATCH_LINES:
            self.flush()

    def flush(self) -> None:
        """Write the pending lines (one write, one flush)."""
        if self._pending:
            text = "\n".join(self._pending)
            self._pending.clear()
            self._sink.msg(text)
