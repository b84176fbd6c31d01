"""Every broken file of a daemon root: the supervisor starts, answers, keeps its daemon.

For each file the supervisor or upstream keeps in the root, and each way it can be broken
(truncated, empty, binary, nested a hundred thousand deep, a directory, a FIFO, a symlink to a
file elsewhere, a file of another uid), one trial: the supervisor is killed with SIGKILL (no
chance to tidy up), the file is broken, a supervisor is started again, asked for the daemon,
then asked to replace it (a spawn, which opens upstream's files), then for status, doctor and
events. Counted from the processes and files themselves:

- failures: a start that never answers, a request without an answer, any 500 (a 5xx is only
  allowed for a daemon that could not be started, or state that cannot be written);
- duplicates: more than one daemon of the root, or more than one supervisor, alive at once;
- orphans left: a daemon of the root alive that the table does not hold;
- lost or corrupted state: the daemon gone from the table or from ``R/sync-daemon``, the
  journal not naming it, a daemon restarted that nobody asked to restart, or a symlink's
  target written through.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sks_harness import (
    SPAWN_PORTS,
    SUPERVISOR,
    DaemonFleet,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    is_alive,
    read_identity,
    signal_if_same,
    spec_kitty_python,
    supervisor_pids,
)
from tests.chaos._facts import settle_one_owner
from tests.chaos._standin import nobody
from tests.chaos._tally import Tally, rounds
from tests.chaos._wire import Reply, call

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

#: 5xx codes that are honest answers about the world, not failures of the supervisor.
HONEST_5XX = {
    "spawn_failed",
    "no_free_port",
    "state_not_writable",
    "supervisor_exiting",
    "root_file_refused",
}
PYTHON = str(spec_kitty_python("3.2.4"))

Breaker = Callable[[Path, bytes], None]


def _truncated(path: Path, good: bytes) -> None:
    path.write_bytes(good[: max(1, len(good) // 2)])


def _empty(path: Path, good: bytes) -> None:
    path.write_bytes(b"")


def _binary(path: Path, good: bytes) -> None:
    path.write_bytes(b"\x00\xff\xfe" + os.urandom(509))


def _nested(path: Path, good: bytes) -> None:
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)


def _directory(path: Path, good: bytes) -> None:
    path.mkdir()
    (path / "inside").write_bytes(good)


def _fifo(path: Path, good: bytes) -> None:
    os.mkfifo(path, 0o600)


def _symlink(path: Path, good: bytes) -> None:
    victim = path.parent / f"{path.name}.victim-target"
    victim.write_bytes(b"a file the link points at; nothing may write through the link\n")
    path.symlink_to(victim)


def _other_uid(path: Path, good: bytes) -> None:
    ids = nobody()
    assert ids is not None
    path.write_bytes(good)
    os.chown(path, *ids)
    path.chmod(0o600)


CONTENT = {"truncated": _truncated, "empty": _empty, "binary": _binary, "nested": _nested}
KIND = {"directory": _directory, "fifo": _fifo, "symlink": _symlink}
if nobody() is not None:
    KIND["another uid's file"] = _other_uid

#: Root-relative path → the ways it is broken. Lock and log files have no content to break.
FILES: dict[str, dict[str, Breaker]] = {
    "sync-daemon": {**CONTENT, **KIND},
    "supervisor/state.json": {**CONTENT, **KIND},
    "supervisor/events.jsonl": {**CONTENT, **KIND},
    "supervisor/integration.json": {**CONTENT, **KIND},
    "sync/daemon/owner.json": {**CONTENT, **KIND},
    "sync-daemon.lock": KIND,
    "sync-daemon.log": KIND,
}

#: Files a spawn reads or writes: their cases also ask for a new daemon (make-before-break).
OPENED_BY_A_SPAWN = {"sync-daemon", "sync-daemon.lock", "sync-daemon.log", "sync/daemon/owner.json"}

#: Files doctor reads (it also looks at every spec-kitty installation: the costliest call).
READ_BY_DOCTOR = {"sync-daemon", "sync-daemon.log", "supervisor/integration.json"}


@pytest.fixture(scope="module")
def running() -> Iterator[SupervisorUnderTest]:
    with DaemonFleet(port_range=SPAWN_PORTS) as fleet, SupervisorUnderTest(fleet.sandbox()) as sup:
        # A daemon slowed by a starved machine is not to look dead (and be replaced): this is
        # about files, not about health.
        sup.settings = {"SPEC_KITTY_SUPERVISOR_HEALTH_TIMEOUT_SECONDS": "5"}
        sup.start()
        call(sup.root, "POST", "/v1/sync/ensure", {"python": PYTHON})
        yield sup


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _still_planted(path: Path) -> bool:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid()


def _regular_bytes(path: Path) -> bytes | None:
    """The bytes of a regular file of ours at ``path``; None for anything else or nothing."""
    if _still_planted(path) or not path.exists():
        return None
    return path.read_bytes()


def _good_bytes(path: Path) -> bytes:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return b'{"pid": 1, "port": 9440, "note": "a plausible record"}\n'
    if stat.S_ISREG(info.st_mode):
        return path.read_bytes() or b"{}\n"
    return b'{"pid": 1}\n'


def _answers(root: Path) -> bool:
    try:
        return call(root, "GET", "/v1/health", timeout=5).status == 200
    except (OSError, ValueError):
        return False


def _start(sup: SupervisorUnderTest) -> None:
    """Start a supervisor and wait until its socket answers (asked over the socket itself:
    a CLI process per look would cost more than the start)."""
    sup.start(wait=False)
    eventually(lambda: _answers(sup.root), what=f"a supervisor answering for {sup.root}")
    sup.remember()


def _kill_supervisors(sup: SupervisorUnderTest) -> None:
    for pid in supervisor_pids(sup.root):
        identity = read_identity(pid)
        if identity is not None and signal_if_same(identity, 9):
            eventually(lambda i=identity: not is_alive(i), what=f"supervisor {pid} gone")


def _answered(tally: Tally, label: str, reply: Reply) -> Reply:
    if reply.status >= 500 and reply.error_code not in HONEST_5XX:
        tally.fail(f"{label}: answered {reply.status} {reply.document}")
    return reply


def _current_pid(reply: Reply) -> int | None:
    assert isinstance(reply.document, dict), reply
    current = [d["pid"] for d in reply.document["daemons"] if d["role"] == "current"]
    return current[0] if len(current) == 1 else None


def _one_case(
    tally: Tally, sup: SupervisorUnderTest, relative: str, how: str, breaker: Breaker
) -> None:
    label = f"{relative} {how}"
    path = sup.root / relative
    before = _current_pid(call(sup.root, "GET", "/v1/status"))
    _kill_supervisors(sup)
    good = _good_bytes(path)
    _clear(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    breaker(path, good)
    victim = path.parent / f"{path.name}.victim-target"
    victim_bytes = victim.read_bytes() if victim.exists() else None

    _start(sup)  # waits (30 s) for an answer: a start that hangs on the file fails here
    kept = _answered(tally, label, call(sup.root, "POST", "/v1/sync/ensure", {"python": PYTHON}))
    if kept.status != 200:
        tally.fail(f"{label}: ensure answered {kept.status} {kept.document}")
    elif before is not None and kept.document["daemon"]["pid"] != before:  # type: ignore[index]
        fate = "still runs" if before in daemon_pids(sup.root) else "is gone"
        tally.lost(1, f"{label}: ensure gave a new daemon; the old one {fate}")
    if relative in OPENED_BY_A_SPAWN:
        replaced = call(
            sup.root, "POST", "/v1/sync/ensure", {"python": PYTHON, "replace": True}, timeout=120
        )
        _answered(tally, f"{label}: replace", replaced)
    status = _answered(tally, label, call(sup.root, "GET", "/v1/status"))
    for target in ("/v1/doctor", "/v1/events") if relative in READ_BY_DOCTOR else ("/v1/events",):
        reply = _answered(tally, f"{label}: {target}", call(sup.root, "GET", target))
        if reply.status != 200:
            tally.fail(f"{label}: {target} answered {reply.status} {reply.document}")

    # One supervisor, one daemon, R/sync-daemon and the journal naming it (a replaced
    # daemon is retired gracefully after the answer: this waits for that to end).
    facts = settle_one_owner(tally, sup.root, label)
    current = _current_pid(status)
    if current is None or facts.daemon(current) is None:
        tally.lost(1, f"{label}: the table's current daemon is {current}: {facts.describe()}")
    if victim_bytes is not None and (not victim.exists() or victim.read_bytes() != victim_bytes):
        tally.lost(1, f"{label}: the symlink's target was written through or moved")


@pytest.mark.parametrize("relative", list(FILES))
def test_a_broken_file_never_costs_the_daemon_or_the_table(
    running: SupervisorUnderTest, relative: str, tally: Callable[[str], Tally]
) -> None:
    counted = tally(f"broken {relative}")
    counted.note(", ".join(FILES[relative]))
    for round_ in range(rounds(1)):
        for how, breaker in FILES[relative].items():
            with counted.trial(f"round {round_} {how}"):
                _one_case(counted, running, relative, how, breaker)
            # The next case starts from a usable root: what this one planted is removed if
            # the supervisor left it in place (it may have moved it aside and written anew).
            path = running.root / relative
            if _still_planted(path):
                _kill_supervisors(running)
                _clear(path)
                _start(running)


def _supervisor_folder_is_a_file(folder: Path) -> None:
    folder.write_text("not a folder\n")


def _supervisor_folder_is_a_link(folder: Path) -> None:
    elsewhere = folder.with_name("supervisor.elsewhere")
    elsewhere.mkdir(mode=0o700)
    folder.symlink_to(elsewhere)


def _supervisor_folder_of_another_uid(folder: Path) -> None:
    ids = nobody()
    assert ids is not None
    folder.mkdir(mode=0o700)
    os.chown(folder, *ids)


def _supervisor_folder_open_to_all(folder: Path) -> None:
    folder.mkdir()
    folder.chmod(0o777)


REPLACED_FOLDER: dict[str, Callable[[Path], None]] = {
    "a file": _supervisor_folder_is_a_file,
    "a symlink to another folder": _supervisor_folder_is_a_link,
    "a folder writable by all": _supervisor_folder_open_to_all,
}
if nobody() is not None:
    REPLACED_FOLDER["a folder of another uid"] = _supervisor_folder_of_another_uid


def _snapshot(path: Path) -> list[tuple[str, int, int, bytes]]:
    """Every entry under ``path`` (links not followed): name, mode, owner and bytes."""
    entries = []
    for found in sorted([path, *path.rglob("*")] if path.is_dir() else [path]):
        info = found.lstat()
        data = found.read_bytes() if stat.S_ISREG(info.st_mode) else b""
        entries.append((str(found), info.st_mode, info.st_uid, data))
    return entries


def _start_or_refusal(sup: SupervisorUnderTest) -> tuple[int | None, str]:
    """Start ``run``; (None, "") once it answers, or (exit code, stderr) when it refused."""
    # Its stderr goes to a file: a pipe nobody reads would block a supervisor that started.
    errors = sup.sandbox.base / "supervisor-start.stderr"
    with open(errors, "wb") as stderr:
        popen = subprocess.Popen(
            [*SUPERVISOR, "run", "--root", str(sup.root)],
            env=sup.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    sup._popens.append(popen)

    def decided() -> bool:
        return popen.poll() is not None or _answers(sup.root)

    eventually(decided, what="the supervisor to start or refuse", timeout=60)
    if popen.poll() is None:
        sup.remember()
        return None, ""
    return popen.returncode, errors.read_text(errors="replace")


def test_a_missing_or_replaced_supervisor_folder_never_costs_the_daemon(
    running: SupervisorUnderTest, tally: Callable[[str], Tally]
) -> None:
    folder = running.root / "supervisor"
    removed = tally("R/supervisor removed under a running supervisor")
    replaced = tally("R/supervisor replaced while no supervisor runs")
    for round_ in range(rounds(1)):
        with removed.trial(f"round {round_}"):
            status = call(running.root, "GET", "/v1/status")
            daemon = _current_pid(status)
            (first,) = supervisor_pids(running.root)
            identity = read_identity(first)
            assert identity is not None
            shutil.rmtree(folder)
            # It has lost its lock file: it must stop acting and exit, leaving its daemon.
            eventually(
                lambda gone=identity: not is_alive(gone), what="the fenced supervisor to exit"
            )
            _start(running)
            kept = _answered(
                removed,
                "after removal",
                call(running.root, "POST", "/v1/sync/ensure", {"python": PYTHON}),
            )
            if kept.status != 200 or kept.document["daemon"]["pid"] != daemon:  # type: ignore[index]
                removed.lost(1, f"round {round_}: the daemon {daemon} not kept: {kept.document}")
            settle_one_owner(removed, running.root, f"round {round_} after removal")

        for how, plant in REPLACED_FOLDER.items():
            label = f"round {round_} {how}"
            with replaced.trial(label):
                daemon = _current_pid(call(running.root, "GET", "/v1/status"))
                daemon_identity = read_identity(daemon) if daemon is not None else None
                _kill_supervisors(running)
                shutil.rmtree(folder)
                plant(folder)
                planted = _snapshot(folder)
                elsewhere = folder.with_name("supervisor.elsewhere")
                code, stderr = _start_or_refusal(running)
                if code is not None:
                    # Refused: with a sentence, not a traceback, and nothing changed.
                    if "Traceback" in stderr or not stderr.strip():
                        replaced.fail(f"{label}: refused with exit {code}: {stderr[-800:]}")
                    if _snapshot(folder) != planted:
                        replaced.lost(1, f"{label}: the refused folder was changed")
                    replaced.note(f"{how}: refused ({stderr.strip().splitlines()[-1][:160]})")
                else:
                    replaced.note(f"{how}: started")
                    if elsewhere.exists() and any(elsewhere.iterdir()):
                        replaced.lost(1, f"{label}: wrote through the link into {elsewhere}")
                if daemon_identity is None or not is_alive(daemon_identity):
                    replaced.lost(1, f"{label}: the daemon {daemon} did not survive")
                _kill_supervisors(running)
                _clear(folder)
                if elsewhere.exists():
                    shutil.rmtree(elsewhere)
                _start(running)
                settle_one_owner(replaced, running.root, f"{label}, restored")


def _heartbeats(root: Path) -> int:
    document = call(root, "GET", "/v1/status").document
    assert isinstance(document, dict)
    return int(document["supervisor"]["heartbeats"])


def test_files_broken_under_a_running_supervisor_never_cost_it_the_daemon(
    running: SupervisorUnderTest, tally: Callable[[str], Tally]
) -> None:
    """Every file broken the same way at once, while the supervisor runs: its heartbeats and
    requests meet them. It must not die, answer a 500, or lose its daemon; a restart after
    the files are put right must settle as always."""
    counted = tally("files broken under a running supervisor")
    ways = {**CONTENT, **KIND}
    for round_ in range(rounds(1)):
        for how, breaker in ways.items():
            label = f"round {round_} {how}"
            broken = [r for r, kinds in FILES.items() if how in kinds]
            originals: dict[str, bytes | None] = {}
            with counted.trial(label):
                status = call(running.root, "GET", "/v1/status")
                daemon = _current_pid(status)
                assert daemon is not None, status
                (pid,) = supervisor_pids(running.root)
                supervisor = read_identity(pid)
                daemon_identity = read_identity(daemon)
                assert supervisor is not None
                assert daemon_identity is not None
                for relative in broken:
                    path = running.root / relative
                    originals[relative] = _regular_bytes(path)
                    good = _good_bytes(path)
                    _clear(path)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    breaker(path, good)
                # Two heartbeats meet the broken files (the first may have begun before).
                seen = _heartbeats(running.root)
                eventually(
                    lambda s=seen: _heartbeats(running.root) >= s + 2,
                    what="two heartbeats over the broken files",
                )
                kept = call(running.root, "POST", "/v1/sync/ensure", {"python": PYTHON})
                _answered(counted, f"{label}: ensure", kept)
                counted.note(f"{how}: ensure answered {kept.status} {kept.error_code or ''}")
                if kept.status == 200 and kept.document["daemon"]["pid"] != daemon:  # type: ignore[index]
                    counted.lost(1, f"{label}: ensure gave another daemon: {kept.document}")
                for target in ("/v1/status", "/v1/events"):
                    _answered(counted, f"{label}: {target}", call(running.root, "GET", target))
                if _current_pid(call(running.root, "GET", "/v1/status")) != daemon:
                    counted.lost(1, f"{label}: the table no longer holds {daemon} as current")
                if not is_alive(supervisor):
                    counted.fail(f"{label}: the supervisor {pid} died")
                if not is_alive(daemon_identity):
                    counted.lost(1, f"{label}: the daemon {daemon} is gone")
            # Put the files back as they were, then restart.
            _kill_supervisors(running)
            for relative, original in originals.items():
                path = running.root / relative
                _clear(path)
                if original is not None:
                    path.write_bytes(original)
                    path.chmod(0o600)
            _start(running)
            settle_one_owner(counted, running.root, f"{label}, put right")
