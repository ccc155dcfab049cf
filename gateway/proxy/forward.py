"""The forwarding leg: send the authorized request upstream and stream the answer back.

`Forwarder` is the interface the handler calls; `ClientForwarder` implements it with one
aiohttp `ClientSession`. What it guarantees (reference aiohttp-proxying.md §1, §6):
- the request-target goes upstream byte-for-byte (`raw_path`, `encoded=True`, no join/params);
- headers stay multidicts; hop-by-hop and Connection-listed headers are dropped both ways;
- bodies stream both ways with bounded memory and are never decompressed or recompressed;
- failures before the response starts raise `UpstreamError` / `BodyTooLarge` (the handler
  answers 502/504/413); after it started, the client connection is aborted so a truncated body
  never looks complete, and `Transfer.error` says what happened;
- a `BodyInspector` (a streamed multipart body, `gateway.proxy.bodyguard.Guard`) sees every chunk
  before it goes upstream, and the end of the body before its last chunk does: when it raises,
  the upstream connection is closed with the request incomplete and its error is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from gateway.core.request import RequestView
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from gateway.ops import metrics
from gateway.proxy.headers import HeaderPolicy
from gateway.proxy.responses import REQUEST_ID_HEADER
from gateway.settings import Settings

__all__ = [
    "SMALL_BODY",
    "BodyInspector",
    "BodyTooLarge",
    "ClientBodyError",
    "ClientForwarder",
    "Forwarder",
    "Transfer",
    "UpstreamBadResponse",
    "inspect_chunk",
    "open_session",
]

# Upstream response headers can be larger than a client's (GitLab's Content-Security-Policy,
# pagination `Link`); aiohttp's client refuses lines over 8190 bytes by default (§1.23).
UPSTREAM_MAX_HEADER = 65536
# Upstream answers up to this size (with a Content-Length) are buffered and sent in one write.
SMALL_BODY = 64 * 1024
# The client must add nothing of its own (§1.9): no Accept, Accept-Encoding, User-Agent, and no
# Content-Type on streamed bodies.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

_log = structlog.get_logger("gateway.forward")


class BodyTooLarge(GatewayError):
    """The streamed request body went over `max_body_size` (-> 413 if nothing was sent back yet)."""


class ClientBodyError(GatewayError):
    """The client's request body failed (disconnect, broken chunked framing, or it stalled for
    `client_body_timeout`: `timed_out`) while forwarding."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class UpstreamBadResponse(UpstreamError):
    """The upstream answered with something that is not a valid response (-> 502)."""


@dataclass(slots=True)
class Transfer:
    """One forwarding leg: created with the request id, filled in with what happened."""

    request_id: str
    status: int = 0  # the status sent to the client, once its headers went out
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_seconds: float | None = None
    error: str | None = None
    body_failure: GatewayError | None = None


class BodyInspector(Protocol):
    """Checks a streamed request body on its way upstream (raises a `GatewayError` to stop it)."""

    def feed(self, chunk: bytes) -> None:
        """Called before `chunk` is forwarded; raising keeps it from the upstream."""

    def end(self) -> None:
        """Called before the body's last chunk is forwarded (and again at its end)."""


class Forwarder(Protocol):
    async def forward(
        self,
        request: web.BaseRequest,
        view: RequestView,
        transfer: Transfer,
        inspector: BodyInspector | None = None,
    ) -> web.StreamResponse:
        """Forward the authorized `view` (its target, headers and, if set, its body buffer);
        a streamed body goes through `inspector` when one is given.

        Raises `UpstreamError`/`BodyTooLarge`/`ClientBodyError` (or the inspector's error) only
        before the response has started; later failures abort the client connection and are
        recorded in `transfer`.
        """
        ...


def open_session(settings: Settings) -> aiohttp.ClientSession:
    """The one upstream session of a worker: a keep-alive pool, no cookies, no transformations."""
    connector = aiohttp.TCPConnector(
        limit=settings.pool_limit, keepalive_timeout=settings.keepalive_timeout
    )
    return aiohttp.ClientSession(
        connector=connector,
        # total=None: a multi-GB transfer must not be cut at 5 minutes (§1.19).
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
        ),
        auto_decompress=False,  # pass Content-Encoding through untouched (§1.10)
        cookie_jar=aiohttp.DummyCookieJar(),  # one client's cookies never reach another's request
        skip_auto_headers=SKIP_AUTO_HEADERS,
        max_line_size=UPSTREAM_MAX_HEADER,
        max_field_size=UPSTREAM_MAX_HEADER,
        trust_env=False,  # HTTP(S)_PROXY in the environment must not reroute the upstream leg
    )


class ClientForwarder:
    """`Forwarder` over an aiohttp `ClientSession`."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession, headers: HeaderPolicy):
        if settings.upstream is None:
            raise ValueError("ClientForwarder needs settings.upstream")
        self._base = settings.upstream
        self._session = session
        self._headers = headers
        self._max_body = settings.max_body_size
        self._body_timeout = settings.client_body_timeout

    async def forward(
        self,
        request: web.BaseRequest,
        view: RequestView,
        transfer: Transfer,
        inspector: BodyInspector | None = None,
    ) -> web.StreamResponse:
        upstream = await self._send(request, view, transfer, inspector)
        try:
            return await self._relay(request, upstream, transfer)
        except BaseException:
            upstream.close()  # cancelled (client gone): the upstream sees the disconnect (§1.22)
            raise
        finally:
            upstream.release()

    async def _send(
        self,
        request: web.BaseRequest,
        view: RequestView,
        transfer: Transfer,
        inspector: BodyInspector | None,
    ) -> aiohttp.ClientResponse:
        # SECURITY: concatenate, never URL.join or params=: `//evil.example/x` must stay a path on
        # the upstream (SSRF), and encoded=True keeps %2F, %7E, %ZZ, + byte-for-byte (§1.2, §1.3).
        url = URL(self._base + view.target, encoded=True)
        headers = self._headers.outbound(request, view.headers, transfer.request_id)
        leg = _Leg()
        started = perf_counter()
        try:
            response = await self._session.request(
                view.method,
                url,
                headers=headers,
                data=self._body(request, view, transfer, inspector, leg),
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_send_error(exc, transfer) from exc
        transfer.upstream_seconds = perf_counter() - started
        leg.response = response
        return response

    def _body(
        self,
        request: web.BaseRequest,
        view: RequestView,
        transfer: Transfer,
        inspector: BodyInspector | None,
        leg: _Leg,
    ) -> bytes | AsyncIterator[bytes] | None:
        if view.body is not None:  # authorized from this buffer: forward exactly these bytes
            transfer.bytes_in = len(view.body)
            # An empty buffer of a request without framing (a GET with a JSON Content-Type) is
            # no body: `b""` would make aiohttp add `Content-Length: 0` the client never sent.
            return view.body if view.body or request.body_exists else None
        if not request.body_exists:
            return None
        upload = _Upload(inspector, leg)
        return self._stream(request.content, transfer, upload, request.content_length)

    async def _stream(
        self,
        content: aiohttp.StreamReader,
        transfer: Transfer,
        upload: _Upload,
        length: int | None = None,
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks(content, transfer, upload.inspector, length):
                yield chunk
        except GatewayError:
            if upload.leg.response is not None:
                # The upstream answered before the body failed: aiohttp's writer only marks the
                # connection, so the upstream would wait for the rest and the relay for it. Close
                # it: the relay then aborts the client (§1.15), the upstream sees a cut body.
                upload.leg.response.close()
            raise

    async def _chunks(
        self,
        content: aiohttp.StreamReader,
        transfer: Transfer,
        inspector: BodyInspector | None,
        length: int | None,
    ) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = content.read_nowait()  # what has arrived already needs no timer
                if not chunk and not content.is_eof():
                    async with asyncio.timeout(self._body_timeout):
                        chunk = await content.readany()
            except TimeoutError as exc:  # a stalled upload must not hold two connections open
                transfer.body_failure = ClientBodyError("client_body_timeout", timed_out=True)
                raise transfer.body_failure from exc
            except Exception as exc:  # client disconnected or broke its chunked framing
                transfer.body_failure = ClientBodyError(type(exc).__name__)
                raise transfer.body_failure from exc
            if not chunk:
                if inspector is not None:
                    inspect_chunk(
                        inspector, None, transfer
                    )  # before aiohttp ends the body upstream
                return
            transfer.bytes_in += len(chunk)
            if self._max_body and transfer.bytes_in > self._max_body:
                transfer.body_failure = BodyTooLarge(f"request body over {self._max_body} bytes")
                raise transfer.body_failure
            if inspector is not None:
                # The last chunk completes a Content-Length body upstream: the end is judged
                # before it goes (the parser has fed EOF by the time readany returns it).
                last = content.at_eof() or (length is not None and transfer.bytes_in >= length)
                inspect_chunk(inspector, chunk, transfer, last=last)
            yield chunk

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, transfer: Transfer
    ) -> web.StreamResponse:
        headers = self._headers.response(upstream.headers)
        body, failure = None, None
        if _small(request, upstream):
            try:
                body = await upstream.content.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                failure = _UpstreamBodyFailed(type(exc).__name__)
        response = (
            web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            if body is None
            else web.Response(
                body=body, status=upstream.status, reason=upstream.reason, headers=headers
            )
        )
        response.headers[REQUEST_ID_HEADER] = transfer.request_id  # the gateway's, as on refusals
        try:
            await response.prepare(request)  # a StreamResponse sends its headers now
            transfer.status = upstream.status
            if failure is not None:
                raise failure
            if body is not None:
                transfer.bytes_out = len(body)  # goes out with the headers in write_eof
            elif request.method != "HEAD":
                await _copy(upstream, response, transfer)
            await response.write_eof()
        except ConnectionError:  # the client went away: nobody is left to tell (§1.22)
            transfer.error = "client_disconnected"
            upstream.close()
        except _UpstreamBodyFailed as exc:
            if transfer.body_failure is not None:  # our side stopped the upload (see _stream)
                transfer.error = f"request_body_failed: {transfer.body_failure}"
            else:
                transfer.error = f"upstream_body_failed: {exc}"
                metrics.UPSTREAM_ERRORS.labels("upstream_body_failed").inc()
            _abort(request, upstream)
        except Exception as exc:  # a fault after the headers went out: same rule, abort
            transfer.error = f"internal_error: {type(exc).__name__}"
            _log.exception("relay_failed", request_id=transfer.request_id)
            _abort(request, upstream)
        return response


def _small(request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> bool:
    """A body to read whole and send with its headers in one write: framed by a Content-Length
    up to SMALL_BODY (a StreamResponse writes its headers on their own, one more send per
    request; reference aiohttp-proxying.md §3). Larger or unframed bodies stream as they come."""
    length = upstream.content_length
    return (
        length is not None
        and 0 < length <= SMALL_BODY
        and request.method != "HEAD"
        and upstream.status >= 200
        and upstream.status not in (204, 304)
    )


@dataclass(slots=True)
class _Leg:
    """The upstream's response, once it has started (the body may still be streaming)."""

    response: aiohttp.ClientResponse | None = None


@dataclass(frozen=True, slots=True)
class _Upload:
    inspector: BodyInspector | None
    leg: _Leg


def inspect_chunk(
    inspector: BodyInspector, chunk: bytes | None, transfer: Transfer, *, last: bool = True
) -> None:
    """Run the inspector on `chunk` (None: the end of the body); its refusal stops the upload
    and is kept in `transfer.body_failure` (both engines' upload loops)."""
    try:
        if chunk is not None:
            inspector.feed(chunk)
        if last:
            inspector.end()
    except GatewayError as exc:
        transfer.body_failure = exc
        raise


class _UpstreamBodyFailed(Exception):
    """Reading the upstream body failed after the response started."""


async def _copy(
    upstream: aiohttp.ClientResponse, response: web.StreamResponse, transfer: Transfer
) -> None:
    content = upstream.content
    while True:
        try:
            chunk = await content.readany()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _UpstreamBodyFailed(type(exc).__name__) from exc
        if not chunk:
            return
        transfer.bytes_out += len(chunk)
        await response.write(chunk)  # waits for the client to drain: memory stays bounded


def _abort(request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> None:
    # SECURITY: never let aiohttp finish a truncated body as if it were complete (§1.15; Home
    # Assistant ingress swallowed ClientPayloadError and served silently truncated files).
    upstream.close()
    if request.transport is not None:
        request.transport.abort()


def _map_send_error(exc: BaseException, transfer: Transfer) -> GatewayError:
    """What a failure before the upstream's response headers means, as a gateway error."""
    if transfer.body_failure is not None:  # our own body stream stopped the request
        return transfer.body_failure
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnreachable(f"{type(exc).__name__}: {exc.os_error.strerror or exc}")
    if isinstance(exc, asyncio.TimeoutError):  # includes ServerTimeoutError and its subclasses
        return UpstreamTimeout(type(exc).__name__)
    return UpstreamBadResponse(type(exc).__name__)
