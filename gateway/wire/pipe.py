"""A bounded byte pipe between a Protocol's `data_received` and one reading coroutine.

OWNS: back-pressure on one direction of one connection. The producer (a parser callback)
`put`s chunks; over `high` buffered bytes it calls `pause()` (the transport's `pause_reading`),
and once the reader has taken the buffer below `low` it calls `resume()`. The reader `await
read(timeout)`s the next chunk; `b""` is the end of the message. `fail(exc)` makes the next
read raise `exc` (the connection broke, or the message's framing did).
MAY IMPORT: the standard library only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

__all__ = ["Pipe", "PipeTimeout"]

HIGH = 256 * 1024


class PipeTimeout(TimeoutError):
    """The producer stayed silent for the reader's whole timeout."""


class Pipe:
    """See the module docstring. Not thread-safe; one reader at a time."""

    __slots__ = (
        "_chunks",
        "_error",
        "_loop",
        "_pause",
        "_paused",
        "_resume",
        "_waiter",
        "buffered",
        "done",
        "received",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._pause = pause
        self._resume = resume
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False
        self.buffered = 0
        self.received = 0  # every byte ever put
        self.done = False  # the producer has put its last chunk

    # ---- producer side

    def put(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.buffered += len(chunk)
        self.received += len(chunk)
        if self.buffered > HIGH and not self._paused:
            self._paused = True
            self._pause()
        self._wake()

    def end(self) -> None:
        self.done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self._error = exc
            self.done = True
        self._wake()

    # ---- reader side

    @property
    def finished(self) -> bool:
        """Every chunk has been read and the end (or a failure) is known."""
        return self.done and not self._chunks

    @property
    def failed(self) -> bool:
        return self._error is not None

    def read_nowait(self) -> bytes | None:
        """All chunks buffered now joined (None when there is none and no end yet; b"" at the
        end). Raises the producer's failure once the buffer is empty."""
        if self._chunks:
            return self._take()
        if self._error is not None:
            raise self._error
        return b"" if self.done else None

    async def read(self, within: float | None) -> bytes:
        """The next bytes (b"" at the end); `PipeTimeout` after `within` seconds of silence."""
        data = self.read_nowait()
        while data is None:
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(within, _expire, waiter) if within is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            data = self.read_nowait()
        return data

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self._paused and not self.done:
            self._paused = False
            self._resume()
        return data

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(PipeTimeout())
