"""Floods of hostile requests and clients: never a 500, never a crash, the table intact, and
every other client still served.

- 5,000 malformed requests a round (10,000 in CI's two rounds): methods, targets, headers,
  framing and bodies mutated at random (a seeded generator, so a failing request can be made
  again), bodies built from ``docs/protocol.schema.json``'s request models with wrong types,
  unknown fields and out-of-range values. A well-behaved client asks for status all along.
- slow and idle clients: hundreds of connections that never send a byte, and slowloris
  clients that send a request head a byte at a time and never finish it, held while a
  well-behaved client asks for status and its daemon; the slow ones are closed by the
  supervisor's own deadlines.
- another uid on the socket: a process running as ``nobody`` that can reach the socket (it is
  given the right to open root's folder, so only the supervisor's peer check stands between
  it and the API) asks to retire the daemon, reset and shut down: refused, nothing changed.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sks_harness import (
    SPAWN_PORTS,
    DaemonFleet,
    ProcessIdentity,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    is_alive,
    read_identity,
    spec_kitty_python,
    supervisor_pids,
)
from spec_kitty_supervisor_client import SupervisorClient, socket_path_for_root
from tests.chaos._facts import settle_one_owner
from tests.chaos._standin import nobody
from tests.chaos._tally import Tally, TrialFailed, rounds
from tests.chaos._wire import exchange

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

REQUESTS_PER_ROUND = 5_000
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "protocol.schema.json").read_text())
#: 5xx codes that are honest answers about the world, not failures of the supervisor.
HONEST_5XX = {"spawn_failed", "no_free_port", "state_not_writable", "root_file_refused"}


class Running:
    """The supervisor under attack, its daemon, and who they were when the flood began."""

    def __init__(self, sup: SupervisorUnderTest) -> None:
        self.sup = sup
        self.socket = socket_path_for_root(sup.root)
        (pid,) = supervisor_pids(sup.root)
        supervisor = read_identity(pid)
        with SupervisorClient(sup.root, autostart=False, timeout=60) as client:
            daemon = client.ensure(str(spec_kitty_python("3.2.4"))).daemon
        identity = read_identity(daemon.pid)
        assert supervisor is not None
        assert identity is not None
        self.supervisor: ProcessIdentity = supervisor
        self.daemon: ProcessIdentity = identity
        self.daemon_port = daemon.port
        self.journal = (sup.root / "supervisor" / "state.json").read_bytes()

    def count_damage(self, tally: Tally, label: str) -> None:
        """What the flood did: the same supervisor and daemon alive, the table unchanged."""
        if not is_alive(self.supervisor):
            tally.fail(f"{label}: the supervisor {self.supervisor.pid} is gone")
        if not is_alive(self.daemon):
            tally.lost(1, f"{label}: the daemon {self.daemon.pid} is gone")
        daemons = daemon_pids(self.sup.root)
        tally.duplicate(max(0, len(daemons) - 1), f"{label}: daemons {daemons}")
        supervisors = supervisor_pids(self.sup.root)
        tally.duplicate(max(0, len(supervisors) - 1), f"{label}: supervisors {supervisors}")
        with SupervisorClient(self.sup.root, autostart=False, timeout=60) as client:
            table = [(d.pid, d.role) for d in client.status().daemons]
        if table != [(self.daemon.pid, "current")]:
            tally.lost(1, f"{label}: the table is {table}")
        facts = settle_one_owner(tally, self.sup.root, label)
        if facts.daemon(self.daemon.pid) is None:
            tally.lost(1, f"{label}: {facts.describe()}")


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    with DaemonFleet(port_range=SPAWN_PORTS) as fleet, SupervisorUnderTest(fleet.sandbox()) as sup:
        # A daemon slowed by the flood is not to look dead (and be replaced): this is about
        # requests, not about health.
        sup.settings = {"SPEC_KITTY_SUPERVISOR_HEALTH_TIMEOUT_SECONDS": "5"}
        sup.start(extra_env={"SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "5"})
        yield Running(sup)


# -- the generator -----------------------------------------------------------------------------

ROUTES = [
    ("GET", "/v1/health"),
    ("GET", "/v1/status"),
    ("POST", "/v1/sync/ensure"),
    ("POST", "/v1/sync/retire"),
    ("GET", "/v1/events"),
    ("GET", "/v1/doctor"),
    ("POST", "/v1/reset"),
    ("POST", "/v1/restart"),
]
#: Routes that, well-formed, end the supervisor: only ever sent with the wrong method.
ENDING = ["/v1/shutdown", "/v1/handover"]
BODY_MODEL = {
    "/v1/sync/ensure": "EnsureRequest",
    "/v1/sync/retire": "RetireRequest",
    "/v1/reset": "ResetRequest",
    "/v1/shutdown": "ShutdownRequest",
}
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "CONNECT", "TRACE"]
ODD_TOKENS = ["", " ", "G\x00T", "GET GET", "\xff", "A" * 5000, "POST\t", "é"]


def _any_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**64), 10**30, 4242])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e308, 3.0])
    if kind == 4:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(12)))
    if kind == 5:
        return rng.choice(["", "/usr/bin/python3", "../../etc/passwd", "3.2.4", "\x00", "9" * 300])
    if kind in (6, 7):
        return [_any_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_short(rng): _any_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _short(rng: random.Random) -> str:
    return rng.choice(["python", "pid", "port", "force", "env", "x", "", "cwd", "PATH", "é"])


def _wrong_for(rng: random.Random, schema: dict[str, Any]) -> Any:
    """A value of a type ``schema`` does not allow (often), or any JSON at all."""
    types = {option.get("type") for option in schema.get("anyOf", [schema])}
    wrong = {
        "string": [1, True, None, [], {}, 1.5],
        "integer": ["1", 1.0, True, [], {}, 2**70],
        "boolean": ["yes", 1, 0, None, "false", []],
        "array": [{}, "[]", 1, [[1]], ["1"], [True]],
        "object": [[], "a=b", {"A": 1}, {"A": None}, 1],
    }
    for kind in types:
        if kind in wrong and rng.random() < 0.8:
            return rng.choice(wrong[kind])
    return _any_json(rng)


def _schema_body(rng: random.Random, model: str) -> dict[str, Any]:
    """The model's fields, each valid in type or not, maybe an unknown one (never valid)."""
    properties: dict[str, Any] = SCHEMA["models"][model]["properties"]
    body: dict[str, Any] = {}
    for name, schema in properties.items():
        roll = rng.random()
        if roll < 0.4:
            body[name] = _wrong_for(rng, schema)
        elif roll < 0.7:
            body[name] = _any_json(rng)
    if not body or rng.random() < 0.3:
        body[rng.choice(["unknown", "pid ", "Python", "__proto__", ""])] = _any_json(rng)
    return body


def _body(rng: random.Random, target: str) -> bytes:
    roll = rng.random()
    model = BODY_MODEL.get(target.split("?", maxsplit=1)[0])
    if model is not None and roll < 0.5:
        return json.dumps(_schema_body(rng, model)).encode()
    if roll < 0.7:
        return json.dumps(_any_json(rng)).encode()
    if roll < 0.8:
        return b"[" * rng.randrange(1, 100_000) + b"]" * rng.randrange(0, 3)
    if roll < 0.9:
        text = json.dumps(_schema_body(rng, model or "ResetRequest")).encode()
        return text[: rng.randrange(len(text))]  # cut short
    return rng.randbytes(rng.randrange(1, 600))


def _target(rng: random.Random, path: str) -> str:
    roll = rng.random()
    if roll < 0.55:
        return path
    if roll < 0.7:
        return path + "?" + rng.choice(["since=-1", "limit=abc", "since=1&since=2", "%zz", "a"])
    if roll < 0.8:
        return rng.choice(["/", "*", "/v1", "/v2/status", "/v1/status/..", "//v1//status"])
    if roll < 0.9:
        return rng.choice(["http://x/v1/status", "/v1/\x00", "/" + "a" * 9000, "/v1/%2e%2e/"])
    return path.upper()


def _headers(rng: random.Random, body: bytes) -> list[bytes]:
    lines = [b"Host: s"] if rng.random() < 0.9 else []
    roll = rng.random()
    if roll < 0.6:
        lines.append(b"Content-Length: %d" % len(body))
    elif roll < 0.7:
        lines.append(b"Content-Length: %d" % rng.choice([0, len(body) + 5, 2**40, -1]))
    elif roll < 0.75:
        lines += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
    elif roll < 0.82:
        lines.append(b"Transfer-Encoding: " + rng.choice([b"chunked", b"gzip", b"chunked, x"]))
    elif roll < 0.88:
        lines.append(b"Content-Length: 1e3")
    for _ in range(rng.randrange(4)):
        lines.append(
            rng.choice(
                [
                    b"X-Odd: \x00\x01",
                    b" folded continuation",
                    b"NoColon",
                    b": empty-name",
                    b"X-Big: " + b"v" * rng.randrange(100, 70_000),
                    b"Connection: keep-alive, upgrade",
                    b"Expect: 100-continue",
                    b"Spec-Kitty-Supervisor-Protocol: " + rng.choice([b"0", b"99", b"x", b""]),
                    b"Content-Type: text/plain",
                ]
            )
        )
    lines.append(b"Connection: close")
    return lines


def malformed_request(rng: random.Random, avoid: Callable[[bytes], bool]) -> bytes:
    """One hostile request; never one that ``avoid`` says would be obeyed harmfully."""
    while True:
        roll = rng.random()
        if roll < 0.05:
            return rng.randbytes(rng.randrange(1, 3000))
        if roll < 0.1:
            path = rng.choice(ENDING)
            method = rng.choice(["GET", "PUT", "DELETE", "get"])
        else:
            method, path = rng.choice(ROUTES)
            if rng.random() < 0.25:
                method = rng.choice(METHODS + ODD_TOKENS)
        target = _target(rng, path)
        body = _body(rng, target) if rng.random() < 0.85 else b""
        version = rng.choice([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b""])
        line_end = b"\r\n" if rng.random() < 0.9 else rng.choice([b"\n", b"\r", b"\n\r"])
        head = [method.encode("utf-8", "surrogatepass") + b" " + target.encode() + b" " + version]
        head += _headers(rng, body)
        data = line_end.join(head) + line_end + line_end + body
        if rng.random() < 0.05:
            data = data[: rng.randrange(1, len(data))]  # hung up half-way
        if not avoid(data):
            return data


def _obeyed_harmfully(daemon_pid: int, daemon_port: int) -> Callable[[bytes], bool]:
    # A retire naming our daemon would rightly retire it: not a malformed request.
    names = (b'"pid": %d' % daemon_pid, b'"port": %d' % daemon_port)

    def avoid(data: bytes) -> bool:
        return b"retire" in data.split(b"\n", 1)[0].lower() and any(n in data for n in names)

    return avoid


# -- the well-behaved client ------------------------------------------------------------------


class Bystander:
    """A client asking for status over and over while the flood lasts; every miss is kept."""

    def __init__(self, root: Path, daemon_pid: int) -> None:
        self.root = root
        self.daemon_pid = daemon_pid
        self.served = 0
        self.missed: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._ask, daemon=True)

    def _ask(self) -> None:
        while not self._done.is_set():
            try:
                with SupervisorClient(self.root, autostart=False, timeout=60) as client:
                    pids = [d.pid for d in client.status().daemons]
                if pids != [self.daemon_pid]:
                    self.missed.append(f"status named {pids}")
                self.served += 1
            except Exception as exc:
                self.missed.append(repr(exc))
            self._done.wait(0.05)  # a pace, not a synchronisation

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=120)

    def count(self, tally: Tally, label: str) -> None:
        if self.served == 0:
            tally.fail(f"{label}: the well-behaved client was never served")
        for miss in self.missed[:5]:
            tally.fail(f"{label}: the well-behaved client was not served: {miss}")


def _judge(reply: bytes) -> str | None:
    """None when the answer is acceptable; else what is wrong with it."""
    if not reply:
        return None  # the supervisor hung up: allowed for what cannot be answered
    if not reply.startswith(b"HTTP/1.1 "):
        return f"not an HTTP answer: {reply[:80]!r}"
    status = int(reply[9:12])
    _, _, body = reply.partition(b"\r\n\r\n")
    if status >= 400:
        try:
            error = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return f"{status} without an error document: {reply[:200]!r}"
        if status >= 500 and error.get("code") not in HONEST_5XX:
            return f"{status} {error}"
    return None


def test_ten_thousand_malformed_requests_never_get_a_500_nor_cost_the_table(
    running: Running, tally: Callable[[str], Tally]
) -> None:
    counted = tally("malformed requests")
    avoid = _obeyed_harmfully(running.daemon.pid, running.daemon_port)
    statuses: dict[int, int] = {}
    for round_ in range(rounds()):
        seed = 15_000 + round_
        rng = random.Random(seed)
        requests = [malformed_request(rng, avoid) for _ in range(REQUESTS_PER_ROUND)]
        label = f"round {round_} (seed {seed})"

        def send(data: bytes) -> tuple[int | None, str | None]:
            try:
                reply = exchange(running.socket, data, timeout=60)
            except OSError as exc:
                return None, f"no answer: {exc!r}"
            status = int(reply[9:12]) if reply[9:12].isdigit() else None
            return status, _judge(reply)

        with (
            Bystander(running.sup.root, running.daemon.pid) as bystander,
            ThreadPoolExecutor(max_workers=4) as pool,
        ):
            results = list(pool.map(send, requests))
        for index, (status, problem) in enumerate(results):
            with counted.trial():
                if status is not None:
                    statuses[status] = statuses.get(status, 0) + 1
                if problem is not None:
                    raise TrialFailed(
                        f"{label} request {index} {requests[index][:120]!r}: {problem}"
                    )
        bystander.count(counted, label)
        running.count_damage(counted, label)
    counted.note(f"answers by status: {dict(sorted(statuses.items()))}")


# -- slow and idle clients --------------------------------------------------------------------


def _closed_by_peer(client: socket.socket) -> bool:
    client.setblocking(False)
    try:
        return client.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slow_and_idle_clients_never_keep_others_from_being_served(
    running: Running, tally: Callable[[str], Tally]
) -> None:
    counted = tally("slow and idle clients")
    python = str(spec_kitty_python("3.2.4"))
    for round_ in range(rounds()):
        label = f"round {round_}"
        with counted.trial(label):
            idle: list[socket.socket] = []
            slow: list[socket.socket] = []
            try:
                for _ in range(300):  # never send a byte
                    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    idle.append(client)
                    client.connect(str(running.socket))
                for _ in range(50):  # a head begun and never finished
                    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    slow.append(client)
                    client.connect(str(running.socket))
                    client.sendall(b"POST /v1/sync/ensure HTTP/1.1\r\nHost: s\r\n")
                # A slowloris drips its head a byte at a time while the others wait.
                drip = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                slow.append(drip)
                drip.connect(str(running.socket))
                with SupervisorClient(running.sup.root, autostart=False, timeout=60) as client:
                    for byte in b"GET /v1/status HTTP/1.1\r\nX-Slow: yes":
                        drip.send(bytes([byte]))
                        answer = client.status()  # served between each of its bytes
                        if [d.pid for d in answer.daemons] != [running.daemon.pid]:
                            counted.lost(1, f"{label}: status named {answer.daemons}")
                    if client.ensure(python).daemon.pid != running.daemon.pid:
                        counted.lost(1, f"{label}: ensure gave another daemon")
                # The supervisor's own deadlines close every slow one (its head timeout).
                eventually(
                    lambda held=slow: all(_closed_by_peer(c) for c in held),
                    what="every slow client closed by the supervisor",
                    timeout=120,
                )
            finally:
                for client in idle + slow:
                    client.close()
        running.count_damage(counted, label)


# -- another uid on the socket ----------------------------------------------------------------

FOREIGN_CLIENT = r"""
import json, os, socket, sys
path, pid = sys.argv[1], int(sys.argv[2])
asks = [
    ("POST", "/v1/sync/retire", {"pid": pid}),
    ("POST", "/v1/reset", {"force": True}),
    ("POST", "/v1/shutdown", {"stop_children": True}),
    ("POST", "/v1/handover", None),
    ("GET", "/v1/status", None),
]
answers = []
for method, target, body in asks:
    data = b"" if body is None else json.dumps(body).encode()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(60)
    client.connect(path)
    try:
        client.sendall(f"{method} {target} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n"
                       f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    except OSError:
        pass  # refused and closed before it was read
    reply = b""
    try:
        while chunk := client.recv(65536):
            reply += chunk
    except OSError:
        pass
    answers.append(reply.decode("utf-8", "replace"))
print(json.dumps({"uid": os.geteuid(), "answers": answers}))
"""


def test_another_uid_on_the_socket_is_refused_and_changes_nothing(
    running: Running, tally: Callable[[str], Tally]
) -> None:
    user = nobody()
    if user is None:
        pytest.skip("needs root, to run a client as another user")
    counted = tally("another uid on the socket")
    # The socket's folder is 0700 and the socket 0600: no other user can reach it. This client
    # is given the right to pass those permissions (ambient DAC capabilities), so that only the
    # supervisor's own check of the peer's uid stands between it and the API.
    prefix = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups"]
    prefix += ["--inh-caps=+dac_override", "--ambient-caps=+dac_override", sys.executable, "-I"]
    probe = subprocess.run([*prefix, "-c", "pass"], capture_output=True, check=False, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"cannot run a client of another uid with DAC_OVERRIDE: {probe.stderr!r}")
    argv = [*prefix, "-c", FOREIGN_CLIENT, str(running.socket), str(running.daemon.pid)]
    for round_ in range(rounds()):
        label = f"round {round_}"
        with counted.trial(label):
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=300, check=False, cwd="/"
            )
            assert done.returncode == 0, done.stderr[-2000:]
            seen = json.loads(done.stdout)
            assert seen["uid"] == user[0], seen
            for answer in seen["answers"]:
                # Refused before a byte is read: 403 peer_refused, or the connection closed.
                if answer and not (answer.startswith("HTTP/1.1 403") and "peer_refused" in answer):
                    counted.fail(f"{label}: another uid was answered: {answer[:300]!r}")
            counted.note(f"answers: {[a[:12] or 'closed' for a in seen['answers']]}")
        running.count_damage(counted, label)
