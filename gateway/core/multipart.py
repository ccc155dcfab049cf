"""Reading multipart bodies the one way Rack and Go's `mime/multipart` agree on.

Rack reads `job_token`, `token`, `private_token`, `access_token`, `bearer_token` and `_method`
from multipart bodies too (`Rack::Multipart::Parser`, lib/rack/multipart/parser.rb), so a
multipart body can carry a credential, even after a file part of hundreds of MB (a PyPI or
NuGet upload). Every multipart body the gateway judges is read by this module's `Scanner`:

- a buffered body (up to `body_inspect_limit`) is fed whole, then finished
  (`params._multipart_pairs`, for `tokens.read`);
- a body too large to buffer is fed chunk by chunk as it streams upstream
  (`gateway.proxy.bodyguard.Guard`, which judges its parts by the same token rules).

`Scanner` parses incrementally with bounded memory (a carry-over of the boundary's length, one
part-header block of at most `MAX_HEAD` bytes, one watched value of at most `MAX_VALUE` bytes)
and returns the watched parts as they complete. It is strict: whatever Rack (2.2 or 3.x) and
Go's `mime/multipart` (GitLab Workhorse rewrites uploads with it) could read differently is a
`MultipartError`, never a guess (see `Scanner` for the rules). Having one reader for both paths
matters: a lenient buffered reader would let a small body through with a part Workhorse decodes
and Rack does not (quoted-printable `=67lcbt-` is `glcbt-` to Rails behind Workhorse).

Pure: no aiohttp, no I/O, and no token rules: which part names are watched is the caller's
predicate (`params.reads_param`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import ClassVar

__all__ = [
    "MAX_HEAD",
    "MAX_VALUE",
    "Field",
    "MultipartError",
    "Scanner",
    "boundary",
    "is_form_data",
]

MAX_HEAD = 8192  # one part's header block; browsers, twine and NuGet send well under 1 KiB
# A watched value: GitLab's MAX_JOB_TOKEN_SIZE_BYTES (8192, lib/gitlab/auth/auth_finders.rb; the
# same as `tokens.MAX_JOB_TOKEN_SIZE_BYTES`, which tests/test_multipart.py checks) plus a margin,
# so that a token a little too long is judged (Malformed) by the token rules, not cut off here.
MAX_VALUE = 8192 + 1024
MAX_PREAMBLE = 1024  # HTTP clients send none; Rack 3 gives up on the opening boundary at 16 KiB
# Rack 3 ignores a Content-Disposition over 1536 bytes and takes the name from Content-ID
# (Parser::CONTENT_DISPOSITION_MAX_BYTES); Go does not.
MAX_DISPOSITION = 1536
MAX_PARAMS = 16  # Parser::CONTENT_DISPOSITION_MAX_PARAMS: Rack 3 reads no more

_CRLF = b"\r\n"
_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_PARAM = re.compile(
    rb";[ \t]*("
    + _TCHAR
    + rb"+)=(?:("
    + _TCHAR
    + rb'+)|"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\")*)")'
)
_FIELD_LINE = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
# Rack 2.2 finds the name with /Content-Disposition:[^:]*;\s*name=(VALUE)/ni over the whole
# head: the last `;\s*name=` wins there, the parameter named `name` in Go and Rack 3.
_NAME_ANYWHERE = re.compile(rb";\s*name=", re.IGNORECASE)
_BOUNDARY_ANYWHERE = re.compile(rb"boundary=", re.IGNORECASE)
_IDENTITY = frozenset({b"7bit", b"8bit", b"binary"})
# RFC 2046 bchars without `,` (Rack's MULTIPART regex stops a boundary at `,`) and no space at
# the end; an unquoted boundary must also be a token.
_BCHARS = re.compile(rb"[0-9A-Za-z'()+_\-./:=? ]{0,69}[0-9A-Za-z'()+_\-./:=?]")


class MultipartError(ValueError):
    """The body is not multipart/form-data in the one way every reader agrees on."""


@dataclass(frozen=True, slots=True)
class Field:
    """A watched part, complete. `value` is None when the part is a file upload (it has a
    filename: Rack hands the application a file, not a string)."""

    name: str
    value: bytes | None


@dataclass(frozen=True, slots=True)
class _Part:
    name: str
    is_file: bool
    watched: bool


class _State(Enum):
    PREAMBLE = auto()
    DELIMITER = auto()  # after `--boundary`: CRLF (a part follows) or `--` (the end)
    HEAD = auto()
    BODY = auto()
    CLOSING = auto()  # after `--boundary--`: CRLF or the end of the body
    EPILOGUE = auto()
    FAILED = auto()


def is_form_data(content_type: str) -> bool:
    """Is this Content-Type multipart/form-data (the bodies `Guard` can stream)?"""
    return content_type.split(";", 1)[0].strip().lower() == "multipart/form-data"


def boundary(content_type: str, *, any_multipart: bool = False) -> str:
    """The boundary of a multipart/form-data Content-Type (with `any_multipart`, of any
    `multipart/*` one: Rack parses them all, so a buffered body of any subtype is read);
    `MultipartError` unless unambiguous.

    Rack takes the last `boundary=` anywhere in the value (`MULTIPART`, lib/rack/multipart.rb)
    and stops it at `"`, `;` or `,`; Go parses the parameter list and refuses duplicates. So:
    well-formed parameters, exactly one `boundary=` in the whole value, RFC 2046 characters
    without `,`, 1-70 of them (Rack 3 refuses longer ones).
    """
    if not content_type.isascii():  # the boundary is searched as bytes: no guessing at them
        raise MultipartError("a Content-Type with non-ASCII characters")
    raw = content_type.encode("ascii")
    media, _, rest = raw.partition(b";")
    media = media.strip().lower()
    if media != b"multipart/form-data" and not (any_multipart and media.startswith(b"multipart/")):
        raise MultipartError("not multipart/form-data")
    params = _parameters(b";" + rest if rest else b"", "the Content-Type")
    found = [value for name, value in params if name.lower() == b"boundary"]
    if len(found) != 1 or len(_BOUNDARY_ANYWHERE.findall(raw)) != 1:
        raise MultipartError("the Content-Type needs exactly one boundary parameter")
    if not _BCHARS.fullmatch(found[0]):
        raise MultipartError("the multipart boundary has characters or a length RFC 2046 forbids")
    return found[0].decode("ascii")


def _parameters(text: bytes, where: str) -> list[tuple[bytes, bytes]]:
    """`; name=value` pairs, nothing else: no space before `;` or around `=` (Rack 3 keeps it in
    names and unquoted values, Go drops it), values a token or a quoted string whose only
    escape is `\\"` (Rack 2.2's VALUE regex reads `\\\\"` differently from Go)."""
    pairs: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(text.rstrip(b" \t"))
    while pos < end:
        match = _PARAM.match(text, pos, end)
        if match is None:
            raise MultipartError(f"a malformed parameter list in {where}")
        name, token, quoted = match.groups()
        pairs.append((name, token if token is not None else quoted.replace(b'\\"', b'"')))
        pos = match.end()
    return pairs


def _parse_head(head: bytes, dash: bytes, watch: Callable[[str], bool]) -> _Part:
    """The part's name from its header block (the lines, each ending in CRLF).

    Only one reading is accepted: header lines `token: value` without folding, bare CR/LF or
    control bytes; one Content-Disposition, `form-data` with `name` as its first parameter and
    the only `;\\s*name=` of the block (Rack 2.2 matches that regex anywhere in the block, Rack
    3 compares parameter names case-sensitively, Go case-insensitively); parameter names
    unique, none with `*` but `filename*` (Go decodes RFC 2231 `name*`, Rack does not); at most
    one Content-Transfer-Encoding, an identity one (Go's `NextPart`, which Workhorse uses,
    decodes quoted-printable, Rack does not: `=67lcbt-` is `glcbt-` to Rails behind Workhorse);
    and no `--boundary` inside the block.
    """
    lowered = head.lower()
    if dash in head:
        raise MultipartError("the boundary inside a part's headers")
    dispositions, encodings = [], []
    for line in head[:-2].split(_CRLF) if head else []:
        match = _FIELD_LINE.fullmatch(line)
        if match is None:
            raise MultipartError("a malformed header line in a multipart part")
        if match.group(1).lower() == b"content-transfer-encoding":
            encodings.append(match.group(2).lower())
        if match.group(1).lower() == b"content-disposition":
            if len(line) > MAX_DISPOSITION:  # the whole line: Rack 3 counts trailing blanks too
                raise MultipartError(f"a Content-Disposition over {MAX_DISPOSITION} bytes")
            dispositions.append(match.group(2))
    if len(dispositions) != 1 or lowered.count(b"content-disposition") != 1:
        raise MultipartError("a multipart part needs exactly one Content-Disposition")
    if len(encodings) > 1 or not set(encodings) <= _IDENTITY:
        raise MultipartError("a multipart part with a Content-Transfer-Encoding readers decode")
    if len(_NAME_ANYWHERE.findall(head)) != 1:
        raise MultipartError("a multipart part must have exactly one `; name=`")
    name = _disposition_name(dispositions[0])
    return _Part(name, b"filename" in lowered, watch(name))


def _disposition_name(value: bytes) -> str:
    kind, semicolon, _ = value.partition(b";")
    if kind.lower() != b"form-data" or not semicolon:
        raise MultipartError("a multipart part that is not form-data")
    params = _parameters(value[len(kind) :], "a part's Content-Disposition")
    names = [name.lower() for name, _ in params]
    if len(params) > MAX_PARAMS or len(set(names)) != len(names):
        raise MultipartError("repeated or too many Content-Disposition parameters")
    if any(b"*" in name and name != b"filename*" for name, _ in params):
        raise MultipartError("an RFC 2231 parameter name in a Content-Disposition")
    if params[0][0] != b"name" or not params[0][1]:
        raise MultipartError("a multipart part whose first parameter is not a non-empty name")
    return params[0][1].decode("latin-1")


class Scanner:
    """An incremental multipart/form-data parser that keeps the values of watched parts only.

    `feed(chunk)` returns the watched parts that chunk completes; `finish()` says the body
    ended. Both raise `MultipartError`, after which the scanner refuses every call. Structure
    (RFC 2046 §5.1.1, made strict where readers differ):

    - every occurrence of `--boundary` is a delimiter: at the very start of the body or after
      CRLF (never mid-line: Rack 2.2 and Go's first-part LF mode would split there, and Go also
      after a bare LF), followed by CRLF, or `--` for the last one (no transport padding: Go
      allows it, Rack's body regex does not). The preamble is at most `MAX_PREAMBLE` bytes and
      may not open with the closing delimiter (Rack 3 skips it, Go stops there);
    - each part has a header block (see `_parse_head`) of at most `MAX_HEAD` bytes, ended by an
      empty line, and a body ended by CRLF and the next delimiter;
    - the closing delimiter is followed by CRLF or the end; the epilogue after it may not
      contain the boundary (Rack 2.2 keeps scanning lines after a malformed `--boundary--x`).

    A watched part is reported as soon as its closing `--boundary` is complete: Go's reader
    ends a part on the byte after it, Rack on the two bytes after it.
    """

    def __init__(
        self,
        boundary: str,
        watch: Callable[[str], bool],
        *,
        max_head: int = MAX_HEAD,
        max_value: int = MAX_VALUE,
        max_preamble: int = MAX_PREAMBLE,
    ) -> None:
        self._dash = b"--" + boundary.encode("ascii")
        self._watch = watch
        self._max_head = max_head
        self._max_value = max_value
        self._max_preamble = max_preamble
        self._state = _State.PREAMBLE
        self._tail = b""  # bytes kept from the previous chunks (bounded, see `_keep`)
        self._offset = 0  # position of `_tail[0]` in the body
        self._body_start = 0  # position of the current part's first body byte
        self._head = bytearray()
        self._part: _Part | None = None
        self._value: bytearray | None = None  # a watched value so far
        self._fields: list[Field] = []

    @property
    def complete(self) -> bool:
        """Has the closing delimiter been seen (the body may end here)?"""
        return self._state is _State.EPILOGUE or (self._state is _State.CLOSING and not self._tail)

    def feed(self, chunk: bytes) -> list[Field]:
        """The watched parts `chunk` completes; `MultipartError` when the body is refused."""
        if self._state is _State.FAILED:
            raise MultipartError("the multipart body was already refused")
        buffer = self._tail + chunk if self._tail else chunk
        self._fields = []
        position: int | None = 0
        try:
            while position is not None:
                position = self._STEPS[self._state](self, buffer, position)
        except MultipartError:
            self._state = _State.FAILED
            raise
        return self._fields

    def finish(self) -> None:
        """The body ended here: `MultipartError` unless it ended after its closing delimiter."""
        if not self.complete:
            self._state = _State.FAILED
            raise MultipartError("the multipart body ends before its closing delimiter")

    # ---- the states: each takes the buffer and a position in it and returns the next
    # position, or None after keeping what it still needs (`_keep`) until the next chunk.

    def _preamble(self, buffer: bytes, position: int) -> int | None:
        found = buffer.find(self._dash, position)
        at = self._offset + found
        if found < 0:
            if self._offset + len(buffer) > self._max_preamble + len(self._dash):
                raise MultipartError(f"no opening boundary in the first {self._max_preamble} bytes")
            self._keep(buffer, max(position, len(buffer) - len(self._dash) - 1))
            return None
        if at > self._max_preamble:
            raise MultipartError(f"no opening boundary in the first {self._max_preamble} bytes")
        if at != 0 and (found < 2 or buffer[found - 2 : found] != _CRLF):
            raise MultipartError("the boundary inside a line")
        self._state = _State.DELIMITER
        return found + len(self._dash)

    def _delimiter(self, buffer: bytes, position: int) -> int | None:
        follow = buffer[position : position + 2]
        if len(follow) < 2:
            self._keep(buffer, position)
            return None
        if follow == _CRLF:
            self._state, self._head = _State.HEAD, bytearray(_CRLF)
        elif follow == b"--" and self._part is not None:
            self._state = _State.CLOSING
        else:
            raise MultipartError("a boundary followed by something else than CRLF or `--`")
        return position + 2

    def _header(self, buffer: bytes, position: int) -> int | None:
        # `_head` starts with the delimiter's CRLF, so an empty header block is found at 0.
        before = len(self._head)
        self._head += buffer[position : position + self._max_head + 4 - before]
        end = self._head.find(b"\r\n\r\n", max(0, before - 3))
        if end < 0:
            if len(self._head) >= self._max_head + 4:
                raise MultipartError(f"a multipart part's headers over {self._max_head} bytes")
            self._keep(buffer, len(buffer))
            return None
        self._part = _parse_head(bytes(self._head[2 : end + 2]), self._dash, self._watch)
        self._value = bytearray() if self._part.watched and not self._part.is_file else None
        body = position + end + 4 - before
        self._body_start = self._offset + body
        self._state = _State.BODY
        return body

    def _body(self, buffer: bytes, position: int) -> int | None:
        found = buffer.find(self._dash, position)
        if found < 0:
            keep = max(position, len(buffer) - len(self._dash) - 1)  # CRLF + a partial dash
            self._capture(buffer, position, keep)
            self._keep(buffer, keep)
            return None
        if self._offset + found - self._body_start < 2 or buffer[found - 2 : found] != _CRLF:
            raise MultipartError("the boundary inside a line of a part")
        self._capture(buffer, position, found - 2)
        part = self._part
        assert part is not None
        if part.watched:
            value = bytes(self._value) if self._value is not None else None
            self._fields.append(Field(part.name, value))
        self._value = None
        self._state = _State.DELIMITER
        return found + len(self._dash)

    def _closing(self, buffer: bytes, position: int) -> int | None:
        follow = buffer[position : position + 2]
        if not _CRLF.startswith(follow):
            raise MultipartError("the closing delimiter followed by something else than CRLF")
        if len(follow) < 2:
            self._keep(buffer, position)
            return None
        self._state = _State.EPILOGUE
        return position + 2

    def _epilogue(self, buffer: bytes, position: int) -> int | None:
        if buffer.find(self._dash, position) >= 0:
            raise MultipartError("the boundary after the closing delimiter")
        self._keep(buffer, max(position, len(buffer) - len(self._dash) + 1))
        return None

    _STEPS: ClassVar[dict[_State, Callable[[Scanner, bytes, int], int | None]]] = {
        _State.PREAMBLE: _preamble,
        _State.DELIMITER: _delimiter,
        _State.HEAD: _header,
        _State.BODY: _body,
        _State.CLOSING: _closing,
        _State.EPILOGUE: _epilogue,
    }

    def _keep(self, buffer: bytes, start: int) -> None:
        """Wait for the next chunk with `buffer[start:]` still to read."""
        self._tail = buffer[start:]
        self._offset += start

    def _capture(self, buffer: bytes, start: int, end: int) -> None:
        """Add `buffer[start:end]` to a watched value (no copy for the others: file parts)."""
        if self._value is None or end <= start:
            return
        if len(self._value) + end - start > self._max_value:
            raise MultipartError(f"a credential field over {self._max_value} bytes")
        self._value += buffer[start:end]
