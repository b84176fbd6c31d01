"""No daemon token leaks: every output, log and file is searched for every token created.

A daemon's token authorises ``POST /api/shutdown`` and the sync endpoints. It belongs in
upstream's files (``R/sync-daemon``, the daemon's own ``owner.json``), in the supervisor's
table (``R/supervisor/state.json``, 0600, needed to stop its daemons gracefully), in the
daemon's argv (upstream's spawn shape), and in the answer to the caller of ``ensure`` (and
``ensure --show-token``). Nowhere else: not in the supervisor's log, stdout or stderr, not in
the ledger, not in status, doctor, events or a refusal, not in what the CLI prints without
``--show-token``, not in this suite's report.

Each round drives a session that makes tokens and text: orphans of the root with known
tokens (swept by reset), another HOME's daemon, a spawn, a replacement, an upgrade to 3.2.7,
a kill -9 of the supervisor and its re-adoption, refused requests that carry a token in a
wrong field, and every CLI command. Then every token (harvested from the places it belongs)
is looked for in every other byte the session produced.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sks_harness import (
    SPAWN_PORTS,
    SUPERVISOR,
    DaemonFleet,
    PortRange,
    Sandbox,
    SupervisorUnderTest,
    eventually,
    is_alive,
    read_identity,
    read_state_file,
    run_blocking,
    signal_if_same,
    spec_kitty_python,
    supervisor_pids,
    wait_healthy,
)
from tests.chaos import conftest as chaos_session
from tests.chaos._secrets import TOKEN_HOMES, is_token_home
from tests.chaos._tally import Tally, rounds
from tests.chaos._wire import call

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

_TOKEN = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


class Session:
    """Everything one round produced: tokens where they belong, text everywhere else."""

    def __init__(self, sup: SupervisorUnderTest) -> None:
        self.sup = sup
        self.tokens: set[str] = set()
        self.texts: dict[str, bytes] = {}

    def harvest(self, text: bytes) -> None:
        self.tokens.update(m.decode() for m in _TOKEN.findall(text))

    def keep(self, name: str, text: bytes | str) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.texts[f"{name} #{len(self.texts)}"] = data

    def cli(self, *args: str) -> None:
        done = self.sup.cli(*args)
        self.keep(f"spec-kitty-supervisor {' '.join(args)} stdout", done.stdout)
        self.keep(f"spec-kitty-supervisor {' '.join(args)} stderr", done.stderr)

    def api(self, method: str, target: str, body: object = None) -> object:
        reply = call(self.sup.root, method, target, body, timeout=120)
        text = json.dumps(reply.document).encode()
        if target == "/v1/sync/ensure" and reply.status == 200:
            self.harvest(text)  # the caller of ensure is the one who gets the token
        else:
            self.keep(f"{method} {target} answer", text)
        return reply.document

    def harvest_files(self) -> None:
        for relative in TOKEN_HOMES:
            path = self.sup.root / relative
            if path.is_file():
                self.harvest(path.read_bytes())


def _start_capturing(sup: SupervisorUnderTest, out: Path) -> int:
    with open(out.with_suffix(".stdout"), "ab") as stdout, open(out, "ab") as stderr:
        popen = subprocess.Popen(
            [*SUPERVISOR, "run", "--root", str(sup.root)],
            env=sup.env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    sup._popens.append(popen)
    sup.wait_ready()
    sup.remember()
    return popen.pid


def _kill_9(sup: SupervisorUnderTest) -> None:
    for pid in supervisor_pids(sup.root):
        identity = read_identity(pid)
        if identity is not None and signal_if_same(identity, signal.SIGKILL):
            eventually(lambda i=identity: not is_alive(i), what=f"supervisor {pid} gone")


def _one_session(session: Session, fleet: DaemonFleet, sandbox: Sandbox, out: Path) -> None:
    sup = session.sup
    old, new = str(spec_kitty_python("3.2.4")), str(spec_kitty_python("3.2.7"))
    # Orphans of this root (their tokens are ours to know) and another HOME's daemon.
    orphans = [fleet.spawn(sandbox, "3.2.4") for _ in range(2)]
    other = fleet.spawn(fleet.sandbox(), "3.2.4")
    for daemon in [*orphans, other]:
        run_blocking(wait_healthy, daemon, 30.0)
        session.tokens.add(daemon.token)

    _start_capturing(sup, out)
    session.api("POST", "/v1/sync/ensure", {"python": old})
    session.cli("ensure", "--python", old)
    session.cli("ensure", "--python", old, "--json")
    done = sup.cli("ensure", "--python", old, "--show-token", "--json")
    session.harvest(done.stdout.encode())  # asked for: the token belongs in this output
    session.api("POST", "/v1/reset", {})  # sweeps the orphans of the root
    session.api("POST", "/v1/sync/ensure", {"python": old, "replace": True})
    session.api("POST", "/v1/sync/ensure", {"python": new})  # an upgrade, make-before-break
    session.harvest_files()
    # Refusals that carry a token in a wrong field: the refusal may tell the caller what it
    # sent, but no log may keep it.
    for token in sorted(session.tokens)[:2]:
        call(sup.root, "POST", "/v1/sync/retire", {"pid": token})
        call(sup.root, "POST", "/v1/sync/ensure", {"python": new, "package_version": token})
        call(sup.root, "POST", "/v1/reset", {"confirmed_pids": [token]})
    _kill_9(sup)
    _start_capturing(sup, out)  # re-adopts the current daemon from its journal
    for command in ("status", "doctor", "events"):
        session.cli(command)
        session.cli(command, "--json")
    for target in ("/v1/status", "/v1/doctor", "/v1/events?limit=1000", "/v1/health"):
        session.api("GET", target)
    status = session.api("GET", "/v1/status")
    assert isinstance(status, dict)
    current = next(d for d in status["daemons"] if d["role"] == "current")
    session.cli("retire", "--pid", str(current["pid"]))
    session.api("POST", "/v1/sync/ensure", {"python": old})
    session.harvest_files()
    recorded = read_state_file(sup.root)
    if recorded is not None:
        session.tokens.add(recorded.token)
    session.cli("stop", "--children")


def _files_to_search(sandbox: Sandbox) -> list[Path]:
    found = []
    for path in sorted(sandbox.base.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with contextlib.suppress(ValueError):
            if is_token_home(path.relative_to(sandbox.root).as_posix()):
                continue
        # A queue database is not text anyone reads; the text files and logs are.
        if path.suffix in (".db", ".db-wal", ".db-shm", ".sqlite"):
            continue
        found.append(path)
    return found


def test_no_token_appears_anywhere_it_does_not_belong(
    fleet: DaemonFleet, sandbox: Sandbox, sup: SupervisorUnderTest, tally: Callable[[str], Tally]
) -> None:
    counted = tally("tokens in outputs, logs and files")
    out = sandbox.base / "supervisor.stderr"
    searched = 0
    session = Session(sup)
    for round_ in range(rounds(1)):
        with counted.trial(f"round {round_}"):
            _one_session(session, fleet, sandbox, out)
    assert len(session.tokens) >= 6, session.tokens  # 3 strangers', spawned, replaced, upgraded
    for path in _files_to_search(sandbox):
        session.keep(str(path.relative_to(sandbox.base)), path.read_bytes())
    # What this suite reports about itself, so far (the tallies become $CHAOS_REPORT).
    for made in chaos_session._SESSION:
        session.keep(f"tally {made.fault!r}", json.dumps(made.to_json()))
    for name, text in session.texts.items():
        searched += len(text)
        leaked = sorted(token for token in session.tokens if token.encode() in text)
        if leaked:
            counted.fail(f"{len(leaked)} token(s) in {name}: {[t[:6] + '…' for t in leaked]}")
    counted.note(
        f"{len(session.tokens)} tokens searched for in {len(session.texts)} outputs and files "
        f"({searched} bytes)"
    )
