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

`params` is Rails/Grape params (the query string plus a form, JSON or multipart body, top-level
keys), and header values are read as Rack and ActionPack read them: `gateway.core.params` does
that reading (media type, parameter names, the Authorization scheme, Ruby's Base64), mirroring
the Ruby originals. This module decides which of the values found is a job token and which wins.

Some route families read more carriers (`gateway.core.carriers`: a bare `Authorization` value, its
last word, Basic with any user name, a named header such as `X-Nuget-Apikey`, the token a Conan
or Terraform registry JWT wraps); a `Reader` compiles them, with the instance's job-token prefix,
once: the Gate builds the gateway's one from Settings (`Gate.tokens`) and passes it down. The
module-level `read` and `extract` read as a GitLab with the defaults does (`DEFAULT_READER`),
for tools and tests. Everything else here is a pure function.

A value is a job token when it carries GitLab's prefix or sits in a carrier only job tokens use.
An unprefixed value in a carrier GitLab shares with other credentials (Bearer, Basic, a bare
Authorization, a named header) may be either (job tokens of GitLab < 16.9 have no prefix):
`read` returns it as a `Candidate`, which the gate resolves (store, then the upstream's
`GET /api/v4/job`, or forwarded, per `--unknown-credential`).

Because the gateway must authorize the token the upstream will authenticate with, any request
where that is ambiguous is refused (`Conflict`): two different job tokens anywhere, a job token
next to another credential (a candidate counts as either), two different candidates, a repeated
credential header, or a nested `job_token[]` parameter.

Only a SHA-256 digest and a short fingerprint of it leave this module (the raw value stays on
`Credential`, excluded from its repr, for the optional upstream validation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from gateway.core import conan_jwt
from gateway.core.carriers import DEFAULT, CarrierMap, Family, Reading
from gateway.core.params import (
    CREDENTIAL_PARAMS,
    RUBY_SPACE,
    RUBY_SPACES,
    authorization_scheme,
    basic_pair,
    packages_basic_password,
    param_base,
    refuse_method_override,
    request_params,
)
from gateway.core.request import Headers, RequestView

__all__ = [
    "DEFAULT_READER",
    "JOB_TOKEN_PREFIX",
    "MAX_JOB_TOKEN_SIZE_BYTES",
    "Candidate",
    "Carrier",
    "Conflict",
    "Credential",
    "Extraction",
    "Malformed",
    "Reader",
    "digest",
    "extract",
    "fingerprint",
    "read",
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

# Rack's header names (HTTP_*): a CGI-style server folds every byte outside [A-Za-z0-9] to `_`,
# so `JOB-TOKEN`, `Job_Token` and `Job.Token` are all HTTP_JOB_TOKEN.
_FOLD = re.compile(r"[^A-Z0-9]")


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
    # Family carriers (gateway.core.carriers.Reading)
    AUTHORIZATION_VALUE = "Authorization value"
    AUTHORIZATION_LAST_WORD = "Authorization last word"
    BASIC_ANY_USER = "Authorization Basic (any user)"
    CONAN_JWT = "Conan JWT"
    TOKEN_PARAM_JWT = "token parameter JWT"
    API_KEY_HEADER = "token header"  # a family's named header (`http_header`): X-Nuget-Apikey


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

# Parameter names that carry credentials, and what a value there is: each of
# `params.CREDENTIAL_PARAMS` (the names the log redacts too) is the carrier "<name> parameter",
# so the two lists cannot drift apart (a name without a carrier fails at import).
_PARAMS: dict[str, Carrier] = {name: Carrier(f"{name} parameter") for name in CREDENTIAL_PARAMS}
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


class Credential(NamedTuple):
    """The one job token a request carries. `secret` is kept out of repr and logs, and out of
    equality and hash (the digest stands for it). A NamedTuple: immutable and the cheapest
    value to build once per request (`_credential`)."""

    carrier: Carrier
    digest: str
    secret: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.digest)

    def __repr__(self) -> str:
        return f"Credential(carrier={self.carrier!r}, digest={self.digest!r})"

    # Equal only to a Credential, like the dataclass it was: a tuple's own `==` and `!=`
    # would compare the secret, and say it equals a plain tuple of its items.
    def __eq__(self, other: object) -> bool:
        return other.__class__ is Credential and self[:2] == other[:2]

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self[:2])


def _credential(carrier: Carrier, token_digest: str, secret: str) -> Credential:
    """`Credential(...)`, one per request: `tuple.__new__`, as in gateway/core/decision.py's
    hot-path constructors (~100 ns instead of ~200)."""
    return tuple.__new__(Credential, (carrier, token_digest, secret))


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


@dataclass(frozen=True, slots=True)
class Candidate:
    """An unrecognised value in a carrier GitLab shares between job tokens and other
    credentials: a job token if the store or the upstream knows it, else another credential.
    `others` names the carriers of other credentials next to it (a conflict if it is a job
    token). `secret` is kept out of repr and logs."""

    carrier: Carrier
    digest: str
    secret: str = field(repr=False, compare=False)
    others: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.digest)

    def credential(self) -> Credential:
        """This value as the job token it turned out to be."""
        return _credential(self.carrier, self.digest, self.secret)

    def conflict(self) -> Conflict | None:
        """The conflict this value makes once known to be a job token (other credentials)."""
        if not self.others:
            return None
        others = ", ".join(self.others)
        detail = f"a job token ({self.carrier}) with other credentials ({others})"
        return Conflict((str(self.carrier), *self.others), detail)


Extraction = Credential | Candidate | Conflict | Malformed | None


class _Found(NamedTuple):  # scratch value of `extract`: a tuple is the cheapest to build
    carrier: Carrier
    value: str
    job: bool  # a job token (else another credential, or a candidate)
    problem: str | None = None  # a carrier whose value GitLab would read unpredictably
    maybe: bool = False  # not `job`, but GitLab may read it as a job token: a candidate


def _param_carrier(key: str) -> tuple[Carrier | None, bool]:
    """The carrier a parameter key names, and whether Rack nests it (`job_token[]`):
    `param_base`, the same reading as `params.credential_param` (and so the log's redaction)."""
    base = param_base(key)
    if base is None:
        return None, False
    return _PARAMS.get(base[0]), base[1]


def _token_shaped(value: str) -> bool:
    """Could this be a job token at all (printable ASCII, no space)? Decoding any Bearer value
    as Base64 yields bytes: only a token-shaped password is a candidate (a job token always is
    one; garbage would make every Bearer on those routes two credentials)."""
    return bool(value) and value.isascii() and value.isprintable() and " " not in value


def _reads_header(family: Family, name: str) -> bool:
    folded = _FOLD.sub("_", name.upper())
    return any(_FOLD.sub("_", header.upper()) == folded for header in family.headers)


# Header names as clients spell them -> `Reader._header_carrier`: the same few names arrive on
# every request. Bounded (512 names of at most 64 characters), so that odd names cannot grow
# memory: the others are judged afresh each time.
_HEADER_MEMO_SIZE = 512
_HEADER_MEMO_NAME = 64


class Reader:
    """Reads the job token of a request as one GitLab instance does: its job-token prefix and
    the carriers of every route family under its API prefix, compiled once. The gateway builds
    one from its Settings (`Gate.tokens`) and every reader of requests uses that one: the gate,
    the streamed-body guard (gateway/proxy/bodyguard.py), `check`.

    `glcbt-` is always a job token's prefix (`Ci::Build::TOKEN_PREFIX`, app/models/ci/build.rb;
    `Authn::Tokens::CiJobToken.prefix?`, lib/authn/tokens/ci_job_token.rb); an instance prefix
    puts its own string in front of it (`Authn::TokenField::PrefixHelper
    .prepend_instance_prefix`, lib/authn/token_field/prefix_helper.rb: `"#{instance_prefix}
    #{prefix}"`, newer GitLab `"#{instance_prefix}-#{prefix}"`), so `job_token_prefix` is that
    string as it appears in the tokens, separator included. The defaults are GitLab's (no
    instance prefix, the API at /api/v4, no relative URL root).

    The reader also owns a bounded memo of header names (`_HEADER_MEMO_SIZE`): a pure function
    of its configuration, so sharing one reader between requests and tasks is safe.
    """

    __slots__ = ("_carriers", "_memo", "_named", "_others", "_prefixes")

    def __init__(
        self,
        *,
        job_token_prefix: str = "",
        api_prefix: str = "/api/v4",
        relative_url_root: str = "",
    ) -> None:
        prefixes: tuple[str, ...] = (JOB_TOKEN_PREFIX,)
        if job_token_prefix:
            prefixes += (job_token_prefix + JOB_TOKEN_PREFIX,)
        self._prefixes = prefixes
        self._carriers = CarrierMap(api_prefix=api_prefix, relative_url_root=relative_url_root)
        # Other GitLab token types, with the instance prefix too: never job tokens.
        self._others = _OTHER_TOKEN_PREFIXES + tuple(
            job_token_prefix + other for other in _OTHER_TOKEN_PREFIXES if job_token_prefix
        )
        # The families' named headers, folded as Rack folds them (HTTP_X_NUGET_APIKEY).
        self._named = frozenset(_FOLD.sub("_", name) for name in self._carriers.headers)
        self._memo: dict[str, Carrier | None] = {}

    def extract(
        self, view: RequestView, body_params: Sequence[tuple[str, object]] = ()
    ) -> Credential | Conflict | Malformed | None:
        """`read`, for callers that judge definite job tokens only: a `Candidate` is None."""
        found = self.read(view, body_params)
        return None if isinstance(found, Candidate) else found

    def read(self, view: RequestView, body_params: Sequence[tuple[str, object]] = ()) -> Extraction:
        """The job token GitLab would authenticate this request with, or why there is none.

        Returns None when no job token is present (other credentials alone are not ours to
        judge), a `Conflict` when the credentials are ambiguous, `Malformed` for a token GitLab
        rejects on sight, a `Candidate` for one unrecognised value GitLab may read as a job token
        or as another credential (the caller finds out which), else the `Credential`. The
        carriers read are those of the request-target's route family. Raises
        `params.BodyError` when `view.body` should be a form, JSON or multipart body and does
        not parse (Rails would answer 400; we cannot tell what it would read), or is multipart
        that readers could read differently (`multipart.Scanner`). `body_params` are the
        parameters of a body read elsewhere (a streamed multipart body,
        `gateway.proxy.bodyguard`), judged exactly as if `view.body` held them.
        """
        target = view.target
        found, repeated = self._from_headers(view.headers, target)
        pairs = request_params(view)
        if body_params:
            refuse_method_override(view.method, body_params)
            pairs = [*pairs, *body_params]
        if pairs:
            found.extend(self._from_params(pairs, target))
        if len(found) == 1 and not repeated:  # the common case: one carrier
            chosen = found[0]
            if not chosen.job:
                return _candidate(chosen, []) if chosen.maybe else None
            if chosen.problem:
                return _conflict(found, [], repeated)
        else:
            jobs = [item for item in found if item.job]
            if not jobs:
                return _without_job_token(found, repeated)
            values = {item.value for item in jobs if not item.problem}
            # A candidate holding the very value of a job token is that job token.
            others = [
                item
                for item in found
                if (not item.job and not item.maybe) or (item.maybe and item.value not in values)
            ]
            if conflict := _conflict(jobs, others, repeated):
                return conflict
            chosen = min(jobs, key=lambda item: _RANK.get(item.carrier, len(_RANK)))
        if why := _malformation(chosen):
            return Malformed(chosen.carrier, why)
        return _credential(chosen.carrier, digest(chosen.value), chosen.value)

    def _from_headers(self, headers: Headers, target: str) -> tuple[list[_Found], list[str]]:
        found: list[_Found] = []
        repeated: list[str] = []
        seen: list[Carrier] = []
        memo = self._memo
        for name, value in headers.items():  # one pass: requests carry few headers
            try:
                carrier = memo[name]
            except KeyError:  # a name not seen yet (or past the memo's bound)
                carrier = self._header_carrier(name)
                if len(memo) < _HEADER_MEMO_SIZE and len(name) <= _HEADER_MEMO_NAME:
                    memo[name] = carrier
            if carrier is None:
                continue
            if carrier is Carrier.API_KEY_HEADER and not _reads_header(self._family(target), name):
                continue  # another family's header: GitLab does not read it here
            if seen.count(carrier) == 1:  # its second occurrence
                repeated.append(f"{carrier} repeated")
            seen.append(carrier)
            if carrier is Carrier.AUTHORIZATION:
                family = self._family(target)
                split = authorization_scheme(value)
                found.extend(self._from_authorization(value, family, split))
                found.extend(self._hidden_basic(value, family, split))
                continue
            value = value.strip()
            if not value:
                continue
            if carrier is Carrier.JOB_TOKEN_HEADER:  # the usual carrier: `_classify`, inlined
                found.append(_Found(carrier, value, True))
            elif (item := self._classify(carrier, value)) is not None:
                found.append(item)
        return found, repeated

    def _header_carrier(self, name: str) -> Carrier | None:
        """The carrier a header name is (Carrier.AUTHORIZATION for `Authorization`), or None."""
        upper = name.upper()
        carrier = _HEADERS.get(upper)
        if carrier is None and "TOKEN" in upper:
            # CGI-style servers fold every byte outside [A-Za-z0-9] to `_`: `Job.Token` is
            # HTTP_JOB_TOKEN there, so it is judged as the JOB-TOKEN header.
            carrier = _HEADERS.get(_FOLD.sub("_", upper))
        if carrier is None and upper == "AUTHORIZATION":
            carrier = Carrier.AUTHORIZATION
        if carrier is None and _FOLD.sub("_", upper) in self._named:
            carrier = Carrier.API_KEY_HEADER  # read on its family's routes only (`_from_headers`)
        return carrier

    def _family(self, target: str) -> Family:
        """The route family of a request-target: decided only for the carriers whose reading
        depends on it (Authorization, a named header, `token`), not for JOB-TOKEN alone."""
        # A target without the literal every family's paths share (`CarrierMap.needle`,
        # "packages" for FAMILIES; "" matches every target) and without escapes is in none.
        if self._carriers.needle in target or "%" in target:
            return self._carriers.family_for(target)
        return DEFAULT

    def _from_params(self, pairs: Iterable[tuple[str, object]], target: str) -> Iterator[_Found]:
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
                if (
                    carrier is Carrier.TOKEN_PARAM
                    and Reading.TOKEN_PARAM_JWT in self._family(target).readings
                ):
                    # The Terraform registry's `?token=<JWT>`: the job token is its `token`
                    # claim.
                    wrapped = conan_jwt.claim(value, "token")
                    if wrapped is not None:
                        found = self._classify(Carrier.TOKEN_PARAM_JWT, wrapped)
                        if found is not None:
                            yield found
                        continue
                found = self._classify(carrier, value)
                if found is not None:
                    yield found

    def _classify(self, carrier: Carrier, value: str) -> _Found | None:
        if carrier in (Carrier.PRIVATE_TOKEN_HEADER, Carrier.PRIVATE_TOKEN_PARAM):
            # A glcbt- PAT is skipped by GitLab (find_personal_access_token: `current_token
            # .start_with?(::Ci::Build::TOKEN_PREFIX)`, the bare prefix), so it is absent here too.
            return None if value.startswith(JOB_TOKEN_PREFIX) else _Found(carrier, value, job=False)
        if carrier in (Carrier.JOB_TOKEN_PARAM, Carrier.JOB_TOKEN_HEADER):
            return _Found(carrier, value, job=True)
        if carrier is Carrier.TOKEN_PARAM:
            return _Found(carrier, value, job=not value.startswith(self._others))
        prefixed = value.startswith(self._prefixes)
        if carrier is Carrier.DEPLOY_TOKEN_HEADER:  # never a job token for GitLab: stricter
            return _Found(carrier, value, job=prefixed)
        # Bearer, access_token and bearer_token params: `find_user_from_job_bearer_token` runs
        # Ci::AuthJobFinder on any OAuth value (lib/gitlab/auth/auth_finders.rb), and the family
        # carriers run TokenResolver's job finder on any value (`with_job_token`): unprefixed, it
        # is a job token of GitLab < 16.9 or another credential, so a candidate.
        maybe = not prefixed and not value.startswith(self._others)
        return _Found(carrier, value, job=prefixed, maybe=maybe)

    def _from_authorization(
        self, value: str, family: Family, split: tuple[str | None, str | None]
    ) -> list[_Found]:
        """What GitLab reads from one Authorization value on a route of `family`.

        One split for every scheme (`authorization_scheme`, ActionPack's): `Basic<TAB>...` is
        Basic there. Doorkeeper's Bearer rule is narrower (`/^Bearer /i`,
        Doorkeeper::OAuth::Token.from_bearer_authorization): whatever it reads, this reads too.
        `split` is `authorization_scheme(value)`, computed once for this and `_hidden_basic`.
        """
        scheme, param = split
        if scheme is None:
            return []
        readings = family.readings
        rest = (param or "").strip(RUBY_SPACE)
        lower = scheme.lower()
        if not readings:  # APIGuard's carriers only (most routes): the branches below, shortened
            if lower == "bearer" and rest:
                item = self._classify(Carrier.BEARER, rest)
            elif lower == "basic" and rest:
                item = self._from_basic(rest)
            else:
                item = _Found(Carrier.AUTHORIZATION, value, job=False)
            return [] if item is None else [item]
        found: list[_Found | None] = []
        if lower == "bearer" and rest:
            wrapped = conan_jwt.conan_access_token(rest) if Reading.CONAN_JWT in readings else None
            if wrapped is not None:  # a Conan JWT: it wraps the credential GitLab reads
                found.append(self._classify(Carrier.CONAN_JWT, wrapped))
            else:
                found.append(self._classify(Carrier.BEARER, rest))
        elif lower == "basic" and rest:
            found.append(self._from_basic(rest, any_user=Reading.BASIC_ANY_USER in readings))
        elif Reading.HTTP_TOKEN in readings and param is None:
            # `http_token` (TokenLocator#extract_from_http_token): the whole value is the token
            # (RubyGems clients send it bare). A value with a scheme is no token GitLab finds.
            found.append(self._classify(Carrier.AUTHORIZATION_VALUE, scheme))
        elif Reading.BEARER_LAST_WORD not in readings:  # (there, the last word is what is read)
            found.append(_Found(Carrier.AUTHORIZATION, value, job=False))
        if Reading.BEARER_LAST_WORD in readings:
            # `http_bearer_token` (TokenLocator#extract_from_http_bearer_token):
            # `password.split(' ').last`, Ruby's awk-style split, whatever the scheme.
            last = RUBY_SPACES.split(value.strip(RUBY_SPACE))[-1]
            found.append(self._classify(Carrier.AUTHORIZATION_LAST_WORD, last))
        if Reading.BASIC_ANY_USER in readings and "Basic " in value and scheme != "Basic":
            # PackagesManagerClientsHelpers#decode_token reads whatever follows the first
            # "Basic " anywhere in the value (`split('Basic ', 2).second`), with Ruby's lenient
            # Base64: what it would read is unknowable, so refused.
            problem = "Authorization holds 'Basic ' where GitLab's package helpers would read it"
            found.append(_Found(Carrier.BASIC_ANY_USER, "", job=True, problem=problem))
        return [item for item in found if item is not None]

    def _hidden_basic(
        self, value: str, family: Family, split: tuple[str | None, str | None]
    ) -> list[_Found]:
        """Job tokens GitLab's scheme-blind Basic readings find in an Authorization value
        (`basic_credentials`, `packages_basic_password`): a user `gitlab-ci-token` or a prefixed
        password, whatever the scheme; on a family whose helpers take any user's Basic password,
        an unprefixed password too (a candidate). Only job tokens (and candidates) are kept: any
        Authorization value is already a credential of its own (`_from_authorization`)."""
        scheme, param = split  # authorization_scheme(value)
        if scheme is None or scheme.lower() == "basic":
            return []  # `_from_basic` reads it (strictly: what it cannot decode is refused)
        found: list[_Found] = []
        prefixes = self._prefixes
        any_user = Reading.BASIC_ANY_USER in family.readings
        pair = basic_pair(param)  # basic_credentials(value)
        if pair is not None:
            if pair[0] == CI_JOB_USER or pair[1].startswith(prefixes):
                found.append(_Found(Carrier.BASIC, pair[1], job=True))
            elif any_user and _token_shaped(pair[1]):
                found.append(self._classify(Carrier.BASIC_ANY_USER, pair[1]))  # type: ignore[arg-type]
        password = packages_basic_password(value)
        if password is not None:
            if password.startswith(prefixes):
                found.append(_Found(Carrier.BASIC, password, job=True))
            elif any_user and _token_shaped(password):
                found.append(self._classify(Carrier.BASIC_ANY_USER, password))  # type: ignore[arg-type]
        return found

    def _from_basic(self, encoded: str, *, any_user: bool = False) -> _Found | None:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            # Ruby's Base64.decode64 is lenient: what it would read is unknowable, so refuse.
            return _Found(
                Carrier.BASIC, "", job=True, problem="Authorization Basic does not decode"
            )
        if not sep or not password:
            # `find_user_from_job_token_basic_auth` needs login and password present.
            return _Found(Carrier.BASIC, password, job=False) if user or password else None
        if user == CI_JOB_USER:
            return _Found(Carrier.BASIC, password, job=True)
        if any_user:  # find_job_from_http_basic_auth: any user name, any password
            return self._classify(Carrier.BASIC_ANY_USER, password)
        return _Found(Carrier.BASIC, password, job=password.startswith(self._prefixes))


# GitLab's defaults, for tools and tests (`read`, `extract`): the gateway itself reads with the
# `Reader` its Gate builds from Settings (`Gate.tokens`).
DEFAULT_READER = Reader()


def extract(
    view: RequestView, body_params: Sequence[tuple[str, object]] = ()
) -> Credential | Conflict | Malformed | None:
    """`Reader.extract` as a GitLab with the defaults reads (`DEFAULT_READER`)."""
    return DEFAULT_READER.extract(view, body_params)


def read(view: RequestView, body_params: Sequence[tuple[str, object]] = ()) -> Extraction:
    """`Reader.read` as a GitLab with the defaults reads (`DEFAULT_READER`): no instance
    prefix, the API at /api/v4, no relative URL root."""
    return DEFAULT_READER.read(view, body_params)


def _without_job_token(found: list[_Found], repeated: list[str]) -> Extraction:
    """No definite job token: None, or the one candidate (two different ones, or a candidate
    in a repeated header, are a conflict: either could be the job token GitLab reads)."""
    maybes = [item for item in found if item.maybe]
    if not maybes:
        return None
    if len({item.value for item in maybes}) > 1 or repeated:
        reasons = [*repeated]
        if len({item.value for item in maybes}) > 1:
            reasons.append("different unrecognised credentials in " + _names(maybes))
        carriers = tuple(dict.fromkeys(str(item.carrier) for item in found))
        return Conflict(carriers, "; ".join(reasons))
    chosen = min(maybes, key=lambda item: _RANK.get(item.carrier, len(_RANK)))
    return _candidate(chosen, [item for item in found if not item.maybe])


def _candidate(item: _Found, others: list[_Found]) -> Candidate | None:
    if _malformation(item):
        return None  # no job token GitLab could find: another credential
    names = tuple(dict.fromkeys(str(other.carrier) for other in others))
    return Candidate(item.carrier, digest(item.value), item.value, names)


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
