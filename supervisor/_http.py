"""HTTP/1.1 on the control socket, read and written by hand: the strict subset the protocol speaks.

Every client of the control socket (the client library's ``_wire``, the hook, httpx, curl)
sends a request head and a ``content-length`` body; the supervisor answers with a
``content-length`` body and never chunks. That subset is small enough to read without a
general HTTP library, and the supervisor's per-request time was mostly h11's (ADR 0009 has the
figures), so it is read here. This module is pure: bytes in, a :class:`RequestHead` or an
:class:`HttpError` out, and the bytes of an answer; ``_api`` does the I/O and the deadlines.

Stricter than h11, never laxer: whatever this reader accepts, h11 accepts with the same
meaning (``tests/unit/test_http_reader.py`` checks that on generated input). What it refuses
gets a 4xx, never a 5xx:

- the head is at most :data:`MAX_HEAD` bytes, lines end with CRLF, at most
  :data:`MAX_HEADERS` header fields, no obsolete line folding;
- the request line is ``token SP visible-ascii SP HTTP/1.0|HTTP/1.1``;
- a field is ``token ":" OWS value OWS`` with h11's value grammar;
- HTTP/1.1 needs exactly one ``host``;
- a body has a ``content-length`` (equal values when repeated) of at most :data:`MAX_BODY`
  bytes; ``transfer-encoding`` is refused (411), as no client of the protocol sends one.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from spec_kitty_supervisor_client._wire import PROTOCOL_HEADER, PROTOCOL_VERSION

__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "MAX_HEADERS",
    "HttpError",
    "RequestHead",
    "find_head_end",
    "parse_head",
    "response_bytes",
]

#: The largest request head, request line and fields together (h11's default bound too).
MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
MAX_BODY = 1024 * 1024
#: A content-length with more digits than this is over MAX_BODY whatever it says (and int()
#: of a long digit string is refused by Python itself).
_MAX_LENGTH_DIGITS = 19

# RFC 9110's token, and h11's request target and field value grammars.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/(1\.[01])")
_FIELD_VCHAR = rb"[^\x00\s]"
_FIELD = re.compile(
    rb"("
    + _TOKEN
    + rb"):[ \t]*((?:"
    + _FIELD_VCHAR
    + rb"+(?:[ \t]+"
    + _FIELD_VCHAR
    + rb"+)*)?)[ \t]*"
)
_DIGITS = re.compile(rb"[0-9]+")
_PROTOCOL_FIELD = PROTOCOL_HEADER.encode("ascii")
#: What every answer says after its status line, but for its length.
_ANSWER_FIELDS = b"%s: %d\r\ncontent-type: application/json\r\n" % (
    _PROTOCOL_FIELD,
    PROTOCOL_VERSION,
)

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    409: b"Conflict",
    411: b"Length Required",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}


class HttpError(Exception):
    """A request that is not HTTP/1.1 as the protocol speaks it; ``status`` is a 4xx."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHead(NamedTuple):
    """What the server needs of a request head.

    A named tuple, not a dataclass: the first stage reads requests with this module before
    it imports ``dataclasses`` (docs/adr/0015)."""

    method: str
    target: str
    content_length: int
    keep_alive: bool
    #: The ``spec-kitty-supervisor-protocol`` field's value, None when absent.
    protocol: bytes | None


def find_head_end(buffer: bytes | bytearray, scanned: int = 0) -> int:
    """The length of the complete head at the start of ``buffer`` (its blank line included),
    or -1 while it is incomplete.

    ``scanned`` is how many bytes an earlier call already searched, so that a head trickled in
    byte by byte is searched once, not once per byte. Raises :class:`HttpError` for a head
    over :data:`MAX_HEAD` or one whose lines end with a bare LF.
    """
    end = buffer.find(b"\r\n\r\n", max(0, scanned - 3), MAX_HEAD + 4)
    if end >= 0:
        return end + 4
    if buffer.find(b"\n\n", max(0, scanned - 1), MAX_HEAD + 2) >= 0:
        raise HttpError(400, "request lines must end with CRLF")
    if len(buffer) > MAX_HEAD:
        raise HttpError(431, f"the request head is over {MAX_HEAD} bytes")
    return -1


#: Heads read before, and what they said: at most this many, each at most this long.
_READ_HEADS_LIMIT = 64
_READ_HEAD_BYTES = 1024
_read_heads: dict[bytes, RequestHead] = {}


def parse_head(head: bytes | bytearray) -> RequestHead:
    """Read a complete head (as measured by :func:`find_head_end`); :class:`HttpError` if bad.

    What a head says is a function of its bytes alone, and the supervisor's clients send the
    same few heads again and again (a spec-kitty process's one ``ensure`` differs from the
    last one's at most by its length): a head read before is answered from memory, a fifth
    of the supervisor's work for a request on its own connection saved. Only heads that were
    accepted are kept, each at most :data:`_READ_HEAD_BYTES` long and at most
    :data:`_READ_HEADS_LIMIT` of them (all forgotten when full), so no client can make the
    memory grow; a refused head is read, and refused, every time.
    """
    key = bytes(head)
    known = _read_heads.get(key)
    if known is not None:
        return known
    parsed = _parse_head(key)
    if len(key) <= _READ_HEAD_BYTES:
        if len(_read_heads) >= _READ_HEADS_LIMIT:
            _read_heads.clear()
        _read_heads[key] = parsed
    return parsed


def _parse_head(head: bytes) -> RequestHead:
    lines = head.split(b"\r\n")
    # The head ends with CRLF CRLF: two empty strings after the last field.
    if len(lines) < 3 or lines[-1] or lines[-2]:
        raise HttpError(400, "the request head does not end with an empty line")
    fields = lines[1:-2]
    if len(fields) > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        raise HttpError(400, f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    method, target, version = request_line.groups()
    hosts = 0
    lengths: set[bytes] = set()
    connection: list[bytes] = []
    protocol: bytes | None = None
    for line in fields:
        field = _FIELD.fullmatch(line)
        if field is None:
            if line[:1] in (b" ", b"\t"):
                raise HttpError(400, "obsolete line folding is not accepted")
            raise HttpError(400, f"not a header field: {line[:80]!r}")
        name = field.group(1).lower()
        value = field.group(2)
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            raise HttpError(411, "transfer-encoding is not accepted; send content-length")
        elif name == b"connection":
            connection.extend(token.strip().lower() for token in value.split(b","))
        elif name == _PROTOCOL_FIELD:
            protocol = value
    if version == b"1.1" and hosts != 1:
        raise HttpError(400, "an HTTP/1.1 request needs exactly one host field")
    return RequestHead(
        method=method.decode("ascii"),
        target=target.decode("ascii"),
        content_length=_content_length(lengths),
        keep_alive=version == b"1.1" and b"close" not in connection,
        protocol=protocol,
    )


def _content_length(values: set[bytes]) -> int:
    if not values:
        return 0
    if len(values) > 1:
        raise HttpError(400, "conflicting content-length fields")
    (value,) = values
    if _DIGITS.fullmatch(value) is None:
        raise HttpError(400, f"content-length is not a number: {value[:40]!r}")
    if len(value) > _MAX_LENGTH_DIGITS or int(value) > MAX_BODY:
        raise HttpError(413, f"request bodies are limited to {MAX_BODY} bytes")
    return int(value)


def response_bytes(status: int, body: bytes, *, keep_alive: bool) -> bytes:
    """A whole answer, head and JSON body, to be sent in one write."""
    return b"HTTP/1.1 %d %s\r\n%scontent-length: %d\r\n%s\r\n%s" % (
        status,
        _REASONS.get(status, b""),
        _ANSWER_FIELDS,
        len(body),
        b"" if keep_alive else b"connection: close\r\n",
        body,
    )
