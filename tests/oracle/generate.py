"""Hypothesis strategies for requests that carry credentials in every spelling a parser could
read differently: Content-Type spellings and parameters, header name and whitespace variants,
Authorization schemes, query and form syntax (brackets, `;`, `&&`, `+`, percent-encodings,
duplicate keys), JSON (duplicates, BOM, escapes, nesting) and multipart bodies.

Tokens come from a small pool (`TOKENS`) so that two carriers often hold the same value, or two
different ones: both are cases the gateway must get right.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote_plus

from hypothesis import strategies as st

from .reader import Raw

Values = st.SearchStrategy[str]

APP = "glcbt-sec-app-job"  # tests/security/conftest.py: allowed on ALLOWED
OUTSIDER = "glcbt-sec-outsider-job"  # denied on project 20
KNOWN_UNPREFIXED = "s3cr3t-known-job-token"  # a job token the store knows, without the prefix
TOKENS = (
    APP,
    OUTSIDER,
    "glcbt-" + "z" * 12,  # unknown to every store
    KNOWN_UNPREFIXED,
    "glpat-notajobtoken",  # a PAT
    "glrt-runner",  # a runner token (a `token` param that is not a job token)
    "plainvalue",
    "",
)
KNOWN = frozenset({APP.encode(), OUTSIDER.encode(), KNOWN_UNPREFIXED.encode()})

PARAM_NAMES = ("job_token", "token", "access_token", "bearer_token", "private_token")


@st.composite
def param_name(draw: st.DrawFn, base: str | None = None) -> str:
    """A parameter name as sent on the wire (before percent-decoding)."""
    name = base or draw(st.sampled_from((*PARAM_NAMES, "_method", "name", "job", "tokens")))
    shape = draw(
        st.sampled_from(
            ("{}", "[{}]", "{}]", "[[{}]]", "{}[]", "{}[x]", "{}[", "{}]x", " {}", "{} ", "]{}")
        )
    )
    if draw(st.integers(0, 9)) == 0:
        name = name.upper()
    text = shape.format(name)
    encoding = draw(st.sampled_from(("raw", "raw", "brackets", "all", "underscore")))
    if encoding == "brackets":
        text = text.replace("[", draw(st.sampled_from(("%5B", "%5b")))).replace("]", "%5D")
    elif encoding == "all":
        text = "".join(f"%{byte:02X}" for byte in text.encode())
    elif encoding == "underscore":
        text = text.replace("_", "%5F")
    return text.replace(" ", draw(st.sampled_from(("+", "%20"))))


@st.composite
def param_value(draw: st.DrawFn, values: Values) -> str:
    return draw(encoded(draw(values)))


@st.composite
def encoded(draw: st.DrawFn, value: str) -> str:
    """`value` as a query or form value on the wire, in one of the encodings Rack decodes."""
    style = draw(st.sampled_from(("raw", "raw", "quote", "quote_all", "space")))
    if style == "quote":
        return quote_plus(value)
    if style == "quote_all":
        return "".join(f"%{byte:02x}" for byte in value.encode())
    if style == "space":
        return draw(st.sampled_from(("+", "%20", " "))) + value
    return value


@st.composite
def pairs(draw: st.DrawFn, values: Values, max_size: int = 4) -> list[str]:
    items = draw(
        st.lists(
            st.one_of(
                st.tuples(param_name(), param_value(values)).map(lambda kv: f"{kv[0]}={kv[1]}"),
                st.tuples(param_name(), st.just("")).map(lambda kv: kv[0]),  # no `=`
                st.sampled_from(
                    # invalid escapes: Rack raises InvalidParameterError (400), Python keeps them
                    ("a=1", "x=%41", "=", "", "_method=DELETE", "format=json", "a=%zz", "%=1")
                ),
            ),
            max_size=max_size,
        )
    )
    if items and draw(st.booleans()):
        items.append(items[0])  # a duplicate key
    return items


@st.composite
def urlencoded(draw: st.DrawFn, values: Values) -> str:
    items = draw(pairs(values))
    out = ""
    for index, item in enumerate(items):
        if index:
            out += draw(st.sampled_from(("&", "&", ";", "&&", "& ", "; ", "&;")))
        out += item
    return out


@st.composite
def json_body(draw: st.DrawFn, values: Values) -> bytes:
    def key(name: str) -> str:
        text = json.dumps(name)
        if draw(st.booleans()):  # escape a letter: "job\u005ftoken"
            text = text.replace("_", "\\u005f").replace("t", "\\u0074", 1)
        return text

    members = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from((*PARAM_NAMES, "_method", "a", "job_token[]")))
        kind = draw(st.sampled_from(("str", "str", "str", "nested", "array", "number", "null")))
        value = draw(values)
        rendered = {
            "str": json.dumps(value),
            "nested": json.dumps({"job_token": value}),
            "array": json.dumps([value]),
            "number": "12",
            "null": "null",
        }[kind]
        members.append(f"{key(name)}:{rendered}")
    if members and draw(st.booleans()):
        members.append(members[0])  # a duplicate member (Ruby's JSON keeps the last)
    text = "{" + ",".join(members) + "}"
    shape = draw(st.sampled_from(("object", "object", "array", "deep", "garbage")))
    if shape == "array":
        text = f"[{text}]"
    elif shape == "deep":
        depth = draw(st.sampled_from((5, 2000, 50_000)))
        text = '{"a":' * depth + text + "}" * depth
    elif shape == "garbage":
        text = text[: draw(st.integers(0, len(text)))]
    data = text.encode()
    if draw(st.integers(0, 5)) == 0:
        data = b"\xef\xbb\xbf" + data  # a BOM
    return data


BOUNDARY = "oracleBoundary42"


@st.composite
def multipart_body(draw: st.DrawFn, values: Values) -> bytes:
    newline = draw(st.sampled_from(("\r\n", "\r\n", "\r\n", "\n")))
    out = ""
    if draw(st.integers(0, 5)) == 0:
        out += "preamble" + newline
    for _ in range(draw(st.integers(0, 3))):
        name = draw(param_name())
        disposition = draw(
            st.sampled_from(
                (
                    f'form-data; name="{name}"',
                    f'form-data; name="{name}"',
                    f"form-data; name={name}",
                    f"form-data; name*=UTF-8''{name}",
                    f'form-data; filename="f.txt"; name="{name}"',
                    f'form-data; name="{name}"; filename="f.txt"',
                )
            )
        )
        headers = f"Content-Disposition: {disposition}{newline}"
        if draw(st.integers(0, 4)) == 0:
            headers += draw(
                st.sampled_from(
                    (
                        f"Content-Type: text/plain{newline}",
                        f"Content-Transfer-Encoding: quoted-printable{newline}",
                    )
                )
            )
        out += f"--{BOUNDARY}{newline}{headers}{newline}{draw(values)}{newline}"
    if draw(st.integers(0, 6)):
        out += f"--{BOUNDARY}--{newline}"
    return out.encode()


MEDIA_TYPES = (
    "application/x-www-form-urlencoded",
    "application/json",
    "multipart/form-data",
    "text/plain",
    "application/vnd.git-lfs+json",
    "text/x-json",
    "application/octet-stream",
)


@st.composite
def content_type(draw: st.DrawFn) -> str | None:
    if draw(st.integers(0, 6)) == 0:
        return None
    media = draw(st.sampled_from(MEDIA_TYPES))
    if draw(st.integers(0, 3)) == 0:
        media = draw(st.sampled_from((media.upper(), media.title())))
    text = media
    for _ in range(draw(st.integers(0, 2))):
        sep = draw(st.sampled_from((";", "; ", " ;", ",", ", ", " ,")))
        item = draw(
            st.sampled_from(
                (
                    "charset=utf-8",
                    "charset=ISO-8859-1",
                    f"boundary={BOUNDARY}",
                    "text/plain",
                    "application/json",
                    "application/x-www-form-urlencoded",
                )
            )
        )
        text += sep + item
    if draw(st.integers(0, 8)) == 0:
        text = draw(st.sampled_from(("", ",application/json", ";")))
    return text


def basic(user: str, password: str, style: str) -> str:
    raw = f"{user}:{password}".encode()
    encoded = base64.b64encode(raw).decode()
    if style == "unpadded":
        return encoded.rstrip("=")
    if style == "urlsafe":
        return base64.urlsafe_b64encode(raw).decode()
    if style == "junk":
        return encoded[:4] + "*" + encoded[4:]
    return encoded


@st.composite
def authorization(draw: st.DrawFn, values: Values) -> str:
    scheme = draw(st.sampled_from(("Bearer", "bearer", "BEARER", "Basic", "basic", "Token", "Foo")))
    space = draw(st.sampled_from((" ", " ", "  ", "\t", " \t")))
    if scheme.lower() == "basic":
        user = draw(st.sampled_from(("gitlab-ci-token", "x", "", "GITLAB-CI-TOKEN")))
        style = draw(st.sampled_from(("strict", "strict", "unpadded", "urlsafe", "junk")))
        payload = basic(user, draw(values), style)
    elif draw(st.integers(0, 3)) == 0:
        # Basic credentials under another scheme, or after a literal "Basic " further on: what
        # TokenLocator's http_basic_auth and the package helpers' decode_token read.
        user = draw(st.sampled_from(("gitlab-ci-token", "x")))
        payload = basic(user, draw(values), draw(st.sampled_from(("strict", "unpadded", "junk"))))
        if draw(st.booleans()):
            payload = draw(st.sampled_from(("x Basic ", "xBasic ", "realm=Basic "))) + payload
    else:
        payload = draw(values)
        if draw(st.integers(0, 5)) == 0:
            payload = "realm=x " + payload
    if not payload and draw(st.booleans()):
        return scheme
    return scheme + space + payload


HEADER_NAMES = {
    "job": ("JOB-TOKEN", "Job-Token", "job_token", "JOB_TOKEN", "Job.Token"),
    "private": ("PRIVATE-TOKEN", "Private-Token", "private_token", "Private.Token"),
    "deploy": ("DEPLOY-TOKEN", "Deploy-Token"),
}


@st.composite
def credential_headers(draw: st.DrawFn, values: Values) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 2))):
        which = draw(
            st.sampled_from(("job", "private", "deploy", "authorization", "authorization"))
        )
        if which == "authorization":
            headers.append(("Authorization", draw(authorization(values))))
        else:
            headers.append((draw(st.sampled_from(HEADER_NAMES[which])), draw(values)))
    return headers


POOL: Values = st.sampled_from(TOKENS)
DEPLOYMENTS = "/api/v4/projects/20/deployments"


@st.composite
def requests(
    draw: st.DrawFn,
    values: Values = POOL,
    paths: dict[str, str] | None = None,
    favour: str | None = None,
) -> Raw:
    """A request with credentials anywhere (query, headers, body); `paths` chooses the path
    by method (else the deployments list); `favour` is drawn as a value half of the time."""
    method = draw(st.sampled_from(("GET", "POST", "POST", "PUT", "PATCH", "DELETE")))
    values = st.one_of(st.just(favour), values) if favour else values
    path = (paths or {}).get(method, DEPLOYMENTS)
    # A request line has no raw space: a client sends it encoded (Rack then keeps it in names).
    query = draw(urlencoded(values)).replace(" ", draw(st.sampled_from(("%20", "+"))))
    target = path + ("?" + query if query or draw(st.booleans()) else "")
    headers = draw(credential_headers(values))
    kind = draw(st.sampled_from(("none", "form", "form", "json", "json", "multipart")))
    body = b""
    if kind == "form":
        body = draw(urlencoded(values)).encode()
    elif kind == "json":
        body = draw(json_body(values))
    elif kind == "multipart":
        body = draw(multipart_body(values))
    ctype = draw(content_type())
    if ctype is not None:
        headers.append(("Content-Type", ctype))
        if draw(st.integers(0, 15)) == 0:
            headers.append(("Content-Type", draw(st.sampled_from(MEDIA_TYPES))))
    order = draw(st.permutations(headers)) if headers else []
    return Raw(method, target, tuple(order), body)


# Every name GitLab reads a secret from (the log redacts at least these): the credential
# parameters, and the feed tokens (AuthFinders#find_user_from_feed_token).
SECRET_PARAMS = (*PARAM_NAMES, "feed_token", "rss_token")


def secrets() -> Values:
    """Fresh credential values (a job token or an unprefixed secret), unique per draw in
    practice: what must never reach a log line, a metric or a gateway-made answer."""
    body = st.text(alphabet="0123456789abcdef", min_size=20, max_size=20)
    return st.tuples(st.sampled_from(("glcbt-", "s3cr3t", "glpat-")), body).map("".join)


@st.composite
def credential_query(draw: st.DrawFn, values: Values) -> tuple[str, list[str]]:
    """A query where every secret sits in a credential parameter (any spelling Rack reads as
    one, any encoding), between harmless pairs; and the secrets as they appear on the wire."""
    wire: list[str] = []
    items: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            items.append(draw(st.sampled_from(("a=1", "x=%41", "format=json", "", "=v"))))
        name = draw(param_name(draw(st.sampled_from(SECRET_PARAMS))))
        value = draw(encoded(draw(values)))
        wire.append(value)
        items.append(f"{name}={value}")
    out = ""
    for index, item in enumerate(items):
        if index:
            out += draw(st.sampled_from(("&", ";", "&&", "& ", "; ", "&;")))
        out += item
    space = draw(st.sampled_from(("%20", "+")))
    return out.replace(" ", space), [value.replace(" ", space) for value in wire]


__all__ = ["KNOWN", "POOL", "TOKENS", "credential_query", "requests", "secrets", "urlencoded"]
