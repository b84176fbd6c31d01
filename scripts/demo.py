"""``make demo``: the main job, end to end, on real spec-kitty daemons, in a sandbox.

1. where the real spec-kitty-cli releases from PyPI are (``$SPEC_KITTY_VENVS``);
2. a throwaway HOME whose root gets 18 real orphan daemons (3.2.2, 3.2.3, 3.2.4), the mess
   found on a real machine;
3. what the upstream ``spec-kitty auth doctor --json`` (3.2.7) sees there;
4. ``spec-kitty-supervisor doctor``, when this version has it;
5. ``spec-kitty-supervisor ensure`` three times: auto-start (and adoption of what
   ``R/sync-daemon`` names), reuse, and a make-before-break upgrade to 3.2.7;
6. spec-kitty itself, integrated: ``integrate`` into a throwaway copy of the 3.2.7 venv, whose
   own ``ensure_sync_daemon_running`` then gets the supervisor's daemon, and its own
   ``spec-kitty auth doctor`` shows the supervisor's daemon and orphans; ``integrate --remove``;
7. ``status``, ``events`` (and ``doctor`` again);
8. the sync daemons of the sandbox root still alive;
9. ``stop --children``, then every orphan still alive stopped by pid, and the sandbox removed.

Every command is the real CLI, run as a subprocess, so what is printed is what a user sees.
Nothing outside the sandbox is touched: the real ``~/.spec-kitty`` never appears. Every
process the demo started is stopped by pid (its identity re-checked first) in a ``finally``,
on success, failure, Ctrl-C or SIGTERM. Exits 0 when every step did what it should, 1 when one
failed, 130 when interrupted.

Run it from the repository root as a module, ``python -m scripts.demo`` (which ``make demo``
does), so that the harness package ``sks_harness`` is importable.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import psutil

from sks_harness import (
    DEFAULT_ORPHAN_VERSIONS,
    KNOWN_VERSIONS,
    DaemonFleet,
    HarnessError,
    PortRange,
    ProcessIdentity,
    RealDaemon,
    Sandbox,
    is_alive,
    make_orphans,
    parse_daemon_argv,
    read_identity,
    read_state_file,
    run_upstream_cli,
    signal_if_same,
    spec_kitty_python,
    throwaway_venv,
    venvs_dir,
)

ORPHAN_COUNT = 18
ORPHAN_PORTS = PortRange(9400, 9425)
SUPERVISOR_PORTS = "9425-9450"
UPGRADE_VERSION = "3.2.7"
BASE_VERSION = "3.2.4"
CLI_TIMEOUT = 120.0


class DemoFailed(RuntimeError):
    """A step did not do what it should; the message says which and how."""


# --------------------------------------------------------------------------------------------
# Printing


def section(number: int, title: str) -> None:
    print(f"\n=== {number}. {title} " + "=" * max(3, 84 - len(title)), flush=True)


def note(text: str) -> None:
    print(f"  {text}", flush=True)


def indented(text: str, prefix: str = "    ") -> None:
    for line in text.rstrip("\n").splitlines():
        print(prefix + line)
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# The supervisor's real command line, run in the sandbox


class Cli:
    """``spec-kitty-supervisor`` from this venv, with the sandbox's HOME and environment."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        script = Path(sys.executable).parent / "spec-kitty-supervisor"
        self.command = (
            [str(script)] if script.exists() else [sys.executable, "-m", "spec_kitty_supervisor"]
        )
        self.env = sandbox.env(
            {
                "SPEC_KITTY_SUPERVISOR_PORT_RANGE": SUPERVISOR_PORTS,
                # As a spec-kitty CLI that needs a daemon runs: the daemon's sync service on.
                "SPEC_KITTY_ENABLE_SAAS_SYNC": "1",
            }
        )
        self.subcommands = self._subcommands()

    def _subcommands(self) -> set[str]:
        done = subprocess.run(
            [*self.command, "--help"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        return set(re.findall(r"^ {4}(\w[\w-]*) ", done.stdout, flags=re.MULTILINE))

    def has(self, subcommand: str) -> bool:
        return subcommand in self.subcommands

    def shown(self, args: Sequence[str]) -> str:
        text = " ".join(["spec-kitty-supervisor", *args])
        return text.replace(str(self.sandbox.home), "$HOME").replace(
            str(venvs_dir()), "$SPEC_KITTY_VENVS"
        )

    def run(
        self, *args: str, ok: Sequence[int] = (0,), echo: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a subcommand; print the command and its real output; DemoFailed on a bad exit."""
        if echo:
            print(f"  $ {self.shown(args)}", flush=True)
        began = time.monotonic()
        done = subprocess.run(
            [*self.command, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.sandbox.home,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        elapsed = time.monotonic() - began
        if echo:
            indented(done.stdout)
            indented(done.stderr, "    ! ")
            note(f"(exit {done.returncode}, {elapsed:.2f} s)")
        if done.returncode not in ok:
            if not echo:
                indented(done.stdout + done.stderr)
            raise DemoFailed(
                f"`{self.shown(args)}` exited with {done.returncode} (expected {list(ok)})"
            )
        return done

    def json(self, *args: str, ok: Sequence[int] = (0,)) -> Any:
        done = self.run(*args, "--json", ok=ok, echo=False)
        try:
            return json.loads(done.stdout)
        except ValueError:
            raise DemoFailed(
                f"`{self.shown(args)} --json` printed no JSON: {done.stdout!r}"
            ) from None


# --------------------------------------------------------------------------------------------
# Processes, by pid and proven identity only


def _wait_gone(identity: ProcessIdentity, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_alive(identity):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def supervisor_of(root: Path) -> ProcessIdentity | None:
    """The live supervisor of ``root``: the pid in its lock file, proven by its command line."""
    try:
        pid = int((root / "supervisor" / "supervisor.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    identity = read_identity(pid)
    if identity is None or identity.uid != os.getuid():
        return None
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    is_supervisor = "run" in argv and any(
        "spec_kitty_supervisor" in a or "spec-kitty-supervisor" in a for a in argv
    )
    if not is_supervisor or str(root) not in argv:
        return None
    return identity if identity.same_process(read_identity(pid)) else None


def stop_supervisor_by_pid(identity: ProcessIdentity) -> None:
    """SIGTERM (it exits and leaves its daemons, which the fleet then stops), then SIGKILL."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not signal_if_same(identity, signum) or _wait_gone(identity, 10.0):
            return


def daemons_of(root: Path) -> list[tuple[int, int | None, str | None]]:
    """Live sync daemons whose argv has the spawn shape and this root's marker: (pid, port, exe)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "uids"]):
        argv = process.info["cmdline"]
        if not argv or process.info["uids"] is None or process.info["uids"].real != os.getuid():
            continue
        shape = parse_daemon_argv(argv)
        alive = read_identity(process.info["pid"]) is not None  # zombies are dead
        if shape is not None and shape.root == str(root) and alive:
            found.append((int(process.info["pid"]), shape.port, argv[0]))
    return sorted(found, key=lambda item: item[1] or 0)


def version_from_executable(executable: str | None) -> str:
    match = re.search(r"spec-kitty-(\d[\w.]*)/bin/", executable or "")
    return match.group(1) if match else "?"


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C (or a SIGTERM) must not leave processes behind."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------
# The steps


def step_venvs() -> None:
    section(1, "The real spec-kitty-cli releases from PyPI")
    note(f"SPEC_KITTY_VENVS = {venvs_dir()}  (installed by scripts/spec-kitty-venvs.sh)")
    for version in KNOWN_VERSIONS:
        note(f"spec-kitty-cli {version:<6} {spec_kitty_python(version)}")


def step_orphans(fleet: DaemonFleet, sandbox: Sandbox) -> list[RealDaemon]:
    section(2, f"A mess of {ORPHAN_COUNT} real orphan sync daemons in a sandbox")
    note(f"sandbox HOME = {sandbox.home}")
    note(f"daemon root  = {sandbox.root}  (the real ~/.spec-kitty is never touched)")
    began = time.monotonic()
    orphans = anyio.run(
        lambda: make_orphans(
            sandbox,
            count=ORPHAN_COUNT,
            versions=DEFAULT_ORPHAN_VERSIONS,
            ports=ORPHAN_PORTS,
            fleet=fleet,
        )
    )
    elapsed = time.monotonic() - began
    by_version = collections.Counter(orphan.version for orphan in orphans)
    ports = sorted(orphan.port for orphan in orphans)
    note(
        f"{len(orphans)} daemons healthy in {elapsed:.1f} s on ports {ports[0]}-{ports[-1]}, "
        "started the way upstream CLIs start them, sync on, no supervisor: "
        + ", ".join(f"{count} x {version}" for version, count in sorted(by_version.items()))
    )
    state = read_state_file(sandbox.root)
    if state is not None:
        note(f"R/sync-daemon names the last one: pid {state.pid} on port {state.port}")
    return orphans


def step_upstream_doctor(sandbox: Sandbox) -> None:
    section(3, f"What upstream sees: spec-kitty {UPGRADE_VERSION} auth doctor --json")
    print(f"  $ spec-kitty auth doctor --json   (spec-kitty-cli {UPGRADE_VERSION}, HOME=$HOME)")
    began = time.monotonic()
    done = run_upstream_cli(sandbox, UPGRADE_VERSION, ["auth", "doctor", "--json"])
    elapsed = time.monotonic() - began
    start = done.stdout.find("{")
    try:
        report = json.loads(done.stdout[start:]) if start >= 0 else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        indented(done.stdout + done.stderr)
        raise DemoFailed(f"upstream auth doctor printed no JSON (exit {done.returncode})")
    orphans = report.get("orphans") or []
    by_class: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for orphan in orphans:
        by_class[str(orphan.get("cleanup_class"))][str(orphan.get("skip_reason") or "")] += 1
    parts = []
    for cleanup_class, reasons in sorted(by_class.items(), key=lambda item: -item[1].total()):
        named = ", ".join(f"{n} {r}" for r, n in reasons.most_common() if r)
        parts.append(f"{reasons.total()} {cleanup_class}" + (f" ({named})" if named else ""))
    login = " (nobody is logged in)" if done.returncode == 1 else ""
    note(
        f"upstream sees {len(orphans)} orphans: {', '.join(parts) or 'none'}; "
        f"{elapsed:.1f} s, exit {done.returncode}{login}"
    )


def step_doctor(cli: Cli, number: int, title: str) -> None:
    section(number, title)
    if not cli.has("doctor"):
        note("doctor: not available yet (`spec-kitty-supervisor --help` does not list it)")
        return
    # 0: nothing needs action; 1: something does (the orphans); 2: doctor itself failed.
    cli.run("doctor", "--root", str(cli.sandbox.root), ok=(0, 1))


def step_ensure(cli: Cli) -> None:
    section(5, "ensure: the supervisor starts itself and owns the root's daemon")
    root = str(cli.sandbox.root)
    base = str(spec_kitty_python(BASE_VERSION))
    upgrade = str(spec_kitty_python(UPGRADE_VERSION))
    actions = []
    for python, expected in (
        (base, {"spawned", "adopted", "reused"}),
        (base, {"reused"}),
        (upgrade, {"upgraded"}),
    ):
        done = cli.run("ensure", "--root", root, "--python", python)
        action = done.stdout.split(":", 1)[0].strip()
        actions.append(action)
        if action not in expected:
            raise DemoFailed(f"ensure answered {action!r}, expected one of {sorted(expected)}")
    status = cli.json("status", "--root", root)
    supervisor = status.get("supervisor") or {}
    note(
        f"supervisor pid {supervisor.get('pid')} (auto-started: {supervisor.get('auto_started')}); "
        f"actions: {' -> '.join(actions)}"
    )
    current = [d for d in status["daemons"] if d["role"] == "current"]
    if len(current) != 1 or current[0]["package_version"] != UPGRADE_VERSION:
        raise DemoFailed(
            f"after the upgrade the current daemon should be {UPGRADE_VERSION}: {current}"
        )


SPEC_KITTY_DRIVER = """\
from specify_cli.sync.daemon import DaemonIntent, ensure_sync_daemon_running
print(ensure_sync_daemon_running(intent=DaemonIntent.REMOTE_REQUIRED))
"""


def step_integration(cli: Cli) -> None:
    section(6, f"spec-kitty {UPGRADE_VERSION} itself, integrated, asks for its daemon")
    sandbox = cli.sandbox
    if not cli.has("integrate"):
        note("integrate: not available yet (`spec-kitty-supervisor --help` does not list it)")
        return
    venv = throwaway_venv(UPGRADE_VERSION, sandbox.base, "spec-kitty-venv")
    python = str(venv / "bin" / "python")
    note(f"a throwaway copy of the {UPGRADE_VERSION} venv: {venv} (the shared one is untouched)")
    cli.run("integrate", "--python", python)
    driver = sandbox.base / "bin" / "spec-kitty"
    driver.parent.mkdir()
    driver.write_text(f"#!{python}\n{SPEC_KITTY_DRIVER}")
    driver.chmod(0o755)
    print("  $ spec-kitty ...   (its own ensure_sync_daemon_running(intent=REMOTE_REQUIRED))")
    done = subprocess.run(
        [str(driver)],
        capture_output=True,
        text=True,
        env=cli.env,
        cwd=sandbox.home,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    indented(done.stdout + done.stderr)
    current = [
        d
        for d in cli.json("status", "--root", str(sandbox.root))["daemons"]
        if d["role"] == "current"
    ]
    match = re.search(r"started=True, skipped_reason=None, pid=(\d+)", done.stdout)
    if (
        done.returncode != 0
        or match is None
        or [int(match.group(1))] != [d["pid"] for d in current]
    ):
        raise DemoFailed(f"the integrated spec-kitty did not get the supervisor's daemon {current}")
    note(f"spec-kitty's own call answered with the supervisor's daemon, pid {current[0]['pid']}")
    step_integrated_auth_doctor(cli, venv / "bin" / "spec-kitty", current[0])
    cli.run("integrate", "--remove", "--python", python)


def step_integrated_auth_doctor(cli: Cli, spec_kitty: Path, current: dict[str, Any]) -> None:
    """The command users know, integrated: its sync part is the supervisor's view.

    Its daemon section is the supervisor's current daemon as the supervisor holds it (the
    hook wraps ``_read_daemon_summary``), its orphans are the supervisor's classification.
    """

    def auth_doctor(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(spec_kitty), "auth", "doctor", *flags],
            capture_output=True,
            text=True,
            env=cli.env,
            cwd=cli.sandbox.home,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    print("  $ spec-kitty auth doctor   (integrated: daemon and orphans are the supervisor's)")
    shown = auth_doctor()
    indented(shown.stdout + shown.stderr)
    as_json = auth_doctor("--json")
    try:
        report = json.loads(as_json.stdout)
    except ValueError:
        raise DemoFailed(f"auth doctor --json printed no JSON: {as_json.stderr}") from None
    own = cli.json("doctor", "--root", str(cli.sandbox.root), ok=(0, 1))
    daemon = report.get("daemon") or {}
    shown_daemon = [daemon.get(key) for key in ("pid", "port", "package_version", "active")]
    supervisors = [current["pid"], current["port"], current["package_version"], True]
    ours = sorted(entry["port"] for entry in own["orphans"])
    theirs = sorted(entry["port"] for entry in report.get("orphans") or [])
    if shown_daemon != supervisors or theirs != ours:
        raise DemoFailed(
            f"the integrated auth doctor shows daemon {shown_daemon} and orphans {theirs}; "
            f"the supervisor has daemon {supervisors} and orphans {ours}"
        )
    note(
        f"auth doctor shows the supervisor's current daemon (pid {current['pid']}, port "
        f"{current['port']}, {current['package_version']}, healthy) and its {len(ours)} "
        "orphan(s) left after its start-up sweep (step 3: upstream's own view)"
    )


def step_inspect(cli: Cli) -> None:
    section(7, "status, events" + (" and doctor" if cli.has("doctor") else ""))
    root = str(cli.sandbox.root)
    cli.run("status", "--root", root)
    cli.run("events", "--root", root)
    if cli.has("doctor"):
        cli.run("doctor", "--root", root, ok=(0, 1))


def step_count(sandbox: Sandbox, orphans: list[RealDaemon], cli: Cli) -> None:
    section(8, "Sync daemons of the sandbox root still alive")
    status = cli.json("status", "--root", str(sandbox.root))
    supervised = {d["pid"]: d for d in status["daemons"]}
    orphan_versions = {o.pid: o.version for o in orphans}
    alive = daemons_of(sandbox.root)
    kinds: collections.Counter[str] = collections.Counter()
    for pid, port, executable in alive:
        if pid in supervised:
            kind = f"supervised ({supervised[pid]['role']})"
            version = supervised[pid]["package_version"]
        else:
            kind = "orphan"
            version = orphan_versions.get(pid) or version_from_executable(executable)
        kinds["supervised" if pid in supervised else "orphan"] += 1
        note(f"pid {pid:>7}  port {port}  spec-kitty {version:<6} {kind}")
    events = cli.json("events", "--root", str(sandbox.root))["events"]
    ledger = collections.Counter(event["kind"] for event in events)
    note(
        f"{len(alive)} alive ({len(orphans)} orphans were started): "
        f"{kinds['supervised']} supervised, {kinds['orphan']} orphans"
    )
    note("the supervisor's ledger: " + ", ".join(f"{n} {k}" for k, n in ledger.most_common()))


def step_stop(cli: Cli, fleet: DaemonFleet, sandbox: Sandbox) -> None:
    section(9, "Stop everything the demo started")
    supervisor = supervisor_of(sandbox.root)
    cli.run("stop", "--children", "--root", str(sandbox.root))
    if supervisor is not None and not _wait_gone(supervisor, 15.0):
        raise DemoFailed(f"supervisor pid {supervisor.pid} is still alive after `stop`")
    began = time.monotonic()
    outcomes = fleet.stop_all()
    how = collections.Counter(str(outcome) for outcome in outcomes.values())
    note(
        f"stopped {len(outcomes)} remaining daemons by pid in {time.monotonic() - began:.1f} s: "
        + (", ".join(f"{n} by {way}" for way, n in how.most_common()) or "none")
    )
    left = daemons_of(sandbox.root)
    if left:
        raise DemoFailed(f"sync daemons of the sandbox still alive: {[pid for pid, _, _ in left]}")
    note("no sync daemon and no supervisor of the sandbox root is alive")


# --------------------------------------------------------------------------------------------


def cleanup(fleet: DaemonFleet, sandbox: Sandbox | None, cli: Cli | None) -> None:
    """Stop whatever is still alive, by pid, then remove the sandbox. Never raises."""
    if sandbox is not None:
        supervisor = supervisor_of(sandbox.root)
        if supervisor is not None and cli is not None:
            with contextlib.suppress(Exception):
                cli.run("stop", "--children", "--root", str(sandbox.root), ok=(0, 1, 3), echo=False)
            _wait_gone(supervisor, 10.0)
        supervisor = supervisor_of(sandbox.root)
        if supervisor is not None:
            stop_supervisor_by_pid(supervisor)
    try:
        fleet.__exit__(None, None, None)  # stops every daemon still alive, removes the sandbox
    except Exception as exc:
        print(f"demo: cleanup could not stop everything: {exc}", file=sys.stderr)


def show_logs(sandbox: Sandbox | None) -> None:
    if sandbox is None:
        return
    for path in (
        sandbox.root / "supervisor" / "supervisor.log",
        sandbox.root / "supervisor" / "autostart.stderr",
    ):
        with contextlib.suppress(OSError):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            if lines:
                print(f"--- {path.name} (last lines) ---", file=sys.stderr)
                print("\n".join(lines), file=sys.stderr)


def main() -> int:
    # The orphans are real daemons in their own sessions; the fleet reaps them, not Popen.
    warnings.filterwarnings("ignore", r"subprocess \d+ is still running", ResourceWarning)
    signal.signal(signal.SIGTERM, _terminate)
    began = time.monotonic()
    fleet = DaemonFleet(port_range=ORPHAN_PORTS)
    sandbox: Sandbox | None = None
    cli: Cli | None = None
    status = 1
    try:
        step_venvs()
        sandbox = fleet.sandbox()
        cli = Cli(sandbox)
        orphans = step_orphans(fleet, sandbox)
        step_upstream_doctor(sandbox)
        step_doctor(cli, 4, "spec-kitty-supervisor doctor (before any supervisor runs)")
        step_ensure(cli)
        step_integration(cli)
        step_inspect(cli)
        step_count(sandbox, orphans, cli)
        step_stop(cli, fleet, sandbox)
        status = 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted; stopping everything it started", file=sys.stderr)
        status = 130
    except (DemoFailed, HarnessError, subprocess.TimeoutExpired) as exc:
        print(f"\ndemo: FAILED: {exc}", file=sys.stderr)
        show_logs(sandbox)
    finally:
        with uninterruptible():
            cleanup(fleet, sandbox, cli)
    if status == 0:
        print(f"\ndemo: ok in {time.monotonic() - began:.1f} s; the sandbox is removed")
    return status


if __name__ == "__main__":
    sys.exit(main())
