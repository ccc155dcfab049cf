"""Request-target checks: which raw request-targets the gateway refuses, and why.

`check_target` holds the refusals that apply to EVERY request (with or without a token);
`strict_refusal` adds the ones `RouteTable.match` makes before reading a path (encodings the
upstream may read differently). `decode_segment` is the one percent-decoding rule the matcher
applies to a path segment once it has passed these checks. Security background and the
bypass classes each check guards against: docs/security.md.

A `Refusal` is routing's own answer to "why is this target refused" (a `RefusalReason` finer
than the log's reason code, and a detail), for `check`, the tests and the matcher. It is not a
verdict: routing knows no statuses or GitLab messages (and `gateway.core` imports routing, not
the reverse). It becomes the request's 400 `bad_target` `Decision` in exactly one place,
`gateway.core.decision.bad_target`, which the gate and the proxy's precheck both call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote

__all__ = [
    "ANY_BAD_ESCAPE",
    "Refusal",
    "RefusalReason",
    "check_target",
    "decode_segment",
    "lenient_unquote",
    "strict_refusal",
]


class RefusalReason(StrEnum):
    NOT_ORIGIN_FORM = "not_origin_form"
    FRAGMENT = "fragment"
    CONTROL_BYTE = "control_byte"
    BACKSLASH = "backslash"
    DOT_SEGMENT = "dot_segment"
    BAD_ESCAPE = "bad_escape"
    DOUBLE_ENCODING = "double_encoding"
    ENCODED_UNRESERVED = "encoded_unreserved"
    NON_ASCII = "non_ascii"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a target is refused (see the module docstring: a Decision only through
    `gateway.core.decision.bad_target`)."""

    reason: RefusalReason
    detail: str


# --------------------------------------------------------------------------- refusals

# Fast path: a target with none of these characters (and no `/.`) needs no further checks:
# anything outside printable ASCII, `#` (0x23), `%` (0x25), `\` (0x5C).
_SUSPECT = re.compile(r"[^\x20-\x22\x24\x26-\x5b\x5d-\x7e]")
# Raw bytes no request-target may carry: a fragment, C0 controls (incl. NUL) and DEL.
_RAW_BAD = re.compile(r"[\x00-\x1f\x7f#]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SLASHES = re.compile(r"[/\\]")  # what a lenient reader splits a decoded segment on
_ENCODED_SUBSET = re.compile(r"%(?:(?P<control>[01][0-9A-Fa-f]|7[Ff])|(?P<backslash>5[Cc]))")
_ENCODED_STRICT = re.compile(
    r"%(?:(?P<bad>(?![0-9A-Fa-f]{2}).{0,2})"
    r"|(?P<double>25[0-9A-Fa-f]{2})"
    # A-Z a-z 0-9 - . _ ~ : Mustermann matches literals against their encoded forms and the
    # upstream may decode them, so `%61pi` is `api` to one reader and not to another.
    r"|(?P<unreserved>[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DEde]|5[Ff]|7[Ee]))",
    re.DOTALL,
)
# A `.` or `..` segment in any spelling: raw, `%2e`, double-encoded `%252e` (any depth), ended
# by `/`, `;` (path parameters: `..;x`, Tomcat and others), their encodings, or the end; also
# after an encoded slash (`a%2F..%2Fb`), which a reader that decodes `%2F` sees as a segment.
_DOT = r"(?:\.|%(?:25)*2[Ee])"
_SEP = r"(?:/|%(?:25)*2[Ff])"
_DOT_SEGMENT = re.compile(rf"{_SEP}{_DOT}{{1,2}}(?=$|/|;|%(?:25)*(?:2[Ff]|3[Bb]))")


def _may_have_dots(path: str) -> bool:
    """Cheap pre-filter for _DOT_SEGMENT (substring tests beat a regex alternation here)."""
    return (
        "/." in path
        or "%2e" in path
        or "%2E" in path
        or "%25" in path
        or "F." in path
        or "f." in path
    )


# Second-level fast path for targets with `%` or `/.`: anything but printable ASCII other than
# `#` and `\\` needs the full classification, and so does any escape `match` refuses.
_HARD = re.compile(r"[^\x20-\x22\x24-\x5b\x5d-\x7e]")
ANY_BAD_ESCAPE = re.compile(
    r"%(?:(?![0-9A-Fa-f]{2})|[01][0-9A-Fa-f]|7[Ff]|5[Cc]|25[0-9A-Fa-f]{2}"
    r"|[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DEde]|5[Ff]|7[Ee])"
)

_DOTS = (".", "..")
_DECODE_ROUNDS = 5  # nesting deeper than this is refused by `match` (double encoding) anyway

_REASONS = {
    "control": (RefusalReason.CONTROL_BYTE, "percent-encoded control byte"),
    "backslash": (RefusalReason.BACKSLASH, "percent-encoded backslash"),
    "bad": (RefusalReason.BAD_ESCAPE, "invalid percent-escape"),
    "double": (RefusalReason.DOUBLE_ENCODING, "double encoding"),
    "unreserved": (RefusalReason.ENCODED_UNRESERVED, "encoded unreserved character"),
}


def check_target(raw_target: str) -> Refusal | None:
    """The refusals that apply to EVERY request, with or without a token.

    Returns a Refusal for: a target not in origin-form (absolute-form, `*`, empty), `#`
    anywhere, raw control bytes (C0, DEL) anywhere, backslash in the path (raw or `%5C`),
    percent-encoded control bytes in the path, and dot segments in the path in any spelling
    (`.`, `..`, `%2e`, `.%2E`, double-encoded `%252e`, path-parameter forms `..;x`, and dots
    behind an encoded slash `a%2F..%2Fb`). Otherwise None. The query is only checked for raw
    bytes: encoded newlines are ordinary in query values.
    """
    if not raw_target.startswith("/"):
        return Refusal(RefusalReason.NOT_ORIGIN_FORM, "request-target must start with '/'")
    if _SUSPECT.search(raw_target) is None and "/." not in raw_target:
        return None
    return _subset_refusal(raw_target)


def _subset_refusal(raw_target: str) -> Refusal | None:
    bad = _RAW_BAD.search(raw_target)
    if bad is not None:
        if bad.group() == "#":
            return Refusal(RefusalReason.FRAGMENT, "'#' is not allowed in a request-target")
        return Refusal(RefusalReason.CONTROL_BYTE, f"raw control byte {bad.group()!r}")
    path = raw_target.partition("?")[0]
    if "\\" in path:
        return Refusal(RefusalReason.BACKSLASH, "backslash in the path")
    refusal = _encoded(_ENCODED_SUBSET, path)
    if refusal is not None:
        return refusal
    dots = _DOT_SEGMENT.search(path) if _may_have_dots(path) else None
    if dots is not None:
        segment = dots.group().lstrip("/")
        return Refusal(RefusalReason.DOT_SEGMENT, f"dot segment {segment!r} in the path")
    if "%" in path and ANY_BAD_ESCAPE.search(path) is not None:
        # Only an escape of `%`, of a digit or letter, or a malformed one can hide a nested
        # encoding (`%25%32%65` -> `%2e` -> `.`; `%2%65` -> `%2e` to a lenient decoder): the
        # IIS double-decoding class (CVE-2001-0333).
        for segment in path.split("/"):
            refusal = _nested(segment) if "%" in segment else None
            if refusal is not None:
                return refusal
    return None


def _nested(segment: str) -> Refusal | None:
    """What `segment` hides from a reader that decodes again and again (leniently: malformed
    escapes kept, as many decoders do): a `.`/`..` piece between `/` or `\\` (before any `;`),
    a backslash or a control byte."""
    text = segment
    for _ in range(_DECODE_ROUNDS):
        decoded = lenient_unquote(text)
        if decoded == text:
            return None
        text = decoded
        if "." in text and any(piece.partition(";")[0] in _DOTS for piece in _SLASHES.split(text)):
            return Refusal(
                RefusalReason.DOT_SEGMENT, f"encoded dot segment {segment!r} in the path"
            )
        if "\\" in text:
            return Refusal(RefusalReason.BACKSLASH, f"encoded backslash in {segment!r}")
        if _CONTROL.search(text) is not None:
            return Refusal(RefusalReason.CONTROL_BYTE, f"encoded control byte in {segment!r}")
    return None


def strict_refusal(raw_target: str) -> Refusal | None:
    """`check_target`, then the checks `match` adds (encodings the upstream may read otherwise)."""
    if not raw_target.startswith("/"):
        return Refusal(RefusalReason.NOT_ORIGIN_FORM, "request-target must start with '/'")
    if _SUSPECT.search(raw_target) is None and "/." not in raw_target:
        return None
    return _strict_slow(raw_target)


def _strict_slow(raw_target: str) -> Refusal | None:
    """`strict_refusal` for a target the first fast path could not clear."""
    if raw_target[:1] == "/" and _strictly_clean(raw_target):
        return None
    refusal = _subset_refusal(raw_target)  # `check_target`: its own fast path failed above
    if refusal is not None:
        return refusal
    if not raw_target.isascii():
        return Refusal(RefusalReason.NON_ASCII, "non-ASCII bytes must be percent-encoded")
    return _encoded(_ENCODED_STRICT, raw_target.partition("?")[0])


def _strictly_clean(raw_target: str) -> bool:
    """True when none of `match`'s refusals can apply (one C-level scan per concern)."""
    if _HARD.search(raw_target) is not None:
        return False
    end = raw_target.find("?")
    path = raw_target if end < 0 else raw_target[:end]
    if "%" in path and ANY_BAD_ESCAPE.search(path) is not None:
        return False
    return not (_may_have_dots(path) and _DOT_SEGMENT.search(path) is not None)


def _encoded(pattern: re.Pattern[str], path: str) -> Refusal | None:
    found = pattern.search(path) if "%" in path else None
    if found is None or found.lastgroup is None:
        return None
    reason, what = _REASONS[found.lastgroup]
    return Refusal(reason, f"{what} {found.group()!r} in the path")


# --------------------------------------------------------------------------- decoding

# `%XX` -> character for ASCII bytes, both hex cases; `match` has refused malformed escapes.
_ASCII_ESCAPES = {
    f"{byte:02{case}}"[:1] + f"{byte:02{case2}}"[1:]: chr(byte)
    for byte in range(0x80)
    for case in "xX"
    for case2 in "xX"
}


def decode_segment(segment: str) -> str:
    """Percent-decode one segment exactly once (UTF-8, strict); faster than `unquote` for ASCII."""
    if "%2" in segment:  # `%2F` (group paths, npm scopes) first: str.replace is C-fast
        segment = segment.replace("%2F", "/").replace("%2f", "/")
        if "%" not in segment:
            return segment
    head, *rest = segment.split("%")
    out = [head]
    for part in rest:
        char = _ASCII_ESCAPES.get(part[:2])
        if char is None:  # a non-ASCII byte: let the standard decoder check the UTF-8
            return unquote(segment, errors="strict")
        out.append(char)
        out.append(part[2:])
    return "".join(out)


def lenient_unquote(text: str) -> str:
    """`urllib.parse.unquote(text)` (malformed escapes kept, invalid UTF-8 replaced), several
    times faster when every escape is of an ASCII byte; the standard function otherwise."""
    head, *parts = text.split("%")
    out = [head]
    for part in parts:
        char = _ASCII_ESCAPES.get(part[:2])
        if char is not None:
            out.append(char)
            out.append(part[2:])
        elif _HEX_PAIR.match(part) is None:
            out.append("%")  # malformed: kept as is, like `unquote`
            out.append(part)
        else:
            return unquote(text)  # a non-ASCII byte: UTF-8 decoding with replacement
    return "".join(out)


_HEX_PAIR = re.compile(r"[0-9A-Fa-f]{2}")
