"""Checking a streamed multipart/form-data body by the token rules, part by part, as it goes.

A body too large to buffer (a PyPI or NuGet upload of hundreds of MB, or any chunked one) is
decided on its request's headers and query; the proxy then forwards it through a `Guard`
(gateway/proxy/handler.py, gateway/proxy/forward.py `BodyInspector`). The guard feeds each chunk to a
`multipart.Scanner`, the same strict reader buffered bodies get, and judges every watched part
with the gate's `tokens.Reader` (`Gate.tokens`), the rules buffered bodies get. A part reported by `feed(chunk)` is
complete only in `chunk`: the caller must check before it forwards that chunk, and call `end()`
before the last one, so that the upstream never receives a complete request that carries
something the gateway refused. A refusal is a `Decision` (400, GitLab's message): the guard's
`violation`, and the `Refused` exception carries it out of the forwarding stream.

Pure: no aiohttp, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core import multipart, params, tokens
from gateway.core.decision import Decision, Reason, refuse
from gateway.core.request import RequestView
from gateway.errors import GatewayError

__all__ = ["MAX_WATCHED", "Guard", "Refused"]

MAX_WATCHED = 16  # distinct credential parts in one streamed body


class Refused(GatewayError):
    """`Guard` refused the body: the upload must stop before its current chunk is forwarded.
    An exception only to leave the stream; `violation` is the refusal's Decision."""

    def __init__(self, violation: Decision) -> None:
        super().__init__(violation.message)
        self.violation = violation


_TOO_LATE = (
    "A CI/CD job token in a multipart body that is streamed (chunked, or over the inspection "
    "limit) cannot be authorized before it is forwarded; send the token in the JOB-TOKEN or "
    "Authorization header."
)


class Guard:
    """A multipart/form-data body checked as it is forwarded, by the rules its request's headers
    and query were judged by (`view`, without a body).

    Every watched part goes through `reader.extract` with the view, as buffered bodies do (the
    gate's reader, `Gate.tokens`, so the same job-token prefix and route families): the
    same job token as the one decided on passes; a different one or another credential next to
    it is `credential_conflict`; a job token where the decision saw none is
    `token_in_streamed_body` (the decision was made without it); `_method` on a POST and any
    malformed structure are `bad_body`. `feed`/`end` raise `Refused` (enforce), or only record
    the first `violation` and stop checking (`enforce=False`, dry-run).
    """

    def __init__(
        self, view: RequestView, boundary: str, reader: tokens.Reader, *, enforce: bool = True
    ) -> None:
        self._view = view
        self._tokens = reader
        self._decided = reader.extract(view)
        self._scanner = multipart.Scanner(boundary, params.reads_param)
        self._params: dict[tuple[str, object], None] = {}  # ordered, without repeats
        self._enforce = enforce
        self.violation: Decision | None = None

    def feed(self, chunk: bytes) -> None:
        """Check `chunk` before it is forwarded."""
        if self.violation is not None:
            return
        try:
            fields = self._scanner.feed(chunk)
        except multipart.MultipartError as exc:
            self._refuse(Reason.BAD_BODY, str(exc))
            return
        if fields:
            self._check(fields)

    def end(self) -> None:
        """The body is complete: check that before its last byte is forwarded."""
        if self.violation is None:
            try:
                self._scanner.finish()
            except multipart.MultipartError as exc:
                self._refuse(Reason.BAD_BODY, str(exc))

    def _check(self, fields: Sequence[multipart.Field]) -> None:
        for field in fields:
            self._params.update(dict.fromkeys(params.part_params(field.name, field.value)))
        if len(self._params) > MAX_WATCHED:
            self._refuse(Reason.BAD_BODY, "too many credential fields")
            return
        try:
            found = self._tokens.extract(self._view, list(self._params))
        except params.BodyError as exc:
            self._refuse(Reason.BAD_BODY, str(exc))
            return
        if tokens.same_credential(found, self._decided):
            return
        if isinstance(found, tokens.Conflict):
            detail = f"Conflicting credentials: {found.detail}."
            self._refuse(Reason.CREDENTIAL_CONFLICT, detail)
        else:  # a job token (or a malformed one) the decision did not see
            self._refuse(Reason.TOKEN_IN_STREAMED_BODY, _TOO_LATE)

    def _refuse(self, reason: Reason, detail: str) -> None:
        self.violation = refuse(reason, detail)  # 400: every reason it refuses with
        if self._enforce:
            raise Refused(self.violation)
