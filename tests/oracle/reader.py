"""The Python side of the differential oracle: a persistent `gitlab_reader.rb` process, and what
its answers mean for the gateway.

`GitLabReader.read(request)` says what GitLab's stack (Rack 2.2, ActionPack, Grape, Doorkeeper as
Debian ships them, with GitLab's own carrier code mirrored in Ruby) reads from one raw request,
for a Rails route (`rails`) and for the API (`api`, through Grape's body parsing).
`job_tokens(reading)` picks the job tokens among those carriers: the values the property tests
hold the gateway to.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

from gateway.core import params, tokens
from gateway.core.request import RequestView

SCRIPT = Path(__file__).with_name("gitlab_reader.rb")
PREFIX = tokens.JOB_TOKEN_PREFIX.encode()
CI_JOB_USER = tokens.CI_JOB_USER.encode()


@dataclass(frozen=True)
class Raw:
    """One request as a client sends it (header values without surrounding whitespace, as any
    HTTP server hands them over)."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    named_headers: tuple[str, ...] = ()  # TokenLocator `http_header` locations to read

    def as_json(self) -> str:
        return json.dumps(
            {
                "method": self.method,
                "target": self.target,
                "headers": [list(pair) for pair in self.headers],
                "body": base64.b64encode(self.body).decode(),
                "named_headers": list(self.named_headers),
            }
        )


@dataclass(frozen=True)
class NonString:
    """A carrier whose value is not a string in Ruby (a Hash from `job_token[x]=`, an Array)."""

    type: str
    inspect: str


Value = bytes | NonString


@dataclass(frozen=True)
class Stack:
    """What one stack (Rails controller or Grape API) reads."""

    method: str | None
    carriers: dict[str, Value]
    error: str | None
    status: int | None
    params: Any = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Stack:
        carriers: dict[str, Value] = {}
        for name, value in (raw.get("carriers") or {}).items():
            if "s" in value:
                carriers[name] = base64.b64decode(value["s"])
            else:
                carriers[name] = NonString(value["type"], value["inspect"])
        return cls(
            raw.get("method"), carriers, raw.get("error"), raw.get("status"), raw.get("params")
        )


@dataclass(frozen=True)
class Reading:
    rails: Stack
    api: Stack

    @property
    def stacks(self) -> tuple[Stack, Stack]:
        return self.rails, self.api


@dataclass
class GitLabReader:
    """One `ruby gitlab_reader.rb` process, read line by line (one request per line)."""

    proc: subprocess.Popen[bytes]
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls) -> GitLabReader:
        proc = subprocess.Popen(
            ["ruby", str(SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        return cls(proc, versions())

    def read(self, request: Raw) -> Reading:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(request.as_json().encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"gitlab_reader.rb exited ({self.proc.poll()}) on {request!r}")
        answer = json.loads(line)
        return Reading(Stack.parse(answer["rails"]), Stack.parse(answer["api"]))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def versions() -> dict[str, str]:
    """Ruby, Rack, ActionPack, Grape and Doorkeeper versions the oracle runs with."""
    out = subprocess.run(
        ["ruby", str(SCRIPT), "--versions"], capture_output=True, timeout=60, check=True
    )
    return dict(json.loads(out.stdout))


def unavailable() -> str | None:
    """Why the oracle cannot run here (None when it can)."""
    if shutil.which("ruby") is None:
        return "ruby is not installed (scripts/system-deps.sh installs ruby, ruby-rack, ruby-actionpack, ruby-grape, ruby-doorkeeper)"
    try:
        versions()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        return f"the oracle's gems do not load ({stderr.decode(errors='replace').strip()[-300:]}); scripts/system-deps.sh installs them"
    return None


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


# ------------------------------------------------------------------ which values are job tokens

# AuthFinders carriers that authenticate a job with any value (find_user_from_job_token_query_
# params_or_header; TokenLocator's job_token_header / job_token_param / token_param on the
# package routes that accept job tokens through them).
ANY_VALUE = (
    "job_token_param",
    "token_param",
    "job_token_header",
    "locator_job_token_header",
    "locator_job_token_param",
    "locator_token_param",
)
# Carriers the gateway judges today only when the value has the job-token prefix (Doorkeeper's
# and the deploy-token ones; an unprefixed job token there is the carriers work, issue 10).
PREFIXED_ONLY = (
    "access_token_param",
    "bearer_authorization",
    "bearer_token_param",
    "deploy_token_header",
    "locator_deploy_token_header",
    "locator_access_token_param",
    "packages_basic_password",
)
# Carriers the gateway does not read yet (issue 10, branch p10-carriers): TokenLocator's
# http_token (the whole Authorization value) and http_bearer_token (its last word, any scheme).
PENDING = ("locator_http_token", "locator_http_bearer_token")


def is_job_token(value: Value, known: frozenset[bytes]) -> bool:
    return isinstance(value, bytes) and (value.startswith(PREFIX) or value in known)


def job_tokens(
    reading: Reading,
    known: frozenset[bytes] = frozenset(),
    *,
    carriers: tuple[str, ...] = (),
    any_value: tuple[str, ...] = (),
    basic_any_user: bool = False,
) -> dict[bytes, set[str]]:
    """The job tokens GitLab would read from this request, on the carriers the gateway reads
    today, each with the carriers it came in (`api:`/`rails:` prefixed). `carriers` adds
    carriers read for prefixed values, `any_value` carriers read for known values too, and
    `basic_any_user` a known Basic password whatever the user (a route family's readings)."""
    found: dict[bytes, set[str]] = {}

    def add(stack: str, carrier: str, value: Value) -> None:
        if isinstance(value, bytes):
            found.setdefault(value, set()).add(f"{stack}:{carrier}")

    for name, stack in (("rails", reading.rails), ("api", reading.api)):
        got = stack.carriers
        for carrier in (*ANY_VALUE, *any_value):
            value = got.get(carrier)
            if value is not None and is_job_token(value, known):
                add(name, carrier, value)
        for carrier in (*PREFIXED_ONLY, *carriers):
            value = got.get(carrier)
            if isinstance(value, bytes) and value.startswith(PREFIX):
                add(name, carrier, value)
        for user_key, password_key in (
            ("basic_user", "basic_password"),
            ("locator_basic_user", "locator_basic_password"),
        ):
            user, password = got.get(user_key), got.get(password_key)
            if not isinstance(password, bytes) or not password or not user:
                continue
            # find_user_from_job_token_basic_auth: user gitlab-ci-token; the package helpers
            # take the password of any user (the gateway judges prefixed ones today).
            if (
                (user == CI_JOB_USER or basic_any_user) and is_job_token(password, known)
            ) or password.startswith(PREFIX):
                add(name, password_key, password)
        password = got.get("packages_basic_password")
        if basic_any_user and isinstance(password, bytes) and is_job_token(password, known):
            add(name, "packages_basic_password", password)
    return found


# Every carrier GitLab authenticates a job (or a Doorkeeper token) with, whatever its value.
JOB_CARRIERS = (*ANY_VALUE, "access_token_param", "bearer_authorization", "bearer_token_param")


def tries_a_job_carrier(reading: Reading) -> bool:
    """Does GitLab try to authenticate with some value on a job-token carrier (then it answers
    401 or authenticates: a refusal by the gateway is not over-strict there)?"""
    for stack in reading.stacks:
        got = stack.carriers
        if any(got.get(carrier) for carrier in JOB_CARRIERS):
            return True
        if got.get("basic_user") == CI_JOB_USER and got.get("basic_password"):
            return True
    return False


def overridden_method(reading: Reading, request: Raw) -> str | None:
    """The method Rack::MethodOverride makes of this request, when it differs."""
    method = reading.rails.method
    return method if method and method != request.method else None


# ------------------------------------------------------------------ the gateway, function level


@dataclass(frozen=True)
class Verdict:
    """What the gateway's reading (tokens.read, or tokens.extract before there was a `read`,
    on the view the handler builds) decides. A `Candidate` (an unrecognised value GitLab may
    read as a job token) is judged too: the gate resolves it through the store or upstream."""

    credential: Any = None  # tokens.Credential, or tokens.Candidate
    refused: str | None = None  # Conflict / Malformed / BodyError, with why

    @property
    def judged(self) -> bytes | None:
        if self.credential is None:
            return None
        return bytes(self.credential.secret.encode("utf-8", "surrogateescape"))


def gateway_reads(request: Raw) -> Verdict:
    """`tokens.extract` on the view the proxy would evaluate: the body only when the gate asks
    for it (`Gate.needs_body`: a form, JSON or multipart body by `params.body_kind`)."""
    headers: CIMultiDict[str] = CIMultiDict(request.headers)
    if request.body:
        headers.add("Content-Length", str(len(request.body)))
    kind = params.body_kind(headers, request.method)
    body = request.body if request.body and kind is not None else None
    view = RequestView(request.method, request.target, headers, body)
    try:
        found = getattr(tokens, "read", tokens.extract)(view)  # `read`: candidates too
    except params.BodyError as exc:
        return Verdict(refused=f"bad_body: {exc}")
    if isinstance(found, tokens.Conflict):
        return Verdict(refused=f"conflict: {found.detail}")
    if isinstance(found, tokens.Malformed):
        return Verdict(refused=f"malformed: {found.why}")
    return Verdict(credential=found)
