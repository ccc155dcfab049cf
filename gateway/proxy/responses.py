"""Responses the gateway makes itself: a refusal `Decision` rendered as GitLab's JSON error.

GitLab's API answers errors as `{"message":"<status> <phrase>[ - detail]"}` (lib/api/helpers.rb
`render_api_error!`, `bad_request!`, `unauthorized!`, `forbidden!`); the message is the
Decision's, built by `gitlab_message` (gateway/core/decision.py, re-exported here). Every
response the gateway makes (as opposed to forwards) carries `X-Gateway-Reason: <reason code>`,
so a client or an operator can always tell the gateway's answer from the upstream's; it also
carries the request id.
"""

from __future__ import annotations

import json

from aiohttp import web

from gateway.core.decision import Decision, Reason, gitlab_message

__all__ = ["REASON_HEADER", "REQUEST_ID_HEADER", "gitlab_message", "refusal"]

REASON_HEADER = "X-Gateway-Reason"
REQUEST_ID_HEADER = "X-Request-Id"


def refusal(decision: Decision, request_id: str | None = None) -> web.Response:
    """The gateway's answer to a refused request: `decision.status`, its message (GitLab's text
    for the status when it has none) and its reason code; `Connection: close` when
    `decision.close`."""
    status = decision.status or 403  # an allowing Decision is never answered: fail closed
    # Compact, as Grape's JSON error formatter writes it (`Grape::Json.dump`): GitLab's bodies
    # are `{"message":"403 Forbidden - …"}`, byte for byte.
    message = decision.message or gitlab_message(status)
    body = json.dumps({"message": message}, separators=(",", ":"))
    response = web.Response(status=status, text=body, content_type="application/json")
    reason = decision.reason
    if reason is Reason.TOKEN_REVOKED:
        # The answer stays GitLab's (and an unknown token's) to the client: only the log line
        # and the metrics tell a revoked token from an unknown one.
        reason = Reason.TOKEN_INVALID
    response.headers[REASON_HEADER] = reason.value
    response.headers["Cache-Control"] = "no-cache"
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    if decision.close:
        response.force_close()  # says `Connection: close`
    return response
