"""No request kills the supervisor, stalls its other clients, or costs it its table."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sks_harness import SPAWN_PORTS, DaemonFleet, SupervisorUnderTest, spec_kitty_python
from spec_kitty_supervisor_client import SupervisorClient, socket_path_for_root
from tests.chaos._wire import exchange, request

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

ENDPOINTS = [
    ("GET", "/v1/health"),
    ("GET", "/v1/status"),
    ("POST", "/v1/sync/ensure"),
    ("POST", "/v1/sync/retire"),
    ("GET", "/v1/events"),
    ("GET", "/v1/doctor"),
    ("POST", "/v1/restart"),
]


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[SupervisorUnderTest, int]]:
    with DaemonFleet(port_range=SPAWN_PORTS) as fleet, SupervisorUnderTest(fleet.sandbox()) as sup:
        sup.start()
        daemon = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")))["daemon"]
        yield sup, daemon["pid"]


def _still_whole(sup: SupervisorUnderTest, daemon_pid: int) -> None:
    with SupervisorClient(sup.root, autostart=False, timeout=30) as client:
        status = client.status()
    assert [d.pid for d in status.daemons] == [daemon_pid]
    journal = json.loads((sup.root / "supervisor" / "state.json").read_text())
    assert [d["pid"] for d in journal["daemons"]] == [daemon_pid]


def _daemon_port(sup: SupervisorUnderTest) -> int:
    with SupervisorClient(sup.root, autostart=False, timeout=30) as client:
        return next(d.port for d in client.status().daemons)


def _names(body: bytes, pid: int, port: int) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and (
        document.get("pid") == pid or document.get("port") == port
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
ensure_like = st.fixed_dictionaries(
    {},
    optional={
        "python": st.text(max_size=60) | st.just("/usr/bin/python3"),
        "package_version": st.text(max_size=70),
        "cwd": st.text(max_size=40) | st.none(),
        "env": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5)
        | json_values,
        "pid": st.integers() | st.text(max_size=5),
        "port": st.integers(),
        "stop_children": st.booleans(),
    },
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    body=st.one_of(
        ensure_like.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=300),
    ),
)
def test_malformed_bodies_get_a_4xx_and_change_nothing(
    running: tuple[SupervisorUnderTest, int], endpoint: tuple[str, str], body: bytes
) -> None:
    sup, daemon_pid = running
    # A well-formed retire that happens to name our daemon would rightly retire it: that is
    # not a malformed body, and it would take the daemon from every later example.
    assume(endpoint[1] != "/v1/sync/retire" or not _names(body, daemon_pid, _daemon_port(sup)))
    reply = exchange(socket_path_for_root(sup.root), request(*endpoint, body))
    status = int(reply.split(b" ", 2)[1])
    document = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert isinstance(document, dict)
    if status >= 400:
        error = document["error"]
        assert error["message"]
        # A 5xx is only ever a daemon that could not be started, never a failure of ours.
        assert status < 500 or error["code"] in ("spawn_failed", "no_free_port"), error
        # Refused means nothing changed: the table, in memory and on disk, and its daemon.
        _still_whole(sup, daemon_pid)
    else:
        assert status in (200, 202), reply[:200]


# Each of these meant something else under lax parsing: "yes" was a forced reset, true was
# pid 1, 1 was "stop the children too" (issue 14, loose types).
LOOSELY_TYPED = [
    ("/v1/reset", {"force": "yes"}),
    ("/v1/reset", {"force": 1}),
    ("/v1/reset", {"dry_run": "false", "force": True}),
    ("/v1/reset", {"confirmed_pids": [True]}),
    ("/v1/reset", {"confirmed_pids": ["4242"]}),
    ("/v1/sync/retire", {"pid": True}),
    ("/v1/sync/retire", {"pid": "1"}),
    ("/v1/sync/retire", {"pid": 1.0}),
    ("/v1/sync/retire", {"port": "9431"}),
    ("/v1/shutdown", {"stop_children": "yes"}),
    ("/v1/shutdown", {"stop_children": 1}),
    ("/v1/sync/ensure", {"python": "/usr/bin/python3", "package_version": 3.2}),
    (
        "/v1/sync/ensure",
        {"python": "/usr/bin/python3", "package_version": "3.2.4", "env": {"A": 1}},
    ),
]


@pytest.mark.parametrize(
    ("path", "body"), LOOSELY_TYPED, ids=[f"{p}:{json.dumps(b)}" for p, b in LOOSELY_TYPED]
)
def test_a_body_of_the_wrong_json_type_is_refused_not_coerced(
    running: tuple[SupervisorUnderTest, int], path: str, body: dict[str, object]
) -> None:
    sup, daemon_pid = running
    reply = exchange(
        socket_path_for_root(sup.root), request("POST", path, json.dumps(body).encode())
    )
    status = int(reply.split(b" ", 2)[1])
    error = json.loads(reply.partition(b"\r\n\r\n")[2])["error"]
    assert (status, error["code"]) == (400, "invalid_request"), reply[:300]
    assert "valid" in error["message"]
    _still_whole(sup, daemon_pid)
    assert sup.pids(), "the supervisor must still run"


@settings(max_examples=100, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=2000))
def test_garbage_bytes_never_kill_the_supervisor(
    running: tuple[SupervisorUnderTest, int], garbage: bytes
) -> None:
    sup, daemon_pid = running
    reply = exchange(socket_path_for_root(sup.root), garbage)
    # Garbage gets a 4xx or a closed connection, never a 5xx; the supervisor serves on.
    assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:200]
    _still_whole(sup, daemon_pid)


def test_after_the_abuse_the_table_and_the_daemon_are_intact(
    running: tuple[SupervisorUnderTest, int],
) -> None:
    sup, daemon_pid = running
    path = socket_path_for_root(sup.root)
    rng = random.Random(7)
    abuse = [
        b"GET /v1/status HTTP/1.1\r\n" + b"X-Long: " + b"a" * 200_000 + b"\r\n\r\n",
        b"POST /v1/sync/ensure HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n{",
        b"GET /v1/health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x00" * 5000,
        bytes(rng.getrandbits(8) for _ in range(4096)),
    ]
    for data in abuse:
        exchange(path, data, timeout=3)

    # Many clients at once, half of them hanging up mid-request.
    def one(index: int) -> bytes:
        if index % 2:
            return exchange(
                path, b"POST /v1/sync/ensure HTTP/1.1\r\nContent-Length: 50\r\n\r\n{", 1
            )
        return exchange(path, request("GET", "/v1/status", b""))

    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(one, range(200)))
    assert sum(1 for r in replies if r.startswith(b"HTTP/1.1 200")) == 100
    _still_whole(sup, daemon_pid)
