"""Request parameters and header values as Rack, ActionPack and Grape read them.

`params` is Rails/Grape params: the query string (`Rack::Request#GET`) plus a form or multipart
body (`Rack::Request#POST`, lib/rack/request.rb; `Rack::Multipart`, lib/rack/multipart/parser.rb)
or a JSON one (ActionDispatch's `DEFAULT_PARSERS`, actionpack/lib/action_dispatch/http/
parameters.rb), top-level keys. How a request is read (its media type, parameter names, the
Authorization scheme and its Basic pair, Ruby's Base64) is one small named function each,
below, mirroring Rack/ActionPack; tests/oracle/ holds them to the Ruby originals
(docs/security.md, "Reading requests as GitLab's own parsers do").

The names of the credential parameters (`CREDENTIAL_PARAMS`: lib/gitlab/auth/auth_finders.rb
`get_job_token_from_query_param_or_header`, config/initializers/doorkeeper.rb
`access_token_methods`) are named here, so that the extractor and the log's redaction
(`gateway.ops.log.redact_target`) read the same ones. Which of the values found is a job token,
and which wins, is `gateway.core.tokens`' (which imports this module; this one never imports it).

Everything here is a pure function. A body that does not parse raises `BodyError`: Rails would
answer 400, and what it would have read is unknowable.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

from gateway.core import multipart
from gateway.core.request import Headers, RequestView

__all__ = [
    "CREDENTIAL_PARAMS",
    "RUBY_SPACE",
    "RUBY_SPACES",
    "BodyError",
    "authorization_scheme",
    "basic_credentials",
    "basic_pair",
    "body_kind",
    "credential_param",
    "media_type",
    "packages_basic_password",
    "param_base",
    "parse_form",
    "part_params",
    "reads_param",
    "refuse_method_override",
    "request_params",
    "ruby_decode64",
]

# The parameters GitLab reads credentials from (see the module docstring); `gateway.core.tokens`
# maps each to its carrier.
CREDENTIAL_PARAMS = frozenset(
    {"job_token", "token", "access_token", "bearer_token", "private_token"}
)

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
# Rack::QueryParser#normalize_params (lib/rack/query_parser.rb): `%r(\A[\[\]]*([^\[\]]+)\]*)`.
_KEY_BASE = re.compile(r"[\[\]]*([^\[\]]+)\]*")
# Rack::MediaType SPLIT_PATTERN (lib/rack/media_type.rb) and ActionDispatch's
# `content_mime_type` (`/^([^,;]*)/`): the media type ends at the first `;` or `,`.
_MEDIA_END = re.compile(r"[;,]")
# Ruby's whitespace for `String#split(" ")` (awk-style split): ASCII space, \t \n \v \f \r.
RUBY_SPACE = " \t\n\v\f\r"
RUBY_SPACES = re.compile(r"[ \t\n\v\f\r]+")
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
    text = value.lstrip(RUBY_SPACE)
    if not text:
        return None, None
    cut = RUBY_SPACES.search(text)
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
    return basic_pair(authorization_scheme(value)[1])


def basic_pair(param: str | None) -> tuple[str, str] | None:
    """`basic_credentials` of a value whose `authorization_scheme` parameter is `param`."""
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
    log's redaction (`gateway.ops.log.redact_target`) redacts at least these.
    """
    base = param_base(key)
    return base[0] if base is not None and base[0] in CREDENTIAL_PARAMS else None


class BodyError(ValueError):
    """A form or JSON body the gateway was asked to inspect does not parse."""


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
    """Does the extractor (`gateway.core.tokens`) read a body parameter (or multipart part)
    called `name`: a credential carrier in any spelling Rack normalizes to one, or
    Rack::MethodOverride's `_method`?"""
    return any(
        _METHOD_KEY.fullmatch(key) or credential_param(key) is not None
        for key, _ in part_params(name, b"")
    )


def refuse_method_override(method: str, pairs: Iterable[tuple[str, object]]) -> None:
    """Raise `BodyError` when a POST's body `pairs` name Rack::MethodOverride's `_method` (in
    any spelling Rack normalizes to it)."""
    if method == "POST" and any(_METHOD_KEY.fullmatch(key) for key, _ in pairs):
        # Rack::MethodOverride would route this POST as another method (it reads `req.POST`,
        # forms and multipart alike): we cannot authorize a method we do not see on the
        # request line.
        raise BodyError("a _method form field (method override) is not accepted")


def request_params(view: RequestView) -> list[tuple[str, object]]:
    """The params of a request that can hold a credential: the query string's pairs (read only
    when a name could be a credential parameter's) and the body's (`body_kind`), in that order,
    repeated keys kept. `BodyError` when the body should parse and does not, or is refused
    (several Content-Types, a method override, a multipart body readers could read apart)."""
    _, _, query = view.target.partition("?")
    pairs: list[tuple[str, object]] = []
    # Every name of CREDENTIAL_PARAMS contains "token"; escapes could hide it, so parse those.
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
            refuse_method_override(view.method, form)
            pairs.extend(form)
        elif kind == "json":
            pairs.extend(_json_pairs(view.body))
        elif kind == "multipart":
            parts = _multipart_pairs(view.body, view.headers["Content-Type"])
            refuse_method_override(view.method, parts)
            pairs.extend(parts)
    return pairs
