"""The vocabulary of verdicts: stable reason codes, GitLab's messages and the `Decision` value.

A denial is a value, not an exception, and it has one shape wherever it starts: a `Decision`
with its reason, its status (`Decision.status`: the reason's in `STATUS`, or the explicit one it
carries), its GitLab-shaped message (always built by `gitlab_message`) and its audit. The gate
and the policy make them; so do the proxy's checks before the gate (`refuse`), its body guard,
and the route table's target refusals (`bad_target`, the one place a
`gateway.routing.targets.Refusal` becomes a Decision). A listener only renders one
(gateway/proxy/responses.py `refusal`). Reason codes are grep-able and appear unchanged in logs,
metric labels, the `X-Gateway-Reason` header and the README's troubleshooting table.
"""

from __future__ import annotations

from enum import StrEnum
from http import HTTPStatus
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from gateway.routing.targets import Refusal

__all__ = [
    "STATUS",
    "Audit",
    "Decision",
    "Reason",
    "bad_target",
    "gitlab_message",
    "make_audit",
    "make_decision",
    "refuse",
]

# `tuple.__new__(Audit, (...))`: see "hot-path constructors" below.
_new = tuple.__new__


class Reason(StrEnum):
    # allowed
    NO_TOKEN = "no_token"
    OWN_PROJECT = "own_project"
    ALLOWLIST_DISABLED = "allowlist_disabled"
    DEFAULT_PERMISSIONS = "default_permissions"
    POLICIES_GRANTED = "policies_granted"
    UNCONTROLLED_ENDPOINT = "uncontrolled_endpoint"
    GIT_HTTP = "git_http"
    OWN_JOB = "own_job"  # a runner route on the token's own job (authenticate_job!)
    RUNNER_TOKEN = "runner_token"  # a runner route whose `token` is the runner's credential
    TRIGGER_TOKEN = "trigger_token"  # the trigger route's `token` is not a job token
    PUBLIC_ACCESS = "public_access"  # a public/internal project's rights for non-admitted sources
    PACKAGE_NOT_FOUND = "package_not_found"  # group/instance package route: no package, no project
    # refused before any lookup
    BAD_TARGET = "bad_target"
    CREDENTIAL_CONFLICT = "credential_conflict"
    BAD_BODY = "bad_body"  # a form/JSON body inspected for tokens does not parse
    BODY_NOT_INSPECTABLE = "body_not_inspectable"
    # a job token in a streamed multipart body, where the decision (on headers) saw none
    TOKEN_IN_STREAMED_BODY = "token_in_streamed_body"
    BODY_TOO_LARGE = "body_too_large"
    UPGRADE_REFUSED = "upgrade_refused"
    BAD_FRAMING = "bad_framing"  # HTTP/0.9, Transfer-Encoding in HTTP/1.0, a coding not chunked
    CLIENT_TIMEOUT = "client_timeout"  # the client stalled while sending its body
    TOKEN_REQUIRED = "token_required"
    # denied after resolution
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"  # revoked in the store: GitLab's 401, a distinct log reason
    ROUTE_NOT_AVAILABLE = "route_not_available"
    NOT_ALLOWLISTED = "not_allowlisted"
    INSUFFICIENT_PERMISSIONS = "insufficient_permissions"
    NO_PERMISSIONS_GRANTED = "no_permissions_granted"
    REGISTRY_OTHER_PROJECT = "registry_other_project"
    TARGET_UNRESOLVED = "target_unresolved"
    JOB_TOKEN_MISMATCH = "job_token_mismatch"  # a runner route on another job than the token's
    PROJECT_NOT_FOUND = "project_not_found"  # npm dist-tags, no such package: GitLab's 404
    # infrastructure
    STORE_UNAVAILABLE = "store_unavailable"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_BAD_RESPONSE = "upstream_bad_response"  # closed early, garbage, oversized headers
    INTERNAL_ERROR = "internal_error"  # a gateway fault before forwarding: fail closed
    OVERLOADED = "overloaded"  # over `max_connections`: refused before reading a request
    DRAIN_CUT = "drain_cut"  # still running when SIGTERM's grace period ended: answered 503 or cut
    # the decision listener (gateway/authz)
    UNTRUSTED_PEER = "untrusted_peer"  # asked by a peer not in `decision_trusted_peers`
    BAD_CHECK_REQUEST = "bad_check_request"  # original method/target missing or ambiguous
    BODY_NOT_VISIBLE = "body_not_visible"  # a body that may carry a token did not come along
    REINTERPRETING_HEADER = "reinterpreting_header"  # a method-override/URL-rewrite header


# The status a gateway-made response carries for each non-allowing reason.
STATUS: dict[Reason, int] = {
    Reason.BAD_TARGET: 400,
    Reason.CREDENTIAL_CONFLICT: 400,
    Reason.BAD_BODY: 400,
    Reason.BODY_NOT_INSPECTABLE: 413,
    Reason.TOKEN_IN_STREAMED_BODY: 400,
    Reason.BODY_TOO_LARGE: 413,
    Reason.UPGRADE_REFUSED: 400,
    Reason.BAD_FRAMING: 400,
    Reason.CLIENT_TIMEOUT: 408,
    Reason.TOKEN_REQUIRED: 401,
    Reason.TOKEN_INVALID: 401,
    Reason.TOKEN_EXPIRED: 401,
    Reason.TOKEN_REVOKED: 401,
    Reason.ROUTE_NOT_AVAILABLE: 403,
    Reason.NOT_ALLOWLISTED: 403,
    Reason.INSUFFICIENT_PERMISSIONS: 403,
    Reason.NO_PERMISSIONS_GRANTED: 403,
    Reason.REGISTRY_OTHER_PROJECT: 403,
    Reason.TARGET_UNRESOLVED: 403,
    Reason.JOB_TOKEN_MISMATCH: 403,
    Reason.PROJECT_NOT_FOUND: 404,
    Reason.STORE_UNAVAILABLE: 503,
    Reason.UPSTREAM_UNREACHABLE: 502,
    Reason.UPSTREAM_TIMEOUT: 504,
    Reason.UPSTREAM_BAD_RESPONSE: 502,
    Reason.INTERNAL_ERROR: 500,
    Reason.OVERLOADED: 503,
    Reason.DRAIN_CUT: 503,
    Reason.UNTRUSTED_PEER: 403,
    Reason.BAD_CHECK_REQUEST: 403,
    Reason.BODY_NOT_VISIBLE: 403,
    Reason.REINTERPRETING_HEADER: 403,
}


class Audit(NamedTuple):
    """What the log line and `check` report about a decision (never a raw token)."""

    fingerprint: str | None = None
    job_id: int | None = None
    source_project: str | None = None
    target: str | None = None
    route: str | None = None
    required: tuple[str, ...] = ()
    granted: tuple[str, ...] = ()
    # The ids behind `source_project` and `target_project` (the target's only when the store
    # knows it), so offline tools (`suggest`, `audit`) never have to parse a label.
    source_project_id: int | None = None
    target_project_id: int | None = None

    def with_granted(self, granted: tuple[str, ...]) -> Audit:
        """This audit with `granted` set (once per request the policy reaches an allowlist
        entry): unpacking reads the fields for ~0.35 us, where nine attribute reads and
        `make_audit` take ~0.55 us and `self._replace(granted=...)` ~1.4 us."""
        fp, job_id, source, target, route, required, _, source_id, target_id = self
        return _new(
            Audit, (fp, job_id, source, target, route, required, granted, source_id, target_id)
        )


# GitLab's own wording where it differs from the HTTP reason phrase (lib/api/helpers.rb).
_GITLAB_PHRASES = {400: "Bad request", 413: "Request Entity Too Large"}


def gitlab_message(status: int, detail: str | None = None) -> str:
    """`"403 Forbidden"`, or `"400 Bad request - <detail>"` when a detail is given: GitLab's
    `render_api_error!` text (lib/api/helpers.rb `bad_request!`, `unauthorized!`, `forbidden!`)."""
    phrase = _GITLAB_PHRASES.get(status) or HTTPStatus(status).phrase
    head = f"{status} {phrase}"
    return f"{head} - {detail}" if detail else head


class Decision(NamedTuple):
    """The verdict on one request, and the one value for "no" (see the module docstring).

    `message` is the GitLab-shaped `{"message": ...}` text (empty: `gitlab_message(status)`).
    `explicit_status` is set only where the answer's status is not the reason's (`STATUS`): 501
    for a transfer coding the gateway does not know, a listener's own machinery refusals.
    `close`: the listener answers and closes the connection without reading on (framing it
    cannot trust, a tunnel or upgrade request, a stalled upload, a refused 100-continue).

    A NamedTuple, like `Audit`: immutable, hashable and equal by value. A tuple also equals a
    plain tuple of the same items; nothing compares a Decision with anything but a Decision, and
    the gate tells a Decision from its other results with `isinstance(..., Decision)`. Derive a
    changed copy with `decision._replace(...)` (not `dataclasses.replace`).
    """

    allowed: bool
    reason: Reason
    message: str = ""
    audit: Audit = Audit()  # immutable, so one shared default is safe
    explicit_status: int | None = None
    close: bool = False

    @property
    def status(self) -> int | None:
        """The status of the gateway's own answer, or None when the request is forwarded: the
        one place a refusal's status is chosen."""
        if self.allowed:
            return None
        return self.explicit_status or STATUS.get(self.reason, 403)


def refuse(
    reason: Reason,
    detail: str | None = None,
    *,
    status: int | None = None,
    close: bool = False,
    audit: Audit | None = None,
) -> Decision:
    """A refusal made outside the policy (target, framing, body, listener faults): GitLab's
    message for its status (`status`, else the reason's), with `detail` after it. Never put a
    credential in `detail`."""
    message = gitlab_message(status or STATUS.get(reason, 403), detail)
    return Decision(False, reason, message, audit or Audit(), status, close)


def bad_target(refusal: Refusal, audit: Audit | None = None) -> Decision:
    """A request-target the route table refuses (`gateway.routing.targets`), as the 400
    `bad_target` Decision: the one converter, used by the gate and the proxy's precheck."""
    return refuse(Reason.BAD_TARGET, refusal.detail, audit=audit)


# --- hot-path constructors
# The gate and the policy build an Audit and a Decision (sometimes two Audits) per request.
# `tuple.__new__(Audit, (...))` builds the NamedTuple without its generated `__new__` (a Python
# function taking keywords and defaults), as aiohttp builds its `WSMessage`s
# (aiohttp/_websocket/reader_py.py, `TUPLE_NEW`). Measured on CPython 3.11 (9 fields):
# `Audit(...)` ~260 ns, this ~100-170 ns; a frozen dataclass's `__init__` (one
# `object.__setattr__` per field) took ~1,200 ns.
# A field added to a class must be added here too: tests/test_values.py holds each constructor
# equal to the value built by keywords.


def make_audit(
    fingerprint: str | None,
    job_id: int | None,
    source_project: str | None,
    target: str | None,
    route: str | None,
    required: tuple[str, ...],
    granted: tuple[str, ...],
    source_project_id: int | None = None,
    target_project_id: int | None = None,
) -> Audit:
    """`Audit(...)` with every field given, for the hot path."""
    return _new(
        Audit,
        (
            fingerprint,
            job_id,
            source_project,
            target,
            route,
            required,
            granted,
            source_project_id,
            target_project_id,
        ),
    )


def make_decision(
    allowed: bool,
    reason: Reason,
    message: str,
    audit: Audit,
    explicit_status: int | None = None,
    close: bool = False,
) -> Decision:
    """`Decision(...)` with every field given, for the hot path."""
    return _new(Decision, (allowed, reason, message, audit, explicit_status, close))
