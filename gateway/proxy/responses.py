"""Responses the gateway makes itself: GitLab-shaped JSON errors, always with a reason header.

GitLab's API answers errors as `{"message":"<status> <phrase>[ - detail]"}` (lib/api/helpers.rb
`render_api_error!`, `bad_request!`, `unauthorized!`, `forbidden!`). Every response the gateway
makes (as opposed to forwards) carries `X-Gateway-Reason: <reason code>`, so a client or an
operator can always tell the gateway's answer from the upstream's; it also carries the request id.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web

from gateway.core.decision import STATUS, Reason

__all__ = ["REASON_HEADER", "REQUEST_ID_HEADER", "gitlab_message", "refusal"]

REASON_HEADER = "X-Gateway-Reason"
REQUEST_ID_HEADER = "X-Request-Id"

# GitLab's own wording where it differs from the HTTP reason phrase (lib/api/helpers.rb).
_GITLAB_PHRASES = {400: "Bad request", 413: "Request Entity Too Large"}


def gitlab_message(status: int, detail: str | None = None) -> str:
    """`"403 Forbidden"`, or `"400 Bad request - <detail>"` when a detail is given."""
    phrase = _GITLAB_PHRASES.get(status) or HTTPStatus(status).phrase
    head = f"{status} {phrase}"
    return f"{head} - {detail}" if detail else head


def refusal(
    reason: Reason,
    message: str | None = None,
    *,
    status: int | None = None,
    request_id: str | None = None,
) -> web.Response:
    """A gateway-made JSON error. `status` defaults to the reason's (`decision.STATUS`) and the
    message to GitLab's text for that status. Never put a credential in `message`."""
    status = status or STATUS.get(reason, 403)
    # Compact, as Grape's JSON error formatter writes it (`Grape::Json.dump`): GitLab's bodies
    # are `{"message":"403 Forbidden - …"}`, byte for byte.
    body = json.dumps({"message": message or gitlab_message(status)}, separators=(",", ":"))
    response = web.Response(status=status, text=body, content_type="application/json")
    response.headers[REASON_HEADER] = reason.value
    response.headers["Cache-Control"] = "no-cache"
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response
