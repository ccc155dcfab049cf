# ruff: noqa: S105 - carrier names ("JOB-TOKEN header") are labels, not secrets
"""Finding the CI/CD job token in a request exactly where GitLab looks, and nothing else.

GitLab reads credentials in this order (`API::APIGuard#find_user_from_sources`, lib/api/api_guard.rb;
`Gitlab::Auth::AuthFinders`, lib/gitlab/auth/auth_finders.rb):

1. a job token as an OAuth value (`find_user_from_job_bearer_token`): Doorkeeper's
   `access_token` param, `Authorization: Bearer`, `bearer_token` param
   (config/initializers/doorkeeper.rb `access_token_methods`);
2. a PAT (`find_user_from_access_token`): `private_token` param, `PRIVATE-TOKEN` header. A
   `glcbt-` value there is skipped: `return if api_request? && CiJobToken.prefix?(current_token)`
   (runners send the job token as PRIVATE-TOKEN on `PUT /api/v4/jobs/:id`);
3. the job token proper (`find_user_from_job_token`): HTTP Basic with user `gitlab-ci-token`
   (`Gitlab::Auth::CI_JOB_USER`), then `get_job_token_from_query_param_or_header`:
   `params[:job_token] || params[:token] || env['HTTP_JOB_TOKEN']`. The package helpers take the
   Basic password whatever the user name (lib/api/helpers/packages_manager_clients_helpers.rb
   `find_job_from_http_basic_auth`).

`params` is Rails/Grape params: the query string plus a form or JSON body (top-level keys).
How a request is read (its media type, parameter names, Authorization scheme, Base64) is one
small named function each, below, mirroring Rack/ActionPack; tests/oracle/ holds them to the
Ruby originals (docs/security.md, "Reading requests as GitLab's own parsers do").

Because the gateway must authorize the token the upstream will authenticate with, any request
where that is ambiguous is refused (`Conflict`): two different job tokens anywhere, a job token
next to another credential, a repeated credential header, or a nested `job_token[]` parameter.

Only a SHA-256 digest and a short fingerprint of it leave this module (the raw value stays on
`Credential`, excluded from its repr, for the optional upstream validation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

from gateway import multipart
from gateway.drafts import check_layouts
from gateway.request import Headers, RequestView

__all__ = [
    "JOB_TOKEN_PREFIX",
    "MAX_JOB_TOKEN_SIZE_BYTES",
    "BodyError",
    "Carrier",
    "Conflict",
    "Credential",
    "Extraction",
    "Malformed",
    "authorization_scheme",
    "basic_credentials",
    "body_kind",
    "credential_param",
    "digest",
    "extract",
    "fingerprint",
    "media_type",
    "packages_basic_password",
    "param_base",
    "parse_form",
    "part_params",
    "reads_param",
    "ruby_decode64",
    "same_credential",
]

# app/models/ci/build.rb TOKEN_PREFIX; lib/authn/tokens/ci_job_token.rb `prefix?`.
JOB_TOKEN_PREFIX = "glcbt-"
# lib/gitlab/auth/auth_finders.rb MAX_JOB_TOKEN_SIZE_BYTES (Ci::AuthJobFinder MAX_TOKEN_BYTESIZE).
MAX_JOB_TOKEN_SIZE_BYTES = 8192
CI_JOB_USER = "gitlab-ci-token"  # lib/gitlab/auth.rb CI_JOB_USER
FINGERPRINT_CHARS = 12

# GitLab token prefixes that are never job tokens: a `token` parameter carrying one is the
# trigger or runner API's own credential (lib/api/ci/triggers.rb, lib/api/ci/runner.rb), not a
# job token. Sources: app/models/ci/trigger.rb TRIGGER_TOKEN_PREFIX, app/models/ci/runner.rb
# CREATED_RUNNER_TOKEN_PREFIX, app/models/personal_access_token.rb.
_OTHER_TOKEN_PREFIXES = ("glptt-", "glrt-", "glrtr-", "GR1348941", "glpat-", "gldt-", "gloas-")

# Rails' JSON MIME types plus GitLab's LFS one (config/initializers/mime_types.rb registers
# application/vnd.git-lfs+json as JSON); reading a superset only makes the gateway stricter.
_JSON_TYPES = frozenset(
    {"application/json", "text/x-json", "application/jsonrequest", "application/vnd.git-lfs+json"}
)
_FORM_TYPE = "application/x-www-form-urlencoded"
# Rack's query parser splits on & (and ; in Rack 2) and drops spaces after a separator; a form
# body only on & (Rack 2.2 `Rack::Request#POST`: `parse_query(form_vars, '&')`).
_PAIR_SEP = re.compile(r"[&;] *")
_BODY_PAIR_SEP = re.compile(r"& *")
_METHOD_KEY = re.compile(r"\s*[\[\]]*_method\]*\s*")  # Rack::MethodOverride's param
_FOLD = re.compile(r"[^A-Z0-9]")
# Rack::QueryParser#normalize_params (lib/rack/query_parser.rb): `%r(\A[\[\]]*([^\[\]]+)\]*)`.
_KEY_BASE = re.compile(r"[\[\]]*([^\[\]]+)\]*")
# Rack::MediaType SPLIT_PATTERN (lib/rack/media_type.rb) and ActionDispatch's
# `content_mime_type` (`/^([^,;]*)/`): the media type ends at the first `;` or `,`.
_MEDIA_END = re.compile(r"[;,]")
# Ruby's whitespace for `String#split(" ")` (awk-style split): ASCII space, \t \n \v \f \r.
_RUBY_SPACE = " \t\n\v\f\r"
_RUBY_SPACES = re.compile(r"[ \t\n\v\f\r]+")
# The errors a body parser can raise on hostile input: ValueError (JSONDecodeError,
# UnicodeDecodeError, int-digit limits), RecursionError (deep JSON nesting), OverflowError.
_PARSE_ERRORS = (ValueError, UnicodeError, RecursionError, OverflowError)


# ---------------------------------------------------------------- the request-reading primitives
# Small named functions, one per thing Rails reads, shared by every caller (the extractor, the
# log's redaction, the streamed-body guard) so that they cannot disagree.


def media_type(content_type: str | None) -> str | None:
    """The media type of a Content-Type value as Rack reads it: cut at the first `;` or `,`,
    stripped, lower-cased; None when there is none (absent or blank).

    Rack: `Rack::MediaType.type` (lib/rack/media_type.rb, split on `[;,]`) and
    `Rack::Request#content_type` (an empty CONTENT_TYPE is nil). ActionPack:
    `ActionDispatch::Http::MimeNegotiation#content_mime_type` (`/^([^,;]*)/`, strip, downcase).
    Python's `strip` removes more than Ruby's whitespace: a superset, so stricter only.
    """
    if content_type is None or not content_type.strip():
        return None
    return _MEDIA_END.split(content_type, 1)[0].strip().lower()


def authorization_scheme(value: str) -> tuple[str | None, str | None]:
    """(scheme, parameter) of an Authorization value as ActionPack splits it.

    ActionController::HttpAuthentication::Basic `auth_scheme` / `auth_param`
    (actionpack/lib/action_controller/metal/http_authentication.rb) are
    `request.authorization.to_s.split(" ", 2)`: Ruby's awk-style split, which skips leading
    whitespace and cuts at the first run of any ASCII whitespace (tab included), keeping the
    rest (trailing whitespace too). The scheme is compared case-insensitively by callers
    (`has_basic_credentials?` downcases it). (None, None) for a blank value.
    """
    text = value.lstrip(_RUBY_SPACE)
    if not text:
        return None, None
    cut = _RUBY_SPACES.search(text)
    if cut is None:
        return text, None
    return text[: cut.start()], text[cut.end() :]


# Ruby's Base64.decode64 skips every byte outside the alphabet (and `=` in a group's first two
# places); it stops at `=` in a group's last two places.
_B64_NOISE = re.compile(r"[^A-Za-z0-9+/=]+")


def ruby_decode64(text: str) -> bytes:
    """Ruby's `Base64.decode64` (`String#unpack1("m")`, the lenient branch of pack.c's `m`):
    what ActionPack and GitLab decode an Authorization parameter with. Bytes outside the base64
    alphabet are skipped, `=` ends the data only in a group's third or fourth place, a lone
    last character is dropped, and no padding or trailing bits are checked."""
    chars = _B64_NOISE.sub("", text)
    if "=" in chars:
        kept: list[str] = []
        for char in chars:
            if char != "=":
                kept.append(char)
            elif len(kept) % 4 >= 2:
                break
        chars = "".join(kept)
    if len(chars) % 4 == 1:
        chars = chars[:-1]
    return base64.b64decode(chars + "=" * (-len(chars) % 4))


def _ruby_present(value: str) -> bool:
    """ActiveSupport `present?` of a string: not empty, not only whitespace."""
    return bool(value) and not value.isspace()


def basic_credentials(value: str) -> tuple[str, str] | None:
    """(user, password) as ActionController::HttpAuthentication::Basic#user_name_and_password
    reads an Authorization value, whatever its scheme, when both are present; else None.

    `user_name_and_password` is `decode_credentials(request).split(":", 2)` with
    `Base64.decode64(auth_param(request))`: it never checks the scheme. GitLab's AuthFinders
    check it first (`has_basic_credentials?`), but TokenLocator's `http_basic_auth` location
    (lib/gitlab/api_authentication/token_locator.rb, `extract_from_http_basic_auth`: the NuGet,
    Debian, RPM, Maven and virtual-registry routes) does not: `Bearer <base64 of user:token>`
    is HTTP Basic there.
    """
    _, param = authorization_scheme(value)
    user, sep, password = ruby_decode64(param or "").partition(b":")
    if not sep:
        return None
    pair = (user.decode("utf-8", "surrogateescape"), password.decode("utf-8", "surrogateescape"))
    return pair if _ruby_present(pair[0]) and _ruby_present(pair[1]) else None


def packages_basic_password(value: str) -> str | None:
    """The password `API::Helpers::PackagesManagerClientsHelpers#decode_token`
    (lib/api/helpers/packages_manager_clients_helpers.rb) reads from an Authorization value:
    `split('Basic ', 2).second`, so whatever follows the first literal `Basic ` anywhere in the
    value, through Ruby's `Base64.decode64`, `split(':', 2).second`. None when it reads none."""
    _, found, encoded = value.partition("Basic ")
    if not found:
        return None
    _, sep, password = ruby_decode64(encoded).partition(b":")
    return password.decode("utf-8", "surrogateescape") if sep else None


def param_base(key: str) -> tuple[str, bool] | None:
    """The top-level params key a parameter name fills in Rack, and whether Rack nests its value
    there (an Array or Hash instead of a string); None for a name that fills none.

    `Rack::QueryParser#normalize_params` (lib/rack/query_parser.rb): leading brackets are
    dropped and trailing `]` ignored, so `[job_token]`, `job_token]` and `[[job_token]]` all
    are `job_token`; anything after (`job_token[]`, `job_token[x]`, `job_token]x`) nests
    (`job_token[` is a key of its own: counted as nested, which refuses, never forwards).
    Surrounding whitespace is ignored too (Rack keeps it: a superset, so stricter only).
    """
    name = key.strip()
    match = _KEY_BASE.match(name)
    if match is None:
        return None
    return match.group(1), match.end() != len(name)


def credential_param(key: str) -> str | None:
    """The credential parameter (`job_token`, `token`, `access_token`, `bearer_token`,
    `private_token`) a decoded parameter name fills in Rails' params, or None.

    The one notion of "credential parameter name": `extract` reads exactly these, and the
    log's redaction (`gateway.log.redact_target`) redacts at least these.
    """
    base = param_base(key)
    return base[0] if base is not None and base[0] in _PARAMS else None


class Carrier(StrEnum):
    """Where a credential was found; the values appear in conflict messages and audits."""

    ACCESS_TOKEN_PARAM = "access_token parameter"
    BEARER = "Authorization Bearer"
    BEARER_TOKEN_PARAM = "bearer_token parameter"
    BASIC = "Authorization Basic"
    JOB_TOKEN_PARAM = "job_token parameter"
    TOKEN_PARAM = "token parameter"
    JOB_TOKEN_HEADER = "JOB-TOKEN header"
    PRIVATE_TOKEN_HEADER = "PRIVATE-TOKEN header"
    PRIVATE_TOKEN_PARAM = "private_token parameter"
    DEPLOY_TOKEN_HEADER = "DEPLOY-TOKEN header"
    AUTHORIZATION = "Authorization header"


# GitLab's precedence among job-token carriers (first wins); see the module docstring.
_PRECEDENCE = (
    Carrier.ACCESS_TOKEN_PARAM,
    Carrier.BEARER,
    Carrier.BEARER_TOKEN_PARAM,
    Carrier.BASIC,
    Carrier.JOB_TOKEN_PARAM,
    Carrier.TOKEN_PARAM,
    Carrier.JOB_TOKEN_HEADER,
)
_RANK = {carrier: rank for rank, carrier in enumerate(_PRECEDENCE)}

# Parameter names that carry credentials, and what a value there is.
_PARAMS: dict[str, Carrier] = {
    "job_token": Carrier.JOB_TOKEN_PARAM,
    "token": Carrier.TOKEN_PARAM,
    "access_token": Carrier.ACCESS_TOKEN_PARAM,
    "bearer_token": Carrier.BEARER_TOKEN_PARAM,
    "private_token": Carrier.PRIVATE_TOKEN_PARAM,
}
# Header names (Rack folds '-' and '_' into the same HTTP_* key, so both spellings count).
_HEADERS: dict[str, Carrier] = {
    "JOB-TOKEN": Carrier.JOB_TOKEN_HEADER,
    "JOB_TOKEN": Carrier.JOB_TOKEN_HEADER,
    "PRIVATE-TOKEN": Carrier.PRIVATE_TOKEN_HEADER,
    "PRIVATE_TOKEN": Carrier.PRIVATE_TOKEN_HEADER,
    "DEPLOY-TOKEN": Carrier.DEPLOY_TOKEN_HEADER,
    "DEPLOY_TOKEN": Carrier.DEPLOY_TOKEN_HEADER,
}


def digest(token: str) -> str:
    """The hex SHA-256 of a token: the only form stores hold."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def fingerprint(token_digest: str) -> str:
    """A short, loggable name for a token derived from its digest (never from the token)."""
    return "sha256:" + token_digest[:FINGERPRINT_CHARS]


@dataclass(frozen=True, slots=True)
class Credential:
    """The one job token a request carries. `secret` is kept out of repr and logs."""

    carrier: Carrier
    digest: str
    secret: str = field(repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.digest)


class _CredentialDraft:  # see gateway/decision.py, "hot-path constructors"
    __slots__ = ("carrier", "digest", "secret")


def _credential(carrier: Carrier, token_digest: str, secret: str) -> Credential:
    """`Credential(...)`, one per request: built from a draft (~0.1 us instead of ~0.3)."""
    draft: Any = _CredentialDraft()
    draft.carrier = carrier
    draft.digest = token_digest
    draft.secret = secret
    draft.__class__ = Credential
    credential: Credential = draft
    return credential


check_layouts((_CredentialDraft, Credential))


@dataclass(frozen=True, slots=True)
class Conflict:
    """The request's credentials are ambiguous; `detail` names carriers, never values."""

    carriers: tuple[str, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A job token that GitLab would reject before any lookup (too long, unprintable)."""

    carrier: Carrier
    why: str


class BodyError(ValueError):
    """A form or JSON body the gateway was asked to inspect does not parse."""


Extraction = Credential | Conflict | Malformed | None


class _Found(NamedTuple):  # scratch value of `extract`: a tuple is the cheapest to build
    carrier: Carrier
    value: str
    job: bool  # a job token (else another credential)
    problem: str | None = None  # a carrier whose value GitLab would read unpredictably


def body_kind(headers: Headers, method: str) -> str | None:
    """ "form", "json" or "multipart" when Rails would parse this request's body into params
    ("ambiguous" for several Content-Type headers: the body is read, then refused).

    Rack parses a form body for any method, a POST without Content-Type as a form
    (`Rack::Request#form_data?`) and any `multipart/*` body (`Rack::Multipart`); Rails parses
    JSON for its JSON MIME types.
    """
    types = headers.getall("Content-Type", ())
    if len(types) > 1:
        # Which one would Rack read (one CONTENT_TYPE in its env)? Inspect, then refuse.
        return "ambiguous"
    media = media_type(types[0] if types else None)
    if media is None:  # `Rack::Request#form_data?`: a POST without a media type is a form
        return "form" if method == "POST" else None
    if media == _FORM_TYPE:
        return "form"
    if media in _JSON_TYPES:
        return "json"
    if media.startswith("multipart/"):
        return "multipart"
    return None


def parse_form(raw: str, *, body: bool = False) -> list[tuple[str, str]]:
    """application/x-www-form-urlencoded pairs as Rack reads them, repeated keys kept: a query
    split on `&` and `;`, a form `body` on `&` only (`job_token=a;b` is the value `a;b` there)."""
    pairs = []
    for part in (_BODY_PAIR_SEP if body else _PAIR_SEP).split(raw):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote_plus(key), unquote_plus(value)))
    return pairs


def _json_pairs(body: bytes) -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = []

    def keep(items: list[tuple[str, object]]) -> dict[str, object]:
        # The hook runs innermost-first, so its last call is the top-level object.
        pairs.clear()
        pairs.extend(items)
        return dict(items)

    try:
        document = json.loads(body, object_pairs_hook=keep)
    except _PARSE_ERRORS as exc:  # RecursionError: a deeply nested document (Rails: 400)
        raise BodyError(f"JSON body does not parse: {exc.__class__.__name__}") from None
    return pairs if isinstance(document, dict) else []


def _multipart_pairs(body: bytes, content_type: str) -> list[tuple[str, object]]:
    """The credential params of a buffered multipart body (a part with a filename is a file,
    not a string, as in Rack). Read by the very `multipart.Scanner` that checks streamed
    bodies, fed whole: one reading, so a small body is refused whatever a large one would be
    (e.g. a quoted-printable part: Workhorse's Go reader decodes `=67lcbt-` to `glcbt-`, Rack
    does not). `BodyError` for anything the Scanner refuses."""
    try:
        scanner = multipart.Scanner(
            multipart.boundary(content_type, any_multipart=True), reads_param
        )
        fields = scanner.feed(body)
        scanner.finish()
    except multipart.MultipartError as exc:
        raise BodyError(str(exc)) from None
    return [pair for part in fields for pair in part_params(part.name, part.value)]


_UPLOAD = object()  # the value of a multipart file part: Rack makes it a file, not a string


def part_params(name: str, value: bytes | None) -> list[tuple[str, object]]:
    """The params one multipart part named `name` gives (`value` None: a file part). An escaped
    name is read both ways, to read at least what Rack reads."""
    text: object = _UPLOAD if value is None else value.decode("utf-8", "surrogateescape")
    names = [name, unquote_plus(name)] if "%" in name or "+" in name else [name]
    return [(key, text) for key in names]


def reads_param(name: str) -> bool:
    """Does `extract` read a body parameter (or multipart part) called `name`: a credential
    carrier in any spelling Rack normalizes to one, or Rack::MethodOverride's `_method`?"""
    return any(
        _METHOD_KEY.fullmatch(key) or _param_carrier(key)[0] is not None
        for key, _ in part_params(name, b"")
    )


def _refuse_method_override(method: str, pairs: Iterable[tuple[str, object]]) -> None:
    if method == "POST" and any(_METHOD_KEY.fullmatch(key) for key, _ in pairs):
        # Rack::MethodOverride would route this POST as another method (it reads `req.POST`,
        # forms and multipart alike): we cannot authorize a method we do not see on the
        # request line.
        raise BodyError("a _method form field (method override) is not accepted")


def _params(view: RequestView) -> list[tuple[str, object]]:
    _, _, query = view.target.partition("?")
    pairs: list[tuple[str, object]] = []
    # Every credential parameter name contains "token"; escapes could hide it, so parse those.
    if "token" in query or "%" in query:
        pairs.extend(parse_form(query))
    if view.body:
        try:
            pairs.extend(_body_params(view))
        except BodyError:
            raise
        except _PARSE_ERRORS as exc:  # never a 500: every parser failure is `bad_body`
            raise BodyError(f"the body does not parse: {exc.__class__.__name__}") from None
    return pairs


def _body_params(view: RequestView) -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = []
    if view.body:
        kind = body_kind(view.headers, view.method)
        if kind == "ambiguous":
            raise BodyError("more than one Content-Type")
        if kind == "form":
            form = parse_form(view.body.decode("utf-8", "surrogateescape"), body=True)
            _refuse_method_override(view.method, form)
            pairs.extend(form)
        elif kind == "json":
            pairs.extend(_json_pairs(view.body))
        elif kind == "multipart":
            parts = _multipart_pairs(view.body, view.headers["Content-Type"])
            _refuse_method_override(view.method, parts)
            pairs.extend(parts)
    return pairs


def _from_params(pairs: Iterable[tuple[str, object]]) -> Iterator[_Found]:
    for key, value in pairs:
        carrier, bracket = _param_carrier(key)
        if carrier is None:
            continue
        if bracket or not isinstance(value, str):
            # Rack turns `job_token[]=x` into an array; JSON may carry a non-string.
            problem = f"{carrier} is not a plain string"
            yield _Found(
                carrier, "", job=carrier is not Carrier.PRIVATE_TOKEN_PARAM, problem=problem
            )
        elif value:  # GitLab uses `.presence`: an empty value is absent
            found = _classify(carrier, value)
            if found is not None:
                yield found


def _param_carrier(key: str) -> tuple[Carrier | None, bool]:
    """The carrier a parameter key names, and whether Rack nests it (`job_token[]`):
    `param_base`, the same reading as `credential_param` (and so the log's redaction)."""
    base = param_base(key)
    if base is None:
        return None, False
    return _PARAMS.get(base[0]), base[1]


def _classify(carrier: Carrier, value: str) -> _Found | None:
    prefixed = value.startswith(JOB_TOKEN_PREFIX)
    if carrier in (Carrier.PRIVATE_TOKEN_HEADER, Carrier.PRIVATE_TOKEN_PARAM):
        # A glcbt- PAT is skipped by GitLab (auth_finders.rb), so by us too.
        return None if prefixed else _Found(carrier, value, job=False)
    if carrier in (Carrier.JOB_TOKEN_PARAM, Carrier.JOB_TOKEN_HEADER):
        return _Found(carrier, value, job=True)
    if carrier is Carrier.TOKEN_PARAM:
        return _Found(carrier, value, job=not value.startswith(_OTHER_TOKEN_PREFIXES))
    # Bearer, access_token, bearer_token, DEPLOY-TOKEN: a job token only when prefixed
    return _Found(carrier, value, job=prefixed)


def _from_authorization(value: str) -> _Found | None:
    # One split for every scheme (`authorization_scheme`, ActionPack's): `Basic<TAB>...` is
    # Basic there. Doorkeeper's Bearer rule is narrower (`/^Bearer /i`,
    # Doorkeeper::OAuth::Token.from_bearer_authorization): whatever it reads, this reads too.
    scheme, param = authorization_scheme(value)
    if scheme is None:
        return None
    rest = (param or "").strip(_RUBY_SPACE)
    if scheme.lower() == "bearer" and rest:
        return _classify(Carrier.BEARER, rest)
    if scheme.lower() == "basic" and rest:
        return _from_basic(rest)
    return _Found(Carrier.AUTHORIZATION, value, job=False)


def _hidden_basic(value: str) -> list[_Found]:
    """Job tokens GitLab's scheme-blind Basic readings find in an Authorization value
    (`basic_credentials`, `packages_basic_password`): a user `gitlab-ci-token` or a prefixed
    password, whatever the scheme. Only job tokens are kept: any Authorization value is already
    a credential of its own (`_from_authorization`), so another one adds nothing."""
    found: list[_Found] = []
    pair = basic_credentials(value)
    if pair is not None and (pair[0] == CI_JOB_USER or pair[1].startswith(JOB_TOKEN_PREFIX)):
        found.append(_Found(Carrier.BASIC, pair[1], job=True))
    password = packages_basic_password(value)
    if password is not None and password.startswith(JOB_TOKEN_PREFIX):
        found.append(_Found(Carrier.BASIC, password, job=True))
    return found


def _from_basic(encoded: str) -> _Found | None:
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        # Ruby's Base64.decode64 is lenient: what it would read is unknowable, so refuse.
        return _Found(Carrier.BASIC, "", job=True, problem="Authorization Basic does not decode")
    if not sep or not password:
        # `find_user_from_job_token_basic_auth` needs login and password present.
        return _Found(Carrier.BASIC, password, job=False) if user or password else None
    job = user == CI_JOB_USER or password.startswith(JOB_TOKEN_PREFIX)
    return _Found(Carrier.BASIC, password, job=job)


def _header_carrier(name: str) -> Carrier | None:
    """The carrier a header name is (Carrier.AUTHORIZATION for `Authorization`), or None."""
    upper = name.upper()
    carrier = _HEADERS.get(upper)
    if carrier is None and "TOKEN" in upper:
        # CGI-style servers fold every byte outside [A-Za-z0-9] to `_`: `Job.Token` is
        # HTTP_JOB_TOKEN there, so it is judged as the JOB-TOKEN header.
        carrier = _HEADERS.get(_FOLD.sub("_", upper))
    if carrier is None and upper == "AUTHORIZATION":
        carrier = Carrier.AUTHORIZATION
    return carrier


# Header names as clients spell them -> `_header_carrier`: the same few names arrive on every
# request. Bounded (512 names of at most 64 characters), so that odd names cannot grow memory:
# the others are judged afresh each time.
_HEADER_MEMO: dict[str, Carrier | None] = {}
_HEADER_MEMO_SIZE = 512


def _from_headers(headers: Headers) -> tuple[list[_Found], list[str]]:
    found: list[_Found] = []
    repeated: list[str] = []
    seen: list[Carrier] = []
    memo = _HEADER_MEMO
    for name, value in headers.items():  # one pass: requests carry few headers
        try:
            carrier = memo[name]
        except KeyError:  # a name not seen yet (or past the memo's bound)
            carrier = _header_carrier(name)
            if len(memo) < _HEADER_MEMO_SIZE and len(name) <= 64:
                memo[name] = carrier
        if carrier is None:
            continue
        if seen.count(carrier) == 1:  # its second occurrence
            repeated.append(f"{carrier} repeated")
        seen.append(carrier)
        if carrier is Carrier.AUTHORIZATION:
            item = _from_authorization(value)
            found.extend(_hidden_basic(value))
        else:
            value = value.strip()
            if carrier is Carrier.JOB_TOKEN_HEADER:  # the usual carrier: `_classify`, inlined
                item = _Found(carrier, value, True) if value else None
            else:
                item = _classify(carrier, value) if value else None
        if item is not None:
            found.append(item)
    return found, repeated


def extract(view: RequestView, body_params: Sequence[tuple[str, object]] = ()) -> Extraction:
    """The job token GitLab would authenticate this request with, or why there is none.

    Returns None when no job token is present (other credentials alone are not ours to judge),
    a `Conflict` when the credentials are ambiguous, `Malformed` for a token GitLab rejects on
    sight, else the `Credential`. Raises `BodyError` when `view.body` should be a form, JSON or
    multipart body and does not parse (Rails would answer 400; we cannot tell what it would
    read), or is multipart that readers could read differently (`multipart.Scanner`).
    `body_params` are the parameters of a body read elsewhere (a streamed multipart body,
    `gateway.bodyguard`), judged exactly as if `view.body` held them.
    """
    found, repeated = _from_headers(view.headers)
    pairs = _params(view)
    if body_params:
        _refuse_method_override(view.method, body_params)
        pairs = [*pairs, *body_params]
    if pairs:
        found.extend(_from_params(pairs))
    if len(found) == 1 and not repeated:  # the common case: one carrier
        chosen = found[0]
        if not chosen.job:
            return None
        if chosen.problem:
            return _conflict(found, [], repeated)
    else:
        jobs = [item for item in found if item.job]
        if not jobs:
            return None
        others = [item for item in found if not item.job]
        if conflict := _conflict(jobs, others, repeated):
            return conflict
        chosen = min(jobs, key=lambda item: _RANK.get(item.carrier, len(_RANK)))
    if why := _malformation(chosen):
        return Malformed(chosen.carrier, why)
    return _credential(chosen.carrier, digest(chosen.value), chosen.value)


def same_credential(one: Extraction, other: Extraction) -> bool:
    """Do two extractions authenticate alike (the same token, whatever its carrier)?"""
    if isinstance(one, Credential) and isinstance(other, Credential):
        return one.digest == other.digest
    return one == other


def _conflict(jobs: list[_Found], others: list[_Found], repeated: list[str]) -> Conflict | None:
    reasons: list[str] = []
    reasons.extend(item.problem for item in jobs if item.problem)
    if len({item.value for item in jobs if not item.problem}) > 1:
        reasons.append("different job tokens in " + _names(jobs))
    if others:
        reasons.append(f"a job token ({_names(jobs)}) with other credentials ({_names(others)})")
    reasons.extend(repeated)
    if not reasons:
        return None
    carriers = tuple(dict.fromkeys(str(item.carrier) for item in [*jobs, *others]))
    return Conflict(carriers, "; ".join(reasons))


def _names(items: list[_Found]) -> str:
    """Carrier names in GitLab's precedence order (stable messages)."""
    ordered = sorted(items, key=lambda item: _RANK.get(item.carrier, len(_RANK)))
    return ", ".join(dict.fromkeys(str(item.carrier) for item in ordered))


def _malformation(item: _Found) -> str | None:
    value = item.value
    if not (value.isascii() and value.isprintable()) or " " in value or not value:
        return "contains characters outside printable ASCII"
    if len(value) > MAX_JOB_TOKEN_SIZE_BYTES:  # ASCII: characters are bytes
        return f"longer than {MAX_JOB_TOKEN_SIZE_BYTES} bytes"
    return None
