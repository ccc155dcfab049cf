"""The one Settings class: every tunable, its flag, its `GATEWAY_*` variable and its default.

This is the only module that reads the environment. Settings are built once at start-up
(`Settings.from_args`) and passed down; tests build `Settings(...)` directly.
Every field has a description: the README's configuration reference is generated from them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from gateway.errors import ConfigError

__all__ = [
    "DEFAULT_ROUTES",
    "SHIPPED_TABLES",
    "Engine",
    "HostPolicy",
    "LogFormat",
    "Mode",
    "Settings",
    "UnknownCredential",
    "flag_for",
    "shipped_table",
]


# The route tables shipped in policies/, by the name `--routes` accepts for them: `seed` is the
# table of the seed page (the default), `current` the table of GitLab's current page format.
SHIPPED_TABLES = {"seed": "routes.yaml", "current": "routes-current.yaml"}


def shipped_table(name: str) -> Path:
    """The checkout's policies/<file> of a shipped table, else the copy a wheel ships as
    `gateway.policies`. Raises KeyError for a name not in SHIPPED_TABLES."""
    return _policies_file(SHIPPED_TABLES[name])


def _policies_file(name: str) -> Path:
    """The checkout's policies/<name>, else the copy a wheel ships as `gateway.policies`."""
    checkout = Path(__file__).resolve().parent.parent / "policies" / name
    if checkout.exists():
        return checkout
    try:
        return Path(str(resources.files("gateway.policies").joinpath(name)))
    except ModuleNotFoundError:
        return checkout


DEFAULT_ROUTES = shipped_table("seed")
DEFAULT_SUPPLEMENTARY_ROUTES = _policies_file("routes-supplementary.yaml")
ENV_PREFIX = "GATEWAY_"
MiB = 1024 * 1024


class Mode(StrEnum):
    ENFORCE = "enforce"
    DRY_RUN = "dry-run"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class HostPolicy(StrEnum):
    PRESERVE = "preserve"
    UPSTREAM = "upstream"


class Engine(StrEnum):
    AIOHTTP = "aiohttp"
    LEAN = "lean"


class UnknownCredential(StrEnum):
    """What an unrecognised value in a carrier shared with other credentials is taken for."""

    AUTO = "auto"  # `upstream` when upstream validation is on, else `forward`
    UPSTREAM = "upstream"  # ask the upstream's GET /api/v4/job: a job token is judged
    FORWARD = "forward"  # another credential: forwarded untouched (and logged)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    # --- listeners and processes
    upstream: str | None = Field(
        None, description="Base URL of the API server requests are forwarded to (http or https)."
    )
    host: str = Field("127.0.0.1", description="Address the proxy listener binds.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the proxy listener.")
    admin_host: str = Field("127.0.0.1", description="Address the admin listener binds.")
    admin_port: int = Field(
        9090, ge=0, le=65535, description="Port of the admin listener (health, readiness, metrics)."
    )
    workers: int = Field(1, ge=1, le=64, description="Worker processes sharing the port.")
    engine: Engine = Field(
        Engine.LEAN,
        description="Proxy listener engine: `lean` (asyncio Protocols, llhttp both ways, a "
        "keep-alive upstream pool) or `aiohttp` (aiohttp's server and client).",
    )
    decision_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the decision listener (nginx auth_request, Traefik/Caddy "
        "forward-auth, Envoy ext_authz) in every worker; unset = none. With `--port 0` it runs "
        "alone.",
    )
    decision_host: str = Field("127.0.0.1", description="Address the decision listener binds.")
    decision_trusted_peers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="CIDRs allowed to ask the decision listener (comma-separated or JSON list); "
        "anyone else is refused.",
    )
    decision_path_prefix: str = Field(
        "",
        description="Path prefix of Envoy ext_authz check requests (its `path_prefix`): the "
        "original target is what follows it.",
    )
    grace_period: float = Field(
        30.0,
        ge=0,
        description="Seconds SIGTERM's drain lasts at most: requests still running at its end "
        "are answered 503 (`drain_cut`), or cut if their response has started.",
    )

    # --- policy
    mode: Mode = Field(
        Mode.ENFORCE,
        description="`enforce` denies; `dry-run` forwards everything and logs what it would deny.",
    )
    routes: Path = Field(
        DEFAULT_ROUTES,
        description="Route table: `seed` (the seed page's, policies/routes.yaml), `current` "
        "(GitLab's current page, policies/routes-current.yaml) or a file generated by "
        "`policies import`.",
    )
    routes_supplementary: Path | None = Field(
        DEFAULT_SUPPLEMENTARY_ROUTES,
        description=(
            "Supplementary route file (route families GitLab opens to job tokens that the "
            "page does not list, runner routes), compiled with `routes`; empty to leave it out."
        ),
    )
    store: str = Field(
        "sqlite:///gateway.db",
        description="Token store URL: sqlite:///path, file:///path.yaml, redis://host:port/db, "
        "memory://. It must exist (`store load --create` makes one); sqlite:///gateway.db is "
        "relative to the working directory, sqlite:////abs/path.db is absolute.",
    )
    api_prefix: str = Field(
        "/api/v4", description="Path prefix of the API the route table applies to."
    )
    relative_url_root: str = Field(
        "", description="GitLab's relative URL root (e.g. /gitlab) in front of the API prefix."
    )
    require_job_token: bool = Field(
        False,
        description="Reject requests that carry no CI/CD job token instead of forwarding them.",
    )
    git_http: bool = Field(
        True,
        description="Let job tokens use git over HTTP (clone/fetch/push, LFS) outside the API.",
    )
    upstream_validation: bool = Field(
        False,
        description="Validate tokens the store does not know with the upstream's GET /api/v4/job.",
    )
    unknown_credential: UnknownCredential = Field(
        UnknownCredential.AUTO,
        description=(
            "An unrecognised value where GitLab may read a job token or another credential "
            "(Bearer, Basic, a bare Authorization, X-Nuget-Apikey): `upstream` asks GET "
            "/api/v4/job whether it is a job token (and judges it if so), `forward` passes it "
            "on as another credential (logged); `auto`: `upstream` with --upstream-validation, "
            "else `forward`."
        ),
    )
    job_token_prefix: str = Field(
        "",
        description=(
            "Your instance's token prefix as it appears before `glcbt-` in job tokens (e.g. "
            "`mycorp-`); `glcbt-` alone is always recognised."
        ),
    )
    negative_cache_ttl: float = Field(
        5.0,
        ge=0,
        description='Seconds the upstream\'s "not a job token" answer for a value is remembered.',
    )
    negative_cache_size: int = Field(
        10_000, ge=0, description='Values remembered as "not a job token" by the upstream check.'
    )
    enforce_allowlist: bool = Field(
        False,
        description=(
            "Mirror GitLab's instance setting enforce_ci_inbound_job_token_scope_enabled (on by "
            "default since GitLab 18.0): an allowlist that is off counts as on, with its entries."
        ),
    )
    package_lookup_token: SecretStr | None = Field(
        None,
        description=(
            "Read token (read_api, sees every group's packages) with which the gateway asks the "
            "upstream which project owns a package on group/instance Maven and npm routes, and "
            "whether a dependency job of GET /jobs/:id/artifacts is in the token's own project; "
            "unset = those routes stay target_unresolved."
        ),
    )
    package_lookup_ttl: float = Field(
        60.0, ge=0, description="Seconds a package lookup's answer (its project) stays cached."
    )
    cache_size: int = Field(10_000, ge=0, description="Token resolutions kept in the LRU cache.")
    cache_ttl: float = Field(
        30.0, ge=0, description="Seconds a cached token resolution stays valid (never past expiry)."
    )
    store_timeout: float = Field(
        2.0, gt=0, description="Seconds a store lookup may take before the request fails with 503."
    )
    observations: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="With a redis:// store: keep a bounded aggregate of job-token observations "
        "(at most this many distinct ones) for `suggest`/`audit --from-store`; 0 = off.",
    )

    # --- forwarding
    host_policy: HostPolicy = Field(
        HostPolicy.PRESERVE,
        description="`preserve` forwards the client's Host; `upstream` sends the upstream's host.",
    )
    # NoDecode: the env var is a comma-separated list (a JSON list works too, see _split_cidrs).
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs whose X-Forwarded-* headers are kept (comma-separated or JSON list); "
        "behind them the log's `remote` is the client from X-Forwarded-For and their "
        "X-Request-Id is kept.",
    )
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to connect to the upstream.")
    read_timeout: float = Field(
        300.0, gt=0, description="Seconds the upstream may stay silent while a response is awaited."
    )
    pool_limit: int = Field(512, ge=1, description="Maximum upstream connections per worker.")
    keepalive_timeout: float = Field(
        15.0, gt=0, description="Seconds an idle upstream connection is kept (below upstream's)."
    )
    max_body_size: int = Field(
        0, ge=0, description="Largest request body forwarded, in bytes; 0 = unlimited (streamed)."
    )
    body_inspect_limit: int = Field(
        1 * MiB,
        ge=0,
        description=(
            "Largest form/JSON/multipart body read to find token parameters; larger ones are "
            "refused, except multipart/form-data, whose parts are checked as it streams."
        ),
    )
    max_line_size: int = Field(8190, ge=256, description="Longest request line accepted, in bytes.")
    max_field_size: int = Field(8190, ge=256, description="Longest header accepted, in bytes.")
    max_headers: int = Field(128, ge=8, description="Most headers accepted in one request.")
    client_header_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a client has to send a complete request head (from connecting, or "
        "after the previous response on a kept-alive connection).",
    )
    client_body_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a client may stay silent while sending a request body (408, then close).",
    )
    max_connections: int = Field(
        10_000,
        ge=1,
        description="Client connections each worker holds at most; more get 503 and are closed.",
    )

    # --- logs
    log_format: LogFormat = Field(
        LogFormat.AUTO, description="`json`, `console`, or `auto` (console on a TTY, else JSON)."
    )
    log_level: str = Field("info", description="Minimum log level (debug, info, warning, error).")

    @field_validator("upstream")
    @classmethod
    def _upstream_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")) or "?" in value or "#" in value:
            raise ValueError("must be an http:// or https:// URL without query or fragment")
        return value.rstrip("/")

    @field_validator("routes_supplementary", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("routes", mode="before")
    @classmethod
    def _shipped_table_name(cls, value: Any) -> Any:
        # A bare shipped name selects that table; anything else is a path (`./seed` for a file
        # named seed in the working directory).
        if isinstance(value, str) and value in SHIPPED_TABLES:
            return shipped_table(value)
        return value

    @field_validator("api_prefix", "relative_url_root", "decision_path_prefix")
    @classmethod
    def _is_path_prefix(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("trusted_proxies", "decision_trusted_peers", mode="before")
    @classmethod
    def _split_cidrs(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            value = [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies", "decision_trusted_peers")
    @classmethod
    def _valid_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("job_token_prefix")
    @classmethod
    def _printable_prefix(cls, value: str) -> str:
        if value and not (value.isascii() and value.isprintable() and " " not in value):
            raise ValueError("must be printable ASCII without spaces")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @classmethod
    def build(cls, **overrides: Any) -> Settings:
        """Build from the environment plus explicit overrides; errors become one-line ConfigErrors."""
        _refuse_unknown_env()
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None
        except (SettingsError, ValueError) as exc:
            raise ConfigError(f"invalid settings: {exc}") from None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, only: set[str] | None = None) -> None:
        """Add one `--flag` per field (or per field in `only`); unset flags fall back to env/default."""
        for name, field in cls.model_fields.items():
            if only is not None and name not in only:
                continue
            flag = flag_for(name)
            default = _shown_default(field.get_default(call_default_factory=True))
            help_text = f"{field.description} [default: {default}; env {env_for(name)}]"
            help_text = help_text.replace("%", "%%")  # argparse formats help with %
            if field.annotation is bool:
                parser.add_argument(
                    flag,
                    dest=name,
                    default=None,
                    action=argparse.BooleanOptionalAction,
                    help=help_text,
                )
            else:
                parser.add_argument(
                    flag, dest=name, default=None, metavar=name.upper(), help=help_text
                )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        overrides = {
            name: getattr(args, name)
            for name in cls.model_fields
            if getattr(args, name, None) is not None
        }
        return cls.build(**overrides)


def _shown_default(value: Any) -> str:
    """A default as `--help` shows it (what the flag takes, not Python's repr)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    if value is None:
        return "none"
    return str(value)


def _refuse_unknown_env() -> None:
    """A misspelled GATEWAY_* variable is an error, not a silently ignored setting."""
    unknown = sorted(
        key
        for key in os.environ
        if key.upper().startswith(ENV_PREFIX)
        and key.upper()[len(ENV_PREFIX) :].lower() not in Settings.model_fields
    )
    if unknown:
        raise ConfigError(f"unknown setting(s) in the environment: {', '.join(unknown)}")


def flag_for(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_for(name: str) -> str:
    return ENV_PREFIX + name.upper()


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: `--port / GATEWAY_PORT: Input should be ... (got 'x')`."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "settings"
        where = f"{flag_for(name)} / {env_for(name)}" if name in Settings.model_fields else name
        got = error.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"invalid setting {where}: {error['msg']}{shown}")
    return "; ".join(lines)
