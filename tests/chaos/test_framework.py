"""The chaos suite's own instruments: a tally that cannot fail is no proof, nor a deaf witness."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest

from scripts.reliability_report import render
from sks_harness import (
    ORPHAN_PORTS,
    DaemonFleet,
    Sandbox,
    SupervisorUnderTest,
    eventually,
    run_blocking,
    signal_if_same,
    spec_kitty_python,
    wait_healthy,
)
from tests.chaos._facts import settle_one_owner
from tests.chaos._standin import StandIn
from tests.chaos._tally import COUNTERS, Tally, TrialFailed, rounds, write_report


def test_a_tally_with_any_broken_counter_fails_with_its_details() -> None:
    for counter in COUNTERS:
        made = Tally(fault="example")
        with made.trial():
            pass
        made.check()  # one clean trial passes
        made._count(counter, 2, f"two {counter}")
        with pytest.raises(AssertionError, match=f"{counter}=2 in 1 trials\n.*two {counter}"):
            made.check()


def test_a_tally_without_trials_proves_nothing_and_fails() -> None:
    with pytest.raises(AssertionError, match="no trial ran"):
        Tally(fault="empty").check()


def test_a_trial_that_raises_counts_one_failure_and_the_next_trial_still_runs() -> None:
    made = Tally(fault="example")
    with made.trial("first"):
        raise TrialFailed("the caller got no answer")
    with made.trial("second"):
        raise KeyError("boom")
    with made.trial("third"):
        pass
    assert (made.trials, made.failures) == (3, 2)
    assert "trial 1 first: the caller got no answer" in made.details[0]
    assert "KeyError" in made.details[1]


def test_rounds_come_from_chaos_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAOS_ROUNDS", raising=False)
    assert rounds(3) == 3
    monkeypatch.setenv("CHAOS_ROUNDS", "12")
    assert rounds(3) == 12
    monkeypatch.setenv("CHAOS_ROUNDS", "0")
    with pytest.raises(ValueError, match="positive"):
        rounds()


def test_the_report_renders_every_tally_with_its_run(tmp_path: Path) -> None:
    clean = Tally(fault="cold start", trials=4, outcome="passed")
    broken = Tally(fault="kill -9 | idle", trials=3, orphans_left=1, outcome="failed")
    broken.details.append("[orphans_left +1] pid 42 left")
    target = tmp_path / "report.json"
    write_report(target, [clean, broken], {"command": "pytest tests/chaos", "cpus": 2})
    text = render(json.loads(target.read_text()))
    assert "| cold start | 4 | 0 | 0 | 0 | 0 | 0 | passed |" in text
    assert "| kill -9 \\| idle | 3 | 0 | 1 | 0 | 0 | 0 | failed |" in text
    assert "| **all classes** | **7** | **0** | **1** |" in text
    assert "pid 42 left" in text
    assert "`pytest tests/chaos`" in text
    clean.notes.append("observed: one spawn")
    write_report(target, [clean, broken], {"command": "pytest tests/chaos", "cpus": 2})
    assert "one spawn" not in render(json.loads(target.read_text()))
    assert "cold start: observed: one spawn" in render(json.loads(target.read_text()), notes=True)


def test_a_stand_in_records_every_signal_it_receives(tmp_path: Path) -> None:
    with StandIn.start(directory=tmp_path) as witness:
        assert witness.touched() == []
        sent = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTERM]
        for count, signum in enumerate(sent, start=1):
            # One at a time: a signal sent while the same one is pending merges with it.
            assert signal_if_same(witness.identity, signum)
            eventually(lambda n=count: len(witness.signals()) == n, what=f"signal {count}")
        assert witness.signals() == [s.name for s in sent]
        assert signal_if_same(witness.identity, signal.SIGSTOP)
        eventually(witness.stopped, what="the stand-in to be stopped")
        assert witness.touched()[-1] == "stopped"
        assert signal_if_same(witness.identity, signal.SIGCONT)
        eventually(lambda: "SIGCONT" in witness.signals(), what="SIGCONT recorded")
        assert signal_if_same(witness.identity, signal.SIGKILL)
        eventually(lambda: "gone" in witness.touched()[-1], what="the stand-in to be gone")


@pytest.mark.real_ports
def test_a_stand_in_can_hold_a_port_and_answer_or_stay_silent(tmp_path: Path) -> None:
    answering, silent = ORPHAN_PORTS.free(2)
    with (
        StandIn.start(listen=answering, answer='{"status": "ok"}', directory=tmp_path),
        StandIn.start(listen=silent, directory=tmp_path),
    ):
        with socket.create_connection(("127.0.0.1", answering), timeout=30) as sock:
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK")
        assert reply.endswith(b'{"status": "ok"}')
        with socket.create_connection(("127.0.0.1", silent), timeout=30) as sock:
            sock.settimeout(0.2)
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(TimeoutError):
                sock.recv(1)


@pytest.mark.real_ports
@pytest.mark.interop
def test_settling_counts_a_daemon_nobody_owns_and_a_journal_that_lies(
    fleet: DaemonFleet, sandbox: Sandbox
) -> None:
    with SupervisorUnderTest(sandbox) as sup:
        sup.start()
        python = str(spec_kitty_python("3.2.4"))
        current = sup.cli_json("ensure", "--python", python)["daemon"]["pid"]
        clean = Tally(fault="clean")
        assert settle_one_owner(clean, sup.root, "clean").recorded is not None
        assert clean.broken() == {}
        stray = fleet.spawn(sandbox, "3.2.4", sync=True)  # after the start-up sweep: nobody's
        run_blocking(wait_healthy, stray)
        counted = Tally(fault="stray")
        facts = settle_one_owner(counted, sup.root, "stray", timeout=2)
        assert {d.pid for d in facts.daemons} == {current, stray.pid}
        assert counted.broken() == {"orphans_left": 1}
        journal = sup.root / "supervisor" / "state.json"
        journal.write_text(journal.read_text().replace(f'"pid": {current}', '"pid": 1'))
        lied = Tally(fault="journal")
        settle_one_owner(lied, sup.root, "journal", timeout=2)
        assert lied.broken() == {"orphans_left": 1, "lost_or_corrupted_state": 1}
