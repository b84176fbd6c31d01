"""TERM, INT, HUP: the first asks for the exit, a repeated one changes nothing (found by chaos).

The signals are sent to this very process while ``_runner._signals`` holds the receiver, with a
stand-in for the supervisor that only records what it was asked; the test restores the
process's own handlers afterwards.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from sks_harness import aeventually
from spec_kitty_supervisor._exit_signals import ExitSignals
from spec_kitty_supervisor._runner import EXIT_SIGNALS, _signals

pytestmark = pytest.mark.anyio


@dataclass
class _Ledger:
    kinds: list[tuple[str, str]] = field(default_factory=list)

    def record(self, kind: str, *, reason: str = "") -> None:
        self.kinds.append((kind, reason))


@dataclass
class _Supervisor:
    ledger: _Ledger = field(default_factory=_Ledger)
    exit_reason: str | None = None
    exits_asked: int = 0

    @property
    def exiting(self) -> bool:
        return self.exit_reason is not None

    def request_exit(self, reason: str) -> None:
        self.exits_asked += 1
        self.exit_reason = reason


@pytest.fixture
def own_handlers() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in EXIT_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("signum", EXIT_SIGNALS, ids=[s.name for s in EXIT_SIGNALS])
async def test_a_repeated_exit_signal_is_received_and_changes_nothing(
    own_handlers: None, signum: signal.Signals
) -> None:
    supervisor = _Supervisor()
    async with anyio.create_task_group() as group:
        group.start_soon(_signals, supervisor)
        await wait_all_tasks_blocked()
        os.kill(os.getpid(), signum)
        await aeventually(lambda: supervisor.exiting, what="the exit to be asked for")
        # The first was handled; before the fix the receiver was closed now, and this second
        # one met the default action (this test process would have died of it).
        os.kill(os.getpid(), signum)
        os.kill(os.getpid(), signal.SIGHUP if signum != signal.SIGHUP else signal.SIGTERM)
        await wait_all_tasks_blocked()
        group.cancel_scope.cancel()
    assert supervisor.exits_asked == 1
    assert supervisor.exit_reason == signum.name
    assert supervisor.ledger.kinds == [("signal", f"received {signum.name}")]


async def test_once_exiting_the_process_ignores_exit_signals_to_its_end(own_handlers: None) -> None:
    supervisor = _Supervisor()
    async with anyio.create_task_group() as group:
        group.start_soon(_signals, supervisor)
        await wait_all_tasks_blocked()
        os.kill(os.getpid(), signal.SIGTERM)
        await aeventually(lambda: supervisor.exiting, what="the exit to be asked for")
        group.cancel_scope.cancel()
    # The receiver is closed: what is left of the exit must not be cut short by a signal.
    assert {signal.getsignal(s) for s in EXIT_SIGNALS} == {signal.SIG_IGN}
    os.kill(os.getpid(), signal.SIGTERM)  # ignored; the test goes on
    assert supervisor.exits_asked == 1


async def test_a_supervisor_cancelled_without_exiting_keeps_the_default_actions(
    own_handlers: None,
) -> None:
    # A task group cancelled by a crash, not an exit: the handlers found are put back. They
    # are whatever this process started with (a shell starts a background job with SIGINT
    # ignored), so a default action is set first, to see that it is the one put back.
    for signum in EXIT_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    async with anyio.create_task_group() as group:
        group.start_soon(_signals, _Supervisor())
        await wait_all_tasks_blocked()
        assert all(signal.getsignal(s) != signal.SIG_DFL for s in EXIT_SIGNALS)
        group.cancel_scope.cancel()
    assert {signal.getsignal(s) for s in EXIT_SIGNALS} == {signal.SIG_DFL}


async def test_leaving_without_the_exit_puts_back_even_an_ignored_signal(
    own_handlers: None,
) -> None:
    # A supervisor started by a shell in the background has SIGINT ignored; a receiver that
    # ends without an exit leaves it as it found it, not at the default action.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with ExitSignals(EXIT_SIGNALS):
        assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


async def test_leaving_for_the_exit_never_sets_a_default_action_on_the_way(
    own_handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # anyio's receiver, closed by the exit's cancellation, set each signal's default action
    # before the ignore: a second signal in between killed the supervisor (chaos, SIGHUP x2).
    supervisor = _Supervisor()
    set_on_leaving: list[tuple[int, object]] = []
    real_signal = signal.signal

    def recording(signum: int, handler: Any) -> Any:
        set_on_leaving.append((signum, handler))
        return real_signal(signum, handler)

    async with anyio.create_task_group() as group:
        group.start_soon(_signals, supervisor)
        await wait_all_tasks_blocked()
        os.kill(os.getpid(), signal.SIGHUP)
        await aeventually(lambda: supervisor.exiting, what="the exit to be asked for")
        monkeypatch.setattr(signal, "signal", recording)
        group.cancel_scope.cancel()
    monkeypatch.undo()
    assert set_on_leaving, "leaving set no disposition at all"
    assert {handler for _signum, handler in set_on_leaving} == {signal.SIG_IGN}
    assert {signum for signum, _handler in set_on_leaving} == set(EXIT_SIGNALS)


async def test_a_signal_another_thread_receives_reaches_the_loop(own_handlers: None) -> None:
    # The kernel hands a process's signal to any thread that does not block it; the wakeup
    # socket, not the main thread's next bytecode, is what wakes the loop then.
    received: list[int] = []
    with ExitSignals(EXIT_SIGNALS) as signals:

        def signal_from_a_worker() -> None:
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        await anyio.to_thread.run_sync(signal_from_a_worker)
        async for signum in signals:
            received.append(signum)
            break
    assert received == [signal.SIGTERM]


async def test_signals_with_handlers_of_their_own_are_not_taken_for_exit_signals(
    own_handlers: None,
) -> None:
    others: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: others.append(signum))
    try:
        with ExitSignals(EXIT_SIGNALS) as signals:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGINT)
            async for signum in signals:
                first = signum
                break
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert first == signal.SIGINT
    assert others == [signal.SIGUSR1]


async def test_leaving_puts_back_the_wakeup_descriptor_found(own_handlers: None) -> None:
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    with ExitSignals(EXIT_SIGNALS):
        ours = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(ours)
        assert ours not in (-1, before)
    after = signal.set_wakeup_fd(before)
    assert after == before


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_a_signal_that_cannot_be_caught_gives_back_what_was_taken(
    own_handlers: None,
) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    wakeup_before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_before)
    fds_before = _open_fds()

    # SIGHUP comes first (sorted) and is taken; SIGKILL cannot be, and the entry fails.
    with (
        pytest.raises(OSError, match="Invalid argument"),
        ExitSignals([signal.SIGHUP, signal.SIGKILL]),
    ):
        pass

    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    assert signal.set_wakeup_fd(wakeup_before) == wakeup_before
    assert _open_fds() == fds_before  # the socket pair is closed


def test_off_the_main_thread_the_entry_fails_and_leaks_nothing() -> None:
    wakeup_before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_before)
    fds_before = _open_fds()
    failures: list[BaseException] = []

    async def enter() -> None:
        with ExitSignals(EXIT_SIGNALS):
            pass

    def worker() -> None:
        try:
            anyio.run(enter)
        except ValueError as exc:  # set_wakeup_fd works in the main thread only
            failures.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()

    assert len(failures) == 1
    assert _open_fds() == fds_before  # the socket pair (and the worker's loop) are closed
    assert signal.set_wakeup_fd(wakeup_before) == wakeup_before  # the main thread's untouched
