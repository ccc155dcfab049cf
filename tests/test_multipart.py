"""The streaming multipart scanner and guard: what Rack and Go read alike is read, the rest refused.

`Scanner` must give the same answer however the body is cut into chunks, report a watched part in
the chunk that completes its closing `--boundary` (never later), keep its memory bounded, and
refuse every structure Rack (2.2, 3.x) and Go's mime/multipart could read differently. `Guard`
must judge the parts exactly as `tokens.extract` judges a buffered body.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from job_grants import a_gate
from multidict import CIMultiDict

from gateway.core import multipart, params, tokens
from gateway.core.decision import Reason
from gateway.core.multipart import Field, MultipartError, Scanner
from gateway.core.request import RequestView
from gateway.proxy.bodyguard import Guard, Refused

A = "glcbt-aaaa"
B = "glcbt-bbbb"
CT = "multipart/form-data; boundary=XyZ"


def part(disposition: bytes, value: bytes, *extra: bytes) -> bytes:
    head = b"Content-Disposition: " + disposition + b"\r\n" + b"".join(h + b"\r\n" for h in extra)
    return b"--XyZ\r\n" + head + b"\r\n" + value + b"\r\n"


def form(*parts: bytes, end: bytes = b"--XyZ--\r\n") -> bytes:
    return b"".join(parts) + end


FILE = part(
    b'form-data; name="content"; filename="pkg-1.0.tar.gz"',
    bytes(range(256)) * 4,
    b"Content-Type: application/octet-stream",
)
UPLOAD = form(
    part(b'form-data; name=":action"', b"file_upload"),
    FILE,
    part(b'form-data; name="job_token"', A.encode()),
)


def scan(
    body: bytes,
    chunks: list[int] | None = None,
    boundary: str = "XyZ",
    watch: Callable[[str], bool] = params.reads_param,
) -> list[Field]:
    """Feed `body` cut at `chunks` (positions), then finish; the watched fields."""
    scanner = Scanner(boundary, watch)
    cuts = [0, *(chunks or []), len(body)]
    fields: list[Field] = []
    for start, end in itertools.pairwise(cuts):
        fields += scanner.feed(body[start:end])
    scanner.finish()
    return fields


def outcome(body: bytes, chunks: list[int] | None = None) -> list[Field] | str:
    try:
        return scan(body, chunks)
    except MultipartError:
        return "refused"


# ---- what is read


def test_a_package_upload_yields_its_watched_parts_only() -> None:
    assert scan(UPLOAD) == [Field("job_token", A.encode())]


def test_a_watched_file_part_is_reported_without_its_value() -> None:
    body = form(part(b'form-data; name="token"; filename="t.txt"', A.encode()))
    assert scan(body) == [Field("token", None)]


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        (b'form-data; name="job_token"', "job_token"),
        (b"form-data; name=job_token", "job_token"),
        (b"FORM-DATA;name=job_token", "job_token"),
        (b'form-data; name="[job_token]"', "[job_token]"),
        (b'form-data; name="job%5Ftoken"', "job%5Ftoken"),
        (b'form-data; name="a\\"job_token"', 'a"job_token'),  # an escaped quote
        (b"form-data; name=\"job_token\"; filename*=UTF-8''x", "job_token"),
    ],
)
def test_names_are_read_as_rack_and_go_read_them(disposition: bytes, name: str) -> None:
    value = None if b"filename" in disposition else b"v"
    assert scan(form(part(disposition, b"v")), watch=lambda _: True) == [Field(name, value)]


@pytest.mark.parametrize(
    "header", [b"content-disposition", b"CONTENT-DISPOSITION", b"Content-disposition"]
)
def test_header_names_are_case_insensitive(header: bytes) -> None:
    body = b"--XyZ\r\n" + header + b': form-data; name="token"\r\n\r\nv\r\n--XyZ--'
    assert scan(body) == [Field("token", b"v")]


def test_a_quoted_name_hides_nothing_from_the_watch() -> None:
    body = form(part(b'form-data; name="not;job_token"', A.encode()))
    assert scan(body) == []  # `not;job_token` is no carrier: Rack reads the quoted name whole


def test_identity_transfer_encodings_are_accepted() -> None:
    for encoding in (b"binary", b"8bit", b"7BIT"):
        body = form(
            part(b'form-data; name="token"', b"v", b"Content-Transfer-Encoding: " + encoding)
        )
        assert scan(body) == [Field("token", b"v")]


def test_a_short_preamble_and_an_epilogue_are_accepted() -> None:
    body = b"preamble line\r\n" + form(part(b'form-data; name="token"', b"v")) + b"epilogue\r\n"
    assert scan(body) == [Field("token", b"v")]


def test_the_body_may_end_right_after_the_closing_delimiter() -> None:
    assert scan(form(part(b'form-data; name="token"', b"v"), end=b"--XyZ--")) == [
        Field("token", b"v")
    ]


def test_empty_values_and_values_with_crlf_are_kept_exactly() -> None:
    body = form(
        part(b'form-data; name="token"', b""),
        part(b'form-data; name="job_token"', b"a\r\nb\r\n--XyZx"[:6]),
    )
    assert scan(body) == [Field("token", b""), Field("job_token", b"a\r\nb\r\n")]


# ---- what is refused


def refused(body: bytes, match: str | None = None) -> None:
    with pytest.raises(MultipartError, match=match):
        scan(body)


AMBIGUOUS = {
    "no closing delimiter": form(part(b'form-data; name="a"', b"v"), end=b""),
    "closing delimiter cut": form(part(b'form-data; name="a"', b"v"), end=b"--XyZ-"),
    "a CR after the closing delimiter, then the end": form(
        part(b'form-data; name="a"', b"v"), end=b"--XyZ--\r"
    ),
    "junk after the closing delimiter": form(
        part(b'form-data; name="a"', b"v"), end=b"--XyZ--x\r\n"
    ),
    "the boundary in the epilogue": form(
        part(b'form-data; name="a"', b"v"),
        end=b"--XyZ--\r\n--XyZ\r\nContent-Disposition: form-data; name=job_token\r\n\r\nA\r\n",
    ),
    "the closing delimiter first": b"--XyZ--\r\n" + form(part(b'form-data; name="a"', b"v")),
    "no part at all": b"--XyZ--\r\n",
    "the boundary mid-line in the preamble": b"x--XyZ\r\n" + form()[7:],
    "an LF-only preamble line": b"x\n" + form(part(b'form-data; name="a"', b"v")),
    "the boundary mid-line in a part": form(part(b'form-data; name="a"', b"v--XyZ\r\nx")),
    "the boundary after a bare LF": form(part(b'form-data; name="a"', b"v\n--XyZ\r\nx")),
    "the boundary right after the headers": b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n--XyZ--',
    "transport padding": form(part(b'form-data; name="a"', b"v")).replace(
        b"XyZ\r\nC", b"XyZ \r\nC", 1
    ),
    "a longer boundary": form(part(b'form-data; name="a"', b"v\r\n--XyZW")),
    "an empty header block": b"--XyZ\r\n\r\nv\r\n--XyZ--",
    "no Content-Disposition": form(b"--XyZ\r\nContent-Type: text/plain\r\n\r\nv\r\n"),
    "two Content-Dispositions": form(
        part(b'form-data; name="file"', b"v", b'Content-Disposition: form-data; name="job_token"')
    ),
    "Content-Disposition inside another header": form(
        part(b'form-data; name="file"', b"v", b"X-Note: content-disposition: form-data; name=token")
    ),
    "not form-data": form(part(b'attachment; name="job_token"', b"v")),
    "name not first": form(part(b'form-data; filename="x"; name="job_token"', b"v")),
    "upper-case NAME": form(part(b'form-data; NAME="job_token"', b"v")),
    "a second name": form(part(b'form-data; name="file"; Name="job_token"', b"v")),
    "a name inside a quoted value": form(
        part(b'form-data; name="file"; filename="a; name=job_token"', b"v")
    ),
    "RFC 2231 name*": form(part(b"form-data; name*=utf-8''job%5Ftoken", b"v")),
    "repeated parameter": form(part(b'form-data; name="a"; filename="x"; filename="y"', b"v")),
    "space before =": form(part(b'form-data; name ="job_token"', b"v")),
    "space after =": form(part(b'form-data; name= "job_token"', b"v")),
    "space before ;": form(part(b"form-data; name=job_token ; filename=x", b"v")),
    "an escaped backslash": form(part(b'form-data; name="job_token\\\\"', b"v")),
    "an escape other than a quote": form(part(b'form-data; name="job_\\token"', b"v")),
    "an unterminated quote": form(part(b'form-data; name="job_token', b"v")),
    "an empty name": form(part(b'form-data; name=""', b"v")),
    "an unquoted name with brackets": form(part(b"form-data; name=job_token[]", b"v")),
    "a folded header line": form(part(b"form-data;", b"v", b' name="job_token"')),
    "a header line without a colon": form(part(b'form-data; name="a"', b"v", b"garbage")),
    "a space before the colon": form(
        b'--XyZ\r\nContent-Disposition : form-data; name="a"\r\n\r\nv\r\n'
    ),
    "a bare CR in a header": form(part(b'form-data; name="a"\rX: y', b"v")),
    "a bare LF between headers": form(part(b'form-data; name="file"\nX-A: b', b"v")),
    "a NUL in a header": form(part(b'form-data; name="a\x00"', b"v")),
    "the boundary in a header": form(part(b'form-data; name="a"; filename="--XyZ"', b"v")),
    "a Content-Disposition over 1536 bytes": form(
        part(b'form-data; name="a"; filename="' + b"f" * 1520 + b'"', b"v")
    ),
    "quoted-printable (Go decodes it, Rack does not)": form(
        part(
            b'form-data; name="access_token"',
            b"=67lcbt-x",
            b"Content-Transfer-Encoding: quoted-printable",
        )
    ),
    "two transfer encodings": form(
        part(
            b'form-data; name="a"',
            b"v",
            b"Content-Transfer-Encoding: binary",
            b"Content-Transfer-Encoding: quoted-printable",
        )
    ),
    "more than 16 parameters": form(
        part(b'form-data; name="a"' + b"".join(b"; p%d=x" % i for i in range(16)), b"v")
    ),
}


@pytest.mark.parametrize("body", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_structures_readers_could_read_differently_are_refused(body: bytes) -> None:
    refused(body)


def test_headers_over_the_bound_are_refused_and_at_the_bound_accepted() -> None:
    def with_head_of(size: int) -> bytes:
        disposition = b'Content-Disposition: form-data; name="a"\r\n'
        filler = b"X-Pad: " + b"p" * (size - len(disposition) - 9) + b"\r\n"
        head = disposition + filler
        assert len(head) == size
        return b"--XyZ\r\n" + head + b"\r\nv\r\n--XyZ--"

    assert scan(with_head_of(multipart.MAX_HEAD)) == []
    with pytest.raises(MultipartError, match="headers over"):
        scan(with_head_of(multipart.MAX_HEAD + 1))
    with pytest.raises(MultipartError, match="headers over"):  # never ends: refused at the bound
        scan(b"--XyZ\r\nX-Pad: " + b"p" * 100_000)


def test_a_watched_value_is_captured_up_to_the_bound_only() -> None:
    at_bound = b"v" * multipart.MAX_VALUE
    assert scan(form(part(b'form-data; name="job_token"', at_bound))) == [
        Field("job_token", at_bound)
    ]
    with pytest.raises(MultipartError, match="credential field over"):
        scan(form(part(b'form-data; name="job_token"', at_bound + b"v")))
    big = b"v" * (10 * multipart.MAX_VALUE)
    assert scan(form(part(b'form-data; name="file"', big))) == []  # unwatched: not captured


def test_the_scanner_is_pure_and_knows_no_token_rules() -> None:
    # tokens imports multipart (buffered bodies are read by the Scanner): never the reverse.
    # (The package `gateway.core` comes along: its __init__ is a docstring, imports nothing.)
    code = "import sys, gateway.core.multipart; print(sorted(m for m in sys.modules if 'gateway.' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['gateway.core', 'gateway.core.multipart']"


def test_the_value_bound_is_gitlabs_token_size_plus_a_margin() -> None:
    # multipart.py does not import the token rules; its bound must still follow GitLab's.
    assert multipart.MAX_VALUE == tokens.MAX_JOB_TOKEN_SIZE_BYTES + 1024


def test_a_long_preamble_is_refused() -> None:
    refused(b"p" * (multipart.MAX_PREAMBLE + 1) + b"\r\n" + UPLOAD, "opening boundary")
    refused(b"p" * 100_000, "opening boundary")


def test_after_a_refusal_the_scanner_refuses_everything() -> None:
    scanner = Scanner("XyZ", params.reads_param)
    with pytest.raises(MultipartError):
        scanner.feed(b"x--XyZ\r\n")
    with pytest.raises(MultipartError):
        scanner.feed(UPLOAD)


# ---- chunking: any cut gives the same answer, and parts are reported on time


BODIES = [UPLOAD, *AMBIGUOUS.values()]


@pytest.mark.parametrize("body", BODIES[:12])
def test_every_single_cut_gives_the_same_answer(body: bytes) -> None:
    whole = outcome(body)
    for cut in range(len(body) + 1):
        assert outcome(body, [cut]) == whole, cut


def test_byte_by_byte_gives_the_same_answer() -> None:
    for body in BODIES:
        assert outcome(body, list(range(1, len(body)))) == outcome(body)


def test_a_part_is_reported_in_the_chunk_that_completes_its_closing_boundary() -> None:
    # The value ends where `\r\n--XyZ` follows it: Go ends the part one byte after that, Rack
    # two bytes after. Ours must be the very chunk holding the boundary's last byte.
    closing = UPLOAD.index(A.encode()) + len(A) + len(b"\r\n--XyZ")
    for cut in range(1, len(UPLOAD)):
        scanner = Scanner("XyZ", params.reads_param)
        first = scanner.feed(UPLOAD[:cut])
        second = scanner.feed(UPLOAD[cut:])
        assert (first, second) == (
            ([], [Field("job_token", A.encode())])
            if cut < closing
            else ([Field("job_token", A.encode())], [])
        )


NAMES = st.sampled_from(
    ["file", "job_token", "token", "[job_token]", "private_token", "_method", "x"]
)
VALUES = st.binary(max_size=40).filter(lambda v: b"--B0undary" not in v)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.tuples(NAMES, VALUES, st.booleans()), min_size=1, max_size=4))
    out = b"--B0undary\r\n".join(
        [b""]
        + [
            b'Content-Disposition: form-data; name="%s"%s\r\n\r\n%s\r\n'
            % (name.encode(), b'; filename="f"' if is_file else b"", value)
            for name, value, is_file in parts
        ]
    )
    return out + b"--B0undary--\r\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies(), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_any_chunking_gives_the_same_fields(body: bytes, cuts: list[int]) -> None:
    positions = sorted({cut for cut in cuts if cut <= len(body)})
    whole = scan(body, boundary="B0undary")
    assert scan(body, positions, boundary="B0undary") == whole


def test_memory_stays_bounded_over_a_large_body() -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB, no CR: nothing to carry but the boundary's length
    scanner = Scanner("XyZ", params.reads_param)
    scanner.feed(FILE[: FILE.index(b"\r\n\r\n") + 4])
    tracemalloc.start()
    try:
        for _ in range(512):  # 32 MiB
            scanner.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(chunk), peak
    scanner.feed(b"\r\n--XyZ--\r\n")
    scanner.finish()


# ---- the Content-Type's boundary


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/form-data; boundary=XyZ", "XyZ"),
        (
            "Multipart/Form-Data;boundary=----WebKitFormBoundary7MA4YWxk",
            "----WebKitFormBoundary7MA4YWxk",
        ),
        ('multipart/form-data; boundary="a b:c"', "a b:c"),
        ("multipart/form-data; charset=utf-8; BOUNDARY=x1", "x1"),
    ],
)
def test_a_clear_boundary_is_read(content_type: str, expected: str) -> None:
    assert multipart.boundary(content_type) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=a; boundary=b",  # Rack takes the last, Go refuses
        'multipart/form-data; note="boundary=x"; boundary=y',
        "multipart/form-data; xboundary=x; boundary=y",
        'multipart/form-data; boundary="a,b"',  # Rack stops at the comma
        'multipart/form-data; boundary="ab "',
        "multipart/form-data; boundary=" + "b" * 71,
        "multipart/form-data; boundary=ab ; charset=utf-8",
        "multipart/form-data; boundary=a\u00e9",
        "multipart/mixed; boundary=x",
    ],
)
def test_an_unclear_boundary_is_refused(content_type: str) -> None:
    with pytest.raises(MultipartError):
        multipart.boundary(content_type)


# ---- the guard: the rules of buffered bodies


def a_view(method: str = "POST", headers: list[tuple[str, str]] | None = None) -> RequestView:
    all_headers = CIMultiDict([("Content-Type", CT), *(headers or [])])
    return RequestView(method, "/api/v4/projects/1/packages/pypi", all_headers)


def guarded(body: bytes, view: RequestView, *, enforce: bool = True) -> Guard:
    guard = Guard(view, "XyZ", tokens.DEFAULT_READER, enforce=enforce)
    guard.feed(body)
    guard.end()
    return guard


def token_part(name: str, value: str, filename: bool = False) -> bytes:
    disposition = b'form-data; name="%s"' % name.encode() + (b'; filename="t"' if filename else b"")
    return form(FILE, part(disposition, value.encode()))


WITH_A = [("JOB-TOKEN", A)]
VERDICTS = {
    "the same token as the header": (WITH_A, token_part("job_token", A), None),
    "the same token, another carrier": (WITH_A, token_part("token", A), None),
    "a different job token": (WITH_A, token_part("job_token", B), Reason.CREDENTIAL_CONFLICT),
    "a PAT next to the job token": (
        WITH_A,
        token_part("private_token", "glpat-x"),
        Reason.CREDENTIAL_CONFLICT,
    ),
    "a job token in a file part": (
        WITH_A,
        token_part("job_token", A, filename=True),
        Reason.CREDENTIAL_CONFLICT,
    ),
    "a nested job token": (WITH_A, token_part("job_token[]", A), Reason.CREDENTIAL_CONFLICT),
    "an escaped name": (WITH_A, token_part("job%5Ftoken", B), Reason.CREDENTIAL_CONFLICT),
    "a job token the decision did not see": (
        [],
        token_part("job_token", A),
        Reason.TOKEN_IN_STREAMED_BODY,
    ),
    "a malformed one": (
        [],
        token_part("job_token", "glcbt-" + "a" * 8200),
        Reason.TOKEN_IN_STREAMED_BODY,
    ),
    "a PAT alone (not ours to judge)": ([], token_part("private_token", "glpat-x"), None),
    "a trigger token alone": ([], token_part("token", "glptt-x"), None),
    "_method": (WITH_A, token_part("_method", "DELETE"), Reason.BAD_BODY),
    "a broken body": (WITH_A, UPLOAD[:-3], Reason.BAD_BODY),
    "no credential at all": ([], form(FILE), None),
}


@pytest.mark.parametrize(("headers", "body", "reason"), VERDICTS.values(), ids=VERDICTS.keys())
def test_the_guard_judges_parts_as_buffered_bodies_are_judged(
    headers: list[tuple[str, str]], body: bytes, reason: Reason | None
) -> None:
    if reason is None:
        assert guarded(body, a_view(headers=headers)).violation is None
        return
    with pytest.raises(Refused) as refusal:
        guarded(body, a_view(headers=headers))
    assert refusal.value.violation.reason is reason
    assert refusal.value.violation.message.startswith("400 Bad request - ")
    assert A not in refusal.value.violation.message
    assert B not in refusal.value.violation.message


def test_method_override_counts_on_post_only() -> None:
    assert guarded(token_part("_method", "DELETE"), a_view("PUT")).violation is None


def test_in_dry_run_the_first_violation_is_recorded_and_nothing_raised() -> None:
    guard = guarded(token_part("job_token", B), a_view(headers=WITH_A), enforce=False)
    assert guard.violation is not None
    assert guard.violation.reason is Reason.CREDENTIAL_CONFLICT


def test_many_credential_parts_are_refused() -> None:
    parts = [part(b'form-data; name="private_token"', b"glpat-%d" % i) for i in range(20)]
    with pytest.raises(Refused) as refusal:
        guarded(form(*parts), a_view())
    assert "too many" in refusal.value.violation.message


def test_repeating_the_same_token_is_not_too_many() -> None:
    parts = [part(b'form-data; name="job_token"', A.encode()) for _ in range(50)]
    assert guarded(form(*parts), a_view(headers=WITH_A)).violation is None


@settings(max_examples=150, deadline=None)
@given(
    names=st.lists(
        st.sampled_from(["job_token", "token", "private_token", "x", "[job_token]"]),
        min_size=1,
        max_size=3,
    ),
    values=st.lists(st.sampled_from([A, B, "glpat-x", "glptt-x", ""]), min_size=3, max_size=3),
    header=st.sampled_from([None, A, B]),
)
def test_the_guard_agrees_with_the_buffered_reading(
    names: list[str], values: list[str], header: str | None
) -> None:
    body = form(
        *(
            part(b'form-data; name="%s"' % n.encode(), v.encode())
            for n, v in zip(names, values, strict=False)
        )
    )
    headers = [("JOB-TOKEN", header)] if header else []
    buffered = tokens.extract(
        RequestView("POST", "/x", CIMultiDict([("Content-Type", CT), *headers]), body)
    )
    decided = tokens.extract(a_view(headers=headers))
    guard = guarded(body, a_view(headers=headers), enforce=False)
    assert (guard.violation is None) == tokens.same_credential(buffered, decided)


# ---- one reading: a buffered body is read by the same Scanner as a streamed one


def buffered(body: bytes, content_type: str = CT) -> RequestView:
    headers = CIMultiDict([("Content-Type", content_type), *WITH_A])
    return RequestView("POST", "/api/v4/projects/10/packages/pypi", headers, body)


@pytest.mark.parametrize("body", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
async def test_a_body_readers_could_read_differently_is_refused_alike_buffered_or_streamed(
    body: bytes,
) -> None:
    with pytest.raises(Refused) as streamed:
        guarded(body, a_view(headers=WITH_A))
    gate = await a_gate()
    try:
        decision = await gate.evaluate(buffered(body))
    finally:
        await gate.close()

    assert streamed.value.violation.reason is Reason.BAD_BODY
    assert (decision.allowed, decision.reason, decision.status) == (False, Reason.BAD_BODY, 400)
    assert decision.message == streamed.value.violation.message


@pytest.mark.parametrize("content_type", [CT, "multipart/mixed; boundary=XyZ"])
def test_a_quoted_printable_credential_part_is_refused_when_buffered(content_type: str) -> None:
    # Judged as written, `=67lcbt-x` is no job token; behind Workhorse (Go decodes
    # quoted-printable, Rack does not) Rails authenticates `glcbt-x`.
    body = AMBIGUOUS["quoted-printable (Go decodes it, Rack does not)"]
    view = RequestView("POST", "/x", CIMultiDict([("Content-Type", content_type)]), body)
    with pytest.raises(params.BodyError, match="Content-Transfer-Encoding"):
        tokens.extract(view)


def test_a_buffered_body_reads_the_parts_a_streamed_one_reads() -> None:
    found = tokens.extract(buffered(UPLOAD))
    assert isinstance(found, tokens.Credential)
    assert found.carrier is tokens.Carrier.JOB_TOKEN_PARAM  # the body's, first in GitLab's order
    assert guarded(UPLOAD, a_view(headers=WITH_A)).violation is None
