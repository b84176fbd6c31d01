"""The control socket's hand-written HTTP reader: never laxer than h11, never a 5xx for bad input.

h11 (which httpx uses, and which served the socket before) is the oracle: whatever
``supervisor._http`` accepts, h11 accepts with the same method, target, body length and
keep-alive; the requests the protocol's clients send are accepted by both alike; and anything
else gets a 4xx, or a closed connection, from a real ``serve_connection``.
"""

from __future__ import annotations

import itertools
import json
import socket
from dataclasses import dataclass

import anyio
import h11
import pytest
from anyio.abc import UNIXSocketStream
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sks_harness import DEFAULT_TIMEOUT
from spec_kitty_supervisor import _http
from spec_kitty_supervisor._api import ApiRequest, Route, Router, serve_connection
from spec_kitty_supervisor._connections import ConnectionPool
from spec_kitty_supervisor._http import (
    MAX_BODY,
    MAX_HEAD,
    MAX_HEADERS,
    HttpError,
    RequestHead,
    find_head_end,
    parse_head,
    response_bytes,
)
from spec_kitty_supervisor_client._models import SupervisorHealth

# ------------------------------------------------------------------------------------------
# The oracle


@dataclass(frozen=True)
class H11View:
    method: str
    target: str
    content_length: int
    keep_alive: bool
    protocol: bytes | None


def h11_reads(data: bytes) -> H11View | None:
    """What h11, as a server, makes of a complete head; None when it refuses it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    headers = {name: value for name, value in event.headers}
    if b"transfer-encoding" in headers:
        return None  # h11 would read chunks; the protocol never sends them
    lengths = [value for name, value in event.headers if name == b"content-length"]
    return H11View(
        method=event.method.decode("ascii"),
        target=event.target.decode("ascii"),
        content_length=int(lengths[0]) if lengths else 0,
        keep_alive=h11._connection._keep_alive(event),  # h11's own rule
        protocol=headers.get(b"spec-kitty-supervisor-protocol"),
    )


def ours_reads(data: bytes) -> RequestHead | None:
    try:
        end = find_head_end(data)
        if end < 0:
            return None
        return parse_head(data[:end])
    except HttpError:
        return None


def as_view(head: RequestHead) -> H11View:
    return H11View(head.method, head.target, head.content_length, head.keep_alive, head.protocol)


# ------------------------------------------------------------------------------------------
# Strategies: requests as the protocol's clients send them, and mangled ones

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=TCHAR, min_size=1, max_size=12)
targets = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=40).map(
    lambda t: "/" + t
)
field_values = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)] + [" ", "\t"], max_size=30).map(
    str.strip
)
extra_fields = st.lists(
    st.tuples(tokens, field_values).filter(
        lambda f: f[0].lower() not in ("host", "content-length", "transfer-encoding", "connection")
    ),
    max_size=6,
)


@st.composite
def good_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST"]) | tokens)
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    lines = [f"{method} {draw(targets)} HTTP/{version}"]
    fields = [("Host", "supervisor")] if version == "1.1" or draw(st.booleans()) else []
    fields += draw(extra_fields)
    length = draw(st.none() | st.integers(0, MAX_BODY))
    if length is not None:
        fields.append((draw(st.sampled_from(["Content-Length", "content-length"])), str(length)))
    if draw(st.booleans()):
        fields.append(("Connection", draw(st.sampled_from(["close", "keep-alive", "Close"]))))
    if draw(st.booleans()):
        fields.append(("spec-kitty-supervisor-protocol", draw(st.sampled_from(["1", "2"]))))
    fields = draw(st.permutations(fields))
    lines += [f"{name}:{draw(st.sampled_from(['', ' ', '  ']))}{value}" for name, value in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@st.composite
def mangled_requests(draw: st.DrawFn) -> bytes:
    """A good request with bytes changed, inserted or removed, or plain garbage."""
    data = bytearray(draw(good_requests()))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from([*b"\r\n\t :\x00\x7f\x80\xff/", draw(st.integers(0, 255))]))
        if action == "insert":
            data.insert(at, byte)
        elif at < len(data):
            if action == "replace":
                data[at] = byte
            else:
                del data[at]
    return bytes(data)


any_bytes = st.binary(max_size=300)

# ------------------------------------------------------------------------------------------
# The pure reader


@settings(max_examples=400)
@given(good_requests())
def test_what_the_protocols_clients_send_is_read_as_h11_reads_it(data: bytes) -> None:
    ours = ours_reads(data)
    theirs = h11_reads(data)
    assert theirs is not None
    assert ours is not None
    assert as_view(ours) == theirs


@settings(max_examples=1500)
@given(mangled_requests() | any_bytes)
@example(b"GET / HTTP/1.1\r\nHost: a\r\n  folded\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
@example(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
def test_nothing_h11_refuses_is_accepted(data: bytes) -> None:
    ours = ours_reads(data)
    if ours is not None:
        theirs = h11_reads(data)
        assert theirs is not None, "accepted what h11 refuses"
        assert as_view(ours) == theirs


@settings(max_examples=1500)
@given(mangled_requests() | any_bytes)
def test_a_refusal_is_always_a_4xx(data: bytes) -> None:
    refusal = _refusal(data)
    if refusal is not None:
        assert 400 <= refusal.status < 500
        assert refusal.message


def _refusal(data: bytes) -> HttpError | None:
    """The reader's refusal of ``data`` as a whole head (None if it accepts or waits for more)."""
    try:
        end = find_head_end(data)
        if end >= 0:
            parse_head(data[:end])
    except HttpError as exc:
        return exc
    return None


@settings(max_examples=300)
@given(good_requests(), st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_a_head_found_in_pieces_is_the_head_found_whole(data: bytes, cuts: list[int]) -> None:
    whole = find_head_end(data)
    buffer = bytearray()
    scanned = 0
    found = -1
    position = 0
    for size in [*cuts, len(data)]:
        buffer += data[position : position + size]
        position += size
        found = find_head_end(buffer, scanned)
        if found >= 0:
            break
        scanned = len(buffer)
    assert found == whole == len(data)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\n\r\n", 400),  # no host
        (b"GET /v1/health HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        (b"GET /v1/health HTTP/3.0\r\nHost: a\r\n\r\n", 400),
        (b"GET  /v1/health HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nHost: a\x00b\r\n\r\n", 400),
        (b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", 400),
        (b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n", 400),
        (b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999\r\n\r\n", 413),
        (b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413),
        (b"POST /v1/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"GET /v1/health HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n", 431),
    ],
)
def test_refused_heads_get_their_status(data: bytes, status: int) -> None:
    refusal = _refusal(data)
    assert refusal is not None
    assert refusal.status == status


def test_a_head_over_the_bound_is_refused_before_it_ends() -> None:
    data = b"GET / HTTP/1.1\r\nX-Long: " + b"a" * MAX_HEAD
    assert find_head_end(data[:1000]) == -1
    with pytest.raises(HttpError) as refused:
        find_head_end(data)
    assert refused.value.status == 431


def test_repeated_equal_content_lengths_are_one() -> None:
    data = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n"
    assert parse_head(data).content_length == 7


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("status", [200, 400, 403, 404, 413, 503])
def test_answers_are_what_an_h11_client_reads(status: int, keep_alive: bool) -> None:
    body = json.dumps({"status": status}).encode()
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(response_bytes(status, body, keep_alive=keep_alive))
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == status
    headers = dict(response.headers)
    assert headers[b"spec-kitty-supervisor-protocol"] == b"1"
    assert headers[b"content-type"] == b"application/json"
    data = client.next_event()
    assert isinstance(data, h11.Data)
    assert bytes(data.data) == body
    assert isinstance(client.next_event(), h11.EndOfMessage)
    assert (client.our_state is h11.MUST_CLOSE) is not keep_alive


# ------------------------------------------------------------------------------------------
# A real connection served by serve_connection


async def _health(request: ApiRequest) -> BaseModel:
    return SupervisorHealth(pid=7, version="t", protocol_version=1, root="/r")


ROUTER = Router([Route("GET", "/v1/health", _health), Route("POST", "/v1/health", _health)])
HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: s\r\n\r\n"


class _Tracker:
    def __init__(self) -> None:
        self.open = 0
        self.in_flight = 0

    def connection_opened(self) -> None:
        self.open += 1

    def connection_closed(self) -> None:
        self.open -= 1

    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1


async def _served(data: bytes) -> tuple[bytes, _Tracker]:
    """``data`` sent to a real ``serve_connection`` over a socket pair, then EOF; the reply."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    tracker = _Tracker()
    server = await UNIXSocketStream.from_socket(ours)
    client = await UNIXSocketStream.from_socket(theirs)
    chunks: list[bytes] = []
    with anyio.fail_after(DEFAULT_TIMEOUT):  # a guard against a hang, not a duration
        async with anyio.create_task_group() as group:
            group.start_soon(serve_connection, server, ROUTER, tracker, ConnectionPool())
            async with client:
                try:
                    await client.send(data)
                    await client.send_eof()
                except (anyio.BrokenResourceError, OSError):
                    pass  # it may have answered and hung up already
                while True:
                    try:
                        chunks.append(await client.receive())
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
    return b"".join(chunks), tracker


def _replies(data: bytes) -> list[tuple[int, bytes]]:
    """Every answer in ``data``, each read whole by h11 as a client (which must accept it)."""
    replies: list[tuple[int, bytes]] = []
    while data:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("host", "s")]))
        client.send(h11.EndOfMessage())
        client.receive_data(data)
        status, body = 0, b""
        while True:
            event = client.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                pytest.fail(f"an incomplete answer: {event!r} in {data[:200]!r}")
        replies.append((status, body))
        data = client.trailing_data[0]
    return replies


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mangled_requests() | good_requests() | any_bytes, min_size=1, max_size=3))
def test_a_served_connection_answers_garbage_with_a_4xx_or_nothing(parts: list[bytes]) -> None:
    reply, tracker = anyio.run(_served, b"".join(parts))
    for status, body in _replies(reply):
        assert status == 200 or 400 <= status < 500, (status, body)
        document = json.loads(body)
        if status != 200:
            assert document["error"]["code"]
            assert document["error"]["message"]
    # The connection's task ended by itself, leaving nothing open or in flight.
    assert tracker.open == 0
    assert tracker.in_flight == 0


def test_pipelined_requests_are_answered_in_order() -> None:
    reply, _ = anyio.run(_served, HEALTH * 3 + b"GET /v1/nothing HTTP/1.1\r\nHost: s\r\n\r\n")
    assert [status for status, _ in _replies(reply)] == [200, 200, 200, 404]


def test_a_body_split_from_its_head_is_read_whole() -> None:
    body = b"{}" + b" " * 3000
    head = b"POST /v1/health HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n\r\n" % len(body)
    reply, _ = anyio.run(_served, head + body)
    assert [status for status, _ in _replies(reply)] == [200]


def test_an_oversized_body_is_refused_before_it_is_read_and_the_answer_still_arrives() -> None:
    head = b"POST /v1/health HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    reply, _ = anyio.run(_served, head + b"x" * (MAX_BODY + 1))
    [(status, body)] = _replies(reply)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "bad_http"


def test_a_request_cut_off_mid_body_gets_no_answer() -> None:
    reply, tracker = anyio.run(
        _served, b"POST /v1/health HTTP/1.1\r\nHost: s\r\nContent-Length: 50\r\n\r\n{"
    )
    assert reply == b""
    assert tracker.in_flight == 0


def test_a_client_that_always_has_requests_ready_takes_turns_with_the_others() -> None:
    """Two connections whose 40 pipelined requests are all there before either is served:
    they are answered in turns, not one connection's 40 and then the other's."""
    order: list[str] = []

    async def who(request: ApiRequest) -> BaseModel:
        order.append(request.path)
        return SupervisorHealth(pid=1, version="t", protocol_version=1, root="/r")

    router = Router([Route("GET", "/a", who), Route("GET", "/b", who)])

    async def main() -> None:
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        for (_, theirs), path in zip(pairs, ("/a", "/b"), strict=True):
            theirs.sendall(f"GET {path} HTTP/1.1\r\nHost: s\r\n\r\n".encode() * 40)
            theirs.shutdown(socket.SHUT_WR)
        pool = ConnectionPool()
        with anyio.fail_after(DEFAULT_TIMEOUT):  # a guard against a hang, not a duration
            async with anyio.create_task_group() as group:
                for ours, _ in pairs:
                    stream = await UNIXSocketStream.from_socket(ours)
                    group.start_soon(serve_connection, stream, router, _Tracker(), pool)
        for _, theirs in pairs:
            theirs.close()

    anyio.run(main)
    assert sorted(order) == ["/a"] * 40 + ["/b"] * 40
    # Neither connection is ever more than one request ahead of its turn.
    assert max(len(list(run)) for _, run in itertools.groupby(order)) <= 2, order


def test_a_head_read_before_is_answered_from_memory_and_a_refused_one_never_is() -> None:
    head = b"POST /v1/sync/ensure HTTP/1.1\r\nhost: s\r\ncontent-length: 12\r\n\r\n"
    first = parse_head(head)
    assert parse_head(bytearray(head)) is first
    assert first == _http._parse_head(head)
    refused = b"POST /v1/sync/ensure HTTP/1.1\r\ncontent-length: 12\r\n\r\n"
    for _ in range(2):
        with pytest.raises(HttpError, match="exactly one host"):
            parse_head(refused)
    assert refused not in _http._read_heads


def test_what_is_remembered_of_heads_stays_bounded() -> None:
    for n in range(3 * _http._READ_HEADS_LIMIT):
        parse_head(b"GET /v1/status?n=%d HTTP/1.1\r\nhost: s\r\n\r\n" % n)
        assert len(_http._read_heads) <= _http._READ_HEADS_LIMIT
    long = b"GET /v1/status HTTP/1.1\r\nhost: s\r\nx: " + b"y" * 2000 + b"\r\n\r\n"
    assert parse_head(long).target == "/v1/status"
    assert long not in _http._read_heads
