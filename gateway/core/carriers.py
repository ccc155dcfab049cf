# ruff: noqa: S105 - carrier names ("Authorization value") are labels, not secrets
"""Which carriers GitLab reads a job token from, per route family: data compiled at start-up.

Every API route reads the carriers of `API::APIGuard#find_user_from_sources` (lib/api/api_guard.rb;
`gateway.core.tokens` reads those everywhere). Some route families read more, through
`authenticate_with` (lib/api/helpers/authentication.rb `token_from_namespace_inheritable`, with
the locations of lib/gitlab/api_authentication/token_locator.rb) or through their own helpers.
Each `Family` below names those extra readings and cites the declaration it comes from. Reading
a carrier on a route where GitLab does not is stricter, never more permissive, so a family's
path pattern may cover a little more than GitLab's routes do (a percent-decoded path, any `:id`).

`CarrierMap` compiles every family into one regular expression for a given API prefix, once at
start-up; a request costs one `match` on its path (`family_for`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote

__all__ = ["DEFAULT", "FAMILIES", "CarrierMap", "Family", "Reading"]


class Reading(StrEnum):
    """An extra way a family reads a credential (beyond APIGuard's carriers)."""

    # `http_token` (TokenLocator#extract_from_http_token): the whole Authorization value.
    HTTP_TOKEN = "Authorization value"
    # `http_bearer_token` (TokenLocator#extract_from_http_bearer_token): `password.split(' ')
    # .last`, the last word of Authorization whatever the scheme.
    BEARER_LAST_WORD = "Authorization last word"
    # PackagesManagerClientsHelpers#find_job_from_http_basic_auth: the Basic password is tried
    # as a job token whatever the user name (`decode_token` drops the user).
    BASIC_ANY_USER = "Authorization Basic (any user)"
    # Conan::ApiHelpers#find_job_from_conan_jwt: the `access_token` claim of the Conan JWT sent
    # as `Authorization: Bearer` (Gitlab::ConanToken).
    CONAN_JWT = "Conan JWT"
    # TokenResolver#resolve_job_token_from_jwt on `token_param`: the `token` claim of the
    # Terraform registry JWT in the `token` query parameter (Gitlab::TerraformRegistryToken).
    TOKEN_PARAM_JWT = "token parameter JWT"


@dataclass(frozen=True, slots=True)
class Family:
    """Routes (patterns under the API prefix; `:id` is one segment, `**` anything after) and
    the extra readings and named headers (`http_header`) GitLab applies on them."""

    name: str
    paths: tuple[str, ...]
    readings: frozenset[Reading]
    headers: tuple[str, ...] = ()
    source: str = ""


# The family of every route not listed below: APIGuard's carriers only.
DEFAULT = Family("api", (), frozenset(), (), "lib/api/api_guard.rb find_user_from_sources")

FAMILIES: tuple[Family, ...] = (
    Family(
        "conan",
        ("/packages/conan/**", "/projects/:id/packages/conan/**"),
        frozenset({Reading.CONAN_JWT, Reading.BASIC_ANY_USER}),
        (),
        "lib/api/helpers/packages/conan/api_helpers.rb find_job_from_token "
        "(find_job_from_conan_jwt || find_job_from_http_basic_auth)",
    ),
    Family(
        "rubygems",
        ("/projects/:id/packages/rubygems/**",),
        frozenset({Reading.HTTP_TOKEN, Reading.BASIC_ANY_USER}),
        (),
        "lib/api/rubygem_packages.rb authenticate_with "
        "token_types(:personal_access_token, :deploy_token, :job_token).sent_through(:http_token)",
    ),
    Family(
        "cargo",
        ("/projects/:id/packages/cargo/**",),
        frozenset({Reading.BEARER_LAST_WORD, Reading.BASIC_ANY_USER}),
        (),
        "lib/api/cargo_project_packages.rb authenticate_with "
        "token_types(:personal_access_token, :deploy_token, :job_token)"
        ".sent_through(:http_bearer_token)",
    ),
    Family(
        "terraform-modules",
        # `packages/terraform/modules/v1/…` now, `packages/terraform/v1/modules/…` before 16.x
        ("/packages/terraform/**",),
        frozenset({Reading.BEARER_LAST_WORD, Reading.TOKEN_PARAM_JWT, Reading.BASIC_ANY_USER}),
        (),
        "lib/api/terraform/modules/v1/namespace_packages.rb authenticate_with "
        "sent_through(:http_bearer_token); file: token_types(:job_token_from_jwt, ...)"
        ".sent_through(:token_param)",
    ),
    Family(
        "dependency-proxy",
        ("/projects/:id/dependency_proxy/packages/**",),
        frozenset({Reading.BEARER_LAST_WORD, Reading.BASIC_ANY_USER}),
        (),
        "ee/lib/api/dependency_proxy/packages/npm.rb authenticate_with "
        "token_types(:personal_access_token, :deploy_token, :job_token)"
        ".sent_through(:http_bearer_token)",
    ),
    Family(
        "nuget",
        ("/projects/:id/packages/nuget/**", "/groups/:id/-/packages/nuget/**"),
        frozenset({Reading.BASIC_ANY_USER}),
        ("X-Nuget-Apikey",),
        "lib/api/nuget_project_packages.rb, nuget_group_packages.rb authenticate_with "
        "token_types(:personal_access_token, :deploy_token, :job_token)"
        ".sent_through(http_header: API_KEY_HEADER)",
    ),
    # Every other package registry: the packages helpers take the Basic password as a job token
    # whatever the user name (PackagesManagerClientsHelpers#find_job_from_http_basic_auth, the
    # helper of the registries' own clients; Conan uses it today, older GitLab more registries).
    Family(
        "packages",
        (
            "/packages/**",
            "/projects/:id/packages/**",
            "/groups/:id/-/packages/**",
            "/group/:id/-/packages/**",
        ),
        frozenset({Reading.BASIC_ANY_USER}),
        (),
        "lib/api/helpers/packages_manager_clients_helpers.rb find_job_from_http_basic_auth",
    ),
)


_ESCAPE = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_SLASHES = re.compile(r"/{2,}")


def _unescape(match: re.Match[str]) -> str:
    text = match.group()
    if "%2F" in text.upper():
        pieces = re.split("(%2[Ff])", text)
        return "".join(
            p if p.upper() == "%2F" else unquote(p, errors="surrogateescape") for p in pieces
        )
    return unquote(text, errors="surrogateescape")


def _pattern(path: str) -> str:
    parts = []
    for segment in path.strip("/").split("/"):
        if segment == "**":
            parts.append("(?:/.*)?")
        elif segment.startswith(":"):
            parts.append("/[^/]+")
        else:
            parts.append("/" + re.escape(segment))
    return "".join(parts)


def _needle(families: tuple[Family, ...]) -> str:
    """The longest literal ASCII segment (without `%`) of every path of every family ("" when
    they have none in common): a path without it matches no family."""
    common: set[str] | None = None
    for family in families:
        for path in family.paths:
            literal = {
                s for s in path.split("/") if s.isascii() and s[:1] not in ":*" and "%" not in s
            }
            common = literal if common is None else common & literal
    return max(sorted(common), key=len) if common else ""


class CarrierMap:
    """The route families of one API prefix, compiled into one expression (first family wins:
    FAMILIES lists the specific ones before `packages`)."""

    def __init__(
        self, families: tuple[Family, ...] = FAMILIES, *, api_prefix: str, relative_url_root: str
    ) -> None:
        self.families = families
        head = re.escape(relative_url_root + api_prefix)
        alternatives = [
            f"(?P<f{index}>{'|'.join(_pattern(path) for path in family.paths)})"
            for index, family in enumerate(families)
        ]
        self._regex = re.compile(f"{head}(?:{'|'.join(alternatives)})\\Z", re.DOTALL)
        # Every named header of every family: `gateway.core.tokens` reads them on their family only.
        self.headers = frozenset(name.upper() for family in families for name in family.headers)
        # A literal segment every family's paths hold ("packages" for FAMILIES), and the escapes
        # of its characters (`%70` is `p`): see family_for.
        self.needle = _needle(families)
        escapes = "|".join(f"%{ord(c):02X}" for c in sorted(set(self.needle)))
        self._hidden = re.compile(escapes or "(?!)", re.IGNORECASE)

    def family_for(self, target: str) -> Family:
        """The family of a request-target (its path, percent-decoded and with repeated slashes
        squeezed: read at least what Rails routes), DEFAULT when none matches."""
        path = target.partition("?")[0]
        if "%" not in path:
            return self._match(path)
        if self.needle and self.needle not in path and self._hidden.search(path) is None:
            # Neither reading below can hold the needle, so neither matches: decoding only
            # turns escapes into characters, and no escape here is one of the needle's.
            return DEFAULT
        # Decode every escape but an encoded slash (`acme%2Fapp` stays one `:id` segment); then,
        # should a router also read `%2F` as `/` elsewhere in the path, every escape. When the
        # only escapes are encoded slashes (`acme%2Fapp`, the usual one), the first is the path.
        only_slashes = path.count("%") == path.upper().count("%2F")
        found = self._match(path if only_slashes else _ESCAPE.sub(_unescape, path))
        if found is DEFAULT:
            found = self._match(unquote(path, errors="surrogateescape"))
        return found

    def _match(self, path: str) -> Family:
        if "//" in path:  # Rails' router squeezes repeated slashes (Journey normalize_path)
            path = _SLASHES.sub("/", path)
        found = self._regex.match(path)
        if found is None:
            return DEFAULT
        return self.families[int(str(found.lastgroup)[1:])]
