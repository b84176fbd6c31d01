"""The one classification engine: is this listener ours to clean up, and why (not)?

Pure decisions over facts gathered elsewhere (``_discovery``): no process, socket, file or
clock is touched here, so every combination of facts can be tested without processes.

Pure: standard library and other pure modules only, no I/O (a wall: tests/unit/test_walls.py).

The identity contract
---------------------
* **Family boundary.** Only ports in the sync family ``[9400, 9450)`` are ever candidates;
  the dashboard family ``[9237, 9337)`` belongs to another cleanup and is never probed here.
* **Kill authority is the root marker.** A daemon is this root's when its argv has the
  production spawn shape *and* carries ``--spec-kitty-daemon-root=<this root>``. The owner
  record (``owner.json``, the health ``owner`` block) is reporting data, never authority by
  itself.
* **The self-report must provably come from the listener**, with one proof per health shape
  (:func:`prove_self_report`, shared with re-adoption and signalling):

  - 3.2.4+ (health has ``daemon_family``): the ``owner`` block is the daemon's own, so its
    ``pid``/``port`` must equal the listener's (``identity_source="owner_block"``);
  - 3.2.2/3.2.3: the ``owner`` block is read from a shared file and may describe another
    daemon, so instead the port and token in the listener's own argv must equal the
    listening port and the health answer's ``token`` (``identity_source="argv_token"``).

* **Daemons without the marker (3.1.x) are proven this root's by the kernel, never by their
  word** (:func:`prove_root_by_kernel`): their standard output (``/proc/PID/fd/1``) is the same
  file, by ``(st_dev, st_ino)``, as ``R/sync-daemon.log``, and the ``HOME`` of their environment
  is, as a directory, the parent of R (a 3.1 daemon's root is always ``$HOME/.spec-kitty``).
  Both facts come from the kernel; where it does not give them (macOS), such a daemon stays
  ``operator_required``. The self-report proof (``argv_token``) still applies.

* **Version or interpreter mismatch is staleness evidence, never a reason to skip.**

Classes
-------
``supervised``
    In the supervisor's own table; cleanup never touches it, only the lifecycle does.
``safe_auto``
    Proven this root's, responsive, not the current daemon: any sweep may stop it.
``operator_required``
    Looks like a sync daemon but cannot be proven ours: only ``reset --force`` or a
    confirmation of its pid acts on it.
``never_touch``
    Not ours to signal, by any command.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, TypeVar

from spec_kitty_supervisor_client._terms import (
    FAMILY_PORT_RANGE,
    CleanupClass,
    family_sub_range_error,
    in_family_range,
)

from ._daemon_shape import CmdlineFacts
from ._health import HealthAnswer

__all__ = [
    "DASHBOARD_PORT_RANGE",
    "Classification",
    "FileId",
    "IdentitySource",
    "KernelRootFacts",
    "KernelRootProof",
    "ListenerFacts",
    "RecordedSingleton",
    "RootFiles",
    "SelfReportProof",
    "SkipReason",
    "SupervisedDaemon",
    "SupervisorFacts",
    "classify",
    "port_boundary_reason",
    "prove_root_by_kernel",
    "prove_self_report",
    "records_to_sweep",
]

#: The dashboard family's ports, half-open. Its own cleanup owns them; ours never probes them.
DASHBOARD_PORT_RANGE = (9237, 9337)

SkipReason = Literal[
    "out_of_range",
    "dashboard_range",
    "other_user",
    "supervised",
    "not_spec_kitty",
    "third_party",
    "is_recorded_singleton",
    "missing_pid",
    "pre_marker",
    "cross_root",
    "unresponsive",
    "pid_port_mismatch",
    "token_mismatch",
]

#: How a listener's identity was established (or, with a failed proof, attempted).
IdentitySource = Literal[
    "supervisor_table", "owner_block", "argv_token", "root_marker", "kernel_root"
]

#: A file as the kernel names it, ``(st_dev, st_ino)``: two paths are one file when these agree.
FileId = tuple[int, int]


# --------------------------------------------------------------------------------------------
# Facts


class ListenerFacts(NamedTuple):
    """Everything observed about one listening socket and the process holding it."""

    port: int
    pid: int | None  # None: the kernel's socket table did not say
    uid: int | None
    process_start: str | None  # ProcessIdentity.start; None when the process could not be read
    cmdline: CmdlineFacts | None  # None when the argv could not be read
    health: HealthAnswer | None  # None: did not answer ``GET /api/health`` in time
    #: Read only for spawn-shaped processes without a root marker; None: not read or unreadable.
    kernel_root: KernelRootFacts | None = None


class KernelRootFacts(NamedTuple):
    """What the kernel says about a process, to prove a root its argv does not name."""

    stdout_file: FileId | None  # the file ``/proc/PID/fd/1`` is open on
    home_dir: FileId | None  # the directory ``HOME`` names in ``/proc/PID/environ``


class RootFiles(NamedTuple):
    """The supervisor's root as files, to compare with :class:`KernelRootFacts`."""

    daemon_log: FileId | None  # ``R/sync-daemon.log``; None when it does not exist
    #: R's parent directory when R is named ``.spec-kitty`` (the only root a 3.1 daemon has),
    #: else None: no markerless daemon can belong to such a root.
    home_dir: FileId | None


class SupervisedDaemon(NamedTuple):
    """One row of the supervisor's own table: the daemon it spawned or adopted."""

    pid: int
    port: int
    process_start: str


class RecordedSingleton(NamedTuple):
    """The daemon ``R/sync-daemon`` names, as upstream CLIs will reuse (or SIGKILL) it."""

    pid: int
    port: int


@dataclass(frozen=True)
class SupervisorFacts:
    """Who is asking: the root, its user, its table and what the state file records."""

    daemon_root: str  # resolved
    uid: int
    supervised: frozenset[SupervisedDaemon] = frozenset()
    recorded_singleton: RecordedSingleton | None = None
    supervisor_running: bool = False
    family_range: tuple[int, int] = FAMILY_PORT_RANGE
    dashboard_range: tuple[int, int] = DASHBOARD_PORT_RANGE
    #: The current daemon's version and interpreter, only to name staleness in ``why``.
    current_package_version: str | None = None
    current_python: str | None = None
    #: This root as files, for the kernel's proof of markerless daemons; None: not read.
    root_files: RootFiles | None = None

    def __post_init__(self) -> None:
        # The family boundary is a hard invariant, not a setting: a wider range here would
        # let cleanup reach ports no sync daemon ever uses.
        error = family_sub_range_error(*self.family_range)
        if error is not None:
            raise ValueError(f"family_range: {error}")


# --------------------------------------------------------------------------------------------
# Identity proof, one function per health shape


class SelfReportProof(NamedTuple):
    """Whether a health answer provably came from the process listening on the port."""

    identity_source: Literal["owner_block", "argv_token"]
    matches: bool
    detail: str  # one clause for ``why``

    @property
    def mismatch_reason(self) -> SkipReason:
        return "pid_port_mismatch" if self.identity_source == "owner_block" else "token_mismatch"


def prove_self_report(
    health: HealthAnswer, *, pid: int, port: int, cmdline: CmdlineFacts | None
) -> SelfReportProof:
    """Prove that ``health`` was answered by process ``pid`` listening on ``port``.

    The proof depends on the daemon's health shape; re-adoption and signalling call this
    same function, so "proven ours" means one thing everywhere::

        proof = prove_self_report(health, pid=5612, port=9401, cmdline=facts)
        if proof.matches: ...
    """
    if health.daemon_family is not None:
        return _prove_by_owner_block(health, pid=pid, port=port)
    return _prove_by_argv_token(health, port=port, cmdline=cmdline)


def _prove_by_owner_block(health: HealthAnswer, *, pid: int, port: int) -> SelfReportProof:
    # From 3.2.4 the daemon fills ``owner`` from its own memory, so it cannot describe
    # another process.
    owner = health.owner or {}
    owner_pid = _int_or_none(owner.get("pid"))
    owner_port = _int_or_none(owner.get("port"))
    if owner_pid == pid and owner_port == port:
        return SelfReportProof("owner_block", True, f"its owner block names pid {pid}, port {port}")
    return SelfReportProof(
        "owner_block",
        False,
        f"its owner block names pid {owner_pid}, port {owner_port} "
        f"but pid {pid} listens on port {port}",
    )


def _prove_by_argv_token(
    health: HealthAnswer, *, port: int, cmdline: CmdlineFacts | None
) -> SelfReportProof:
    # Before 3.2.4 the ``owner`` block comes from a shared owner.json and may describe the
    # last daemon that wrote it. The token, though, is random per daemon and sits both in
    # the listener's own argv and in the health answer, so matching both ties the answer
    # to this process.
    argv_port = cmdline.argv_port if cmdline is not None else None
    argv_token = cmdline.argv_token if cmdline is not None else None
    if argv_port != port:
        return SelfReportProof(
            "argv_token", False, f"its argv names port {argv_port}, but it listens on {port}"
        )
    if argv_token is None or health.token != argv_token:
        return SelfReportProof(
            "argv_token", False, "the token its health answer gives is not the one in its argv"
        )
    return SelfReportProof(
        "argv_token", True, "the port and token in its argv match its listener and health answer"
    )


def _int_or_none(value: object) -> int | None:
    # bool is an int subclass; ``true`` in JSON is not a pid.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class KernelRootProof(NamedTuple):
    """Whether the kernel's facts tie a markerless daemon to this root."""

    matches: bool
    detail: str  # one clause for ``why``


def prove_root_by_kernel(
    kernel: KernelRootFacts | None, root_files: RootFiles | None
) -> KernelRootProof:
    """Prove that a daemon without a root marker serves this root, from files, not words.

    A 3.1 daemon's root is ``$HOME/.spec-kitty`` and its output goes to that root's
    ``sync-daemon.log``; both are compared as files (device and inode), so no spelling of a
    path, symlink or bind mount can make another HOME's daemon look like this root's::

        proof = prove_root_by_kernel(listener.kernel_root, supervisor.root_files)
    """
    if kernel is None or root_files is None:
        return KernelRootProof(False, "the kernel's facts about its root could not be read")
    if root_files.home_dir is None:
        return KernelRootProof(
            False, "this root is no $HOME/.spec-kitty, the only root a daemon without marker has"
        )
    if kernel.home_dir is None or kernel.home_dir != root_files.home_dir:
        return KernelRootProof(False, "its HOME is not the directory holding this root")
    if root_files.daemon_log is None or kernel.stdout_file != root_files.daemon_log:
        return KernelRootProof(False, "its output is not this root's sync-daemon.log")
    return KernelRootProof(
        True, "the kernel shows its HOME holds this root and its output is R/sync-daemon.log"
    )


# --------------------------------------------------------------------------------------------
# The decision table


class _Verdict(NamedTuple):
    cleanup_class: CleanupClass
    skip_reason: SkipReason | None
    why: str


class _Evidence(NamedTuple):
    """Facts derived once per listener, shared by every row."""

    listener: ListenerFacts
    supervisor: SupervisorFacts
    spawn_shape_ok: bool
    root_marker: str | None
    is_recorded_singleton: bool
    is_supervised: bool
    proof: SelfReportProof | None  # None when there was no health answer or no pid
    kernel_proof: KernelRootProof | None  # only for spawn-shaped listeners without a marker


_Row = Callable[[_Evidence], _Verdict | None]


def port_boundary_reason(port: int, supervisor: SupervisorFacts) -> SkipReason | None:
    """``dashboard_range``/``out_of_range`` for a port sync cleanup must not probe, else None."""
    dashboard_low, dashboard_high = supervisor.dashboard_range
    if dashboard_low <= port < dashboard_high:
        return "dashboard_range"
    low, high = supervisor.family_range
    if not low <= port < high:
        return "out_of_range"
    return None


def _row_family_boundary(e: _Evidence) -> _Verdict | None:
    reason = port_boundary_reason(e.listener.port, e.supervisor)
    if reason == "dashboard_range":
        return _Verdict("never_touch", reason, "port is in the dashboard range, not sync's")
    if reason == "out_of_range":
        low, high = e.supervisor.family_range
        return _Verdict("never_touch", reason, f"port is outside the sync range [{low}, {high})")
    return None


def _row_other_user(e: _Evidence) -> _Verdict | None:
    uid = e.listener.uid
    if uid is not None and uid != e.supervisor.uid:
        return _Verdict("never_touch", "other_user", f"it belongs to another user (uid {uid})")
    return None


def _row_supervised(e: _Evidence) -> _Verdict | None:
    if e.is_supervised:
        return _Verdict(
            "supervised",
            "supervised",
            "it is this supervisor's own daemon; only its lifecycle acts",
        )
    return None


def _row_no_spawn_shape(e: _Evidence) -> _Verdict | None:
    if e.spawn_shape_ok:
        return None
    health = e.listener.health
    speaks_sync = health is not None and health.looks_like_spec_kitty
    if e.listener.pid is None and speaks_sync:
        # Without a pid there is no argv to look at; a listener that speaks the daemon
        # protocol is then a missing-pid case (row 4), not a stranger.
        return None
    if speaks_sync:
        # Row 2b: the protocol alone is no authority; anything can answer it.
        return _Verdict(
            "never_touch", "third_party", "it answers like a sync daemon but was not spawned as one"
        )
    return _Verdict(
        "never_touch", "not_spec_kitty", "neither its argv nor its health answer is spec-kitty's"
    )


def _row_recorded_singleton(e: _Evidence) -> _Verdict | None:
    # With a supervisor running, the recorded daemon is its own (``supervised``, above) or
    # one an old CLI put there, which the lifecycle adopts or retires: only without a
    # supervisor is the recorded singleton the live daemon that cleanup must spare.
    if e.is_recorded_singleton and not e.supervisor.supervisor_running:
        return _Verdict(
            "never_touch", "is_recorded_singleton", "R/sync-daemon records it as the live daemon"
        )
    return None


def _row_missing_pid(e: _Evidence) -> _Verdict | None:
    if e.listener.pid is None:
        return _Verdict(
            "operator_required", "missing_pid", "the socket table does not say which pid listens"
        )
    if e.listener.process_start is None or e.listener.uid is None:
        # A signal must re-check pid, start and uid at signal time; with nothing read to
        # compare against, this pid cannot be proven to be the listener we saw.
        return _Verdict(
            "operator_required",
            "missing_pid",
            f"pid {e.listener.pid} could not be read (it may have exited)",
        )
    return None


def _row_pre_marker(e: _Evidence) -> _Verdict | None:
    if e.root_marker is not None:
        return None
    if e.kernel_proof is not None and e.kernel_proof.matches:
        return None  # the root is proven from the kernel; the self-report rows still apply
    detail = f" and {e.kernel_proof.detail}" if e.kernel_proof is not None else ""
    return _Verdict(
        "operator_required", "pre_marker", f"its argv carries no daemon-root marker{detail}"
    )


def _row_cross_root(e: _Evidence) -> _Verdict | None:
    if e.root_marker is not None and not _same_root(e.root_marker, e.supervisor.daemon_root):
        return _Verdict(
            "operator_required", "cross_root", f"it belongs to another root ({e.root_marker})"
        )
    return None


def _row_unresponsive(e: _Evidence) -> _Verdict | None:
    if e.listener.health is None:
        return _Verdict(
            "operator_required", "unresponsive", "it did not answer /api/health in time"
        )
    return None


def _row_unproven_self_report(e: _Evidence) -> _Verdict | None:
    if e.proof is not None and not e.proof.matches:
        return _Verdict("operator_required", e.proof.mismatch_reason, e.proof.detail)
    return None


def _row_safe_auto(e: _Evidence) -> _Verdict | None:
    # Rows 4 and 7 guarantee a proof exists here.
    assert e.proof is not None
    root = ""
    if e.root_marker is None and e.kernel_proof is not None:
        root = f"; {e.kernel_proof.detail}"
    return _Verdict(
        "safe_auto", None, f"a daemon of this root{_staleness(e)}{root}; {e.proof.detail}"
    )


#: First match wins. Numbers are the rows of upstream's table (3.2.4+); unnumbered rows are
#: ours and only ever make a verdict more cautious.
_DECISION_TABLE: tuple[_Row, ...] = (
    _row_family_boundary,  # 1: out_of_range (and, before it, dashboard_range)
    _row_other_user,  # another user's process is never ours to signal
    _row_supervised,  # the supervisor's own table: the lifecycle's, not cleanup's
    _row_no_spawn_shape,  # 2, 2b: not_spec_kitty / third_party
    _row_recorded_singleton,  # 3: is_recorded_singleton
    _row_missing_pid,  # 4: missing_pid (also: the pid's process could not be read)
    _row_pre_marker,  # 5: pre_marker
    _row_cross_root,  # 6: cross_root
    _row_unresponsive,  # 7: unresponsive
    _row_unproven_self_report,  # 8: pid_port_mismatch (3.2.4+) / token_mismatch (older)
    _row_safe_auto,  # 9: safe_auto
)


class Classification(NamedTuple):
    """One listener, classified: the fields of the wire's ``ListenerRecord``, which
    ``_discovery`` builds from it (this module stays free of pydantic).

    The first eighteen fields are upstream's ``auth doctor --json`` (schema 2) orphan keys.
    """

    daemon_family: str | None
    pid: int | None
    port: int
    protocol_version: int | None
    package_version: str | None
    singleton_scope_id: str | None
    daemon_root: str | None
    queue_db_path: str | None
    auth_scope: str | None
    server_url: str | None
    owner_present: bool
    identity_source: str | None
    executable_summary: str | None
    spawn_shape_ok: bool
    self_report_matches_listener: bool
    is_recorded_singleton: bool
    cleanup_class: CleanupClass
    skip_reason: str | None
    uid: int | None
    process_start: str | None
    why: str


def classify(listener: ListenerFacts, supervisor: SupervisorFacts) -> Classification:
    """Classify one listener; the record says what cleanup may do to it and why."""
    evidence = _gather_evidence(listener, supervisor)
    for row in _DECISION_TABLE:
        verdict = row(evidence)
        if verdict is not None:
            return _record(evidence, verdict)
    raise AssertionError("the last row of the decision table always matches")


def _gather_evidence(listener: ListenerFacts, supervisor: SupervisorFacts) -> _Evidence:
    cmdline = listener.cmdline
    proof: SelfReportProof | None = None
    if listener.health is not None and listener.pid is not None:
        proof = prove_self_report(
            listener.health, pid=listener.pid, port=listener.port, cmdline=cmdline
        )
    recorded = supervisor.recorded_singleton
    spawn_shape_ok = cmdline is not None and cmdline.spawn_shape
    root_marker = cmdline.root_marker if cmdline is not None else None
    kernel_proof: KernelRootProof | None = None
    if spawn_shape_ok and root_marker is None:
        kernel_proof = prove_root_by_kernel(listener.kernel_root, supervisor.root_files)
    return _Evidence(
        listener=listener,
        supervisor=supervisor,
        spawn_shape_ok=spawn_shape_ok,
        root_marker=root_marker,
        is_recorded_singleton=(
            recorded is not None and listener.pid == recorded.pid and listener.port == recorded.port
        ),
        is_supervised=_in_table(listener, supervisor.supervised),
        proof=proof,
        kernel_proof=kernel_proof,
    )


def _in_table(listener: ListenerFacts, table: Collection[SupervisedDaemon]) -> bool:
    # Erring towards "supervised" is safe (cleanup never touches it), so an unreadable
    # start does not disqualify a pid/port match; a *different* start does: that pid now
    # names another process.
    return any(
        row.pid == listener.pid
        and row.port == listener.port
        and (listener.process_start is None or listener.process_start == row.process_start)
        for row in table
    )


def _same_root(marker: str, daemon_root: str) -> bool:
    # Both are resolved paths already; normalising only forgives a trailing slash.
    return posixpath.normpath(marker) == posixpath.normpath(daemon_root)


def _staleness(e: _Evidence) -> str:
    health = e.listener.health
    version = health.package_version if health is not None else None
    current = e.supervisor.current_package_version
    python = e.listener.cmdline.exec_marker if e.listener.cmdline is not None else None
    current_python = e.supervisor.current_python
    evidence: list[str] = []
    if version is not None and current is not None and version != current:
        evidence.append(f"version {version} (current {current})")
    if python is not None and current_python is not None and python != current_python:
        evidence.append(f"interpreter {python} (current {current_python})")
    if evidence:
        return f", stale by {' and '.join(evidence)}"
    if version is not None:
        return f" at {version}"
    return ""


def _identity_source(e: _Evidence, verdict: _Verdict) -> IdentitySource | None:
    if verdict.cleanup_class == "supervised":
        return "supervisor_table"
    if e.kernel_proof is not None and e.kernel_proof.matches:
        return "kernel_root"
    if e.proof is not None and e.spawn_shape_ok:
        return e.proof.identity_source
    if e.root_marker is not None and e.spawn_shape_ok:
        return "root_marker"
    return None


def _record(e: _Evidence, verdict: _Verdict) -> Classification:
    listener = e.listener
    daemon_root = e.root_marker
    if daemon_root is None and e.kernel_proof is not None and e.kernel_proof.matches:
        daemon_root = e.supervisor.daemon_root
    health = listener.health
    cmdline = listener.cmdline
    owner = health.owner if health is not None else None
    # Before 3.2.4 the owner block is whatever daemon last wrote the shared owner.json;
    # its queue, scope and server are reported only when it describes this listener.
    own_owner = owner if _owner_describes(owner, listener.pid, listener.port) else None
    daemon_family = health.daemon_family if health is not None else None
    if daemon_family is None and (
        e.spawn_shape_ok or (health is not None and health.looks_like_spec_kitty)
    ):
        # Daemons before 3.2.4 do not name their family; the spawn shape or protocol does.
        daemon_family = "sync"
    return Classification(
        daemon_family=daemon_family,
        pid=listener.pid,
        port=listener.port,
        protocol_version=health.protocol_version if health is not None else None,
        package_version=health.package_version if health is not None else None,
        singleton_scope_id=(
            health.singleton_scope_id
            if health is not None and health.singleton_scope_id is not None
            else daemon_root
        ),
        daemon_root=daemon_root,
        # These live in the ``owner`` block; upstream reads them from the top level, where
        # they never are.
        queue_db_path=_owner_str(own_owner, "queue_db_path"),
        auth_scope=_owner_str(own_owner, "auth_scope"),
        server_url=_owner_str(own_owner, "server_url"),
        owner_present=owner is not None,
        identity_source=_identity_source(e, verdict),
        executable_summary=(
            (cmdline.exec_marker or cmdline.executable) if cmdline is not None else None
        ),
        spawn_shape_ok=e.spawn_shape_ok,
        self_report_matches_listener=e.proof is not None and e.proof.matches,
        is_recorded_singleton=e.is_recorded_singleton,
        cleanup_class=verdict.cleanup_class,
        skip_reason=verdict.skip_reason,
        uid=listener.uid,
        process_start=listener.process_start,
        why=_sentence(verdict.why),
    )


def _owner_describes(owner: dict[str, object] | None, pid: int | None, port: int) -> bool:
    return (
        owner is not None
        and pid is not None
        and _int_or_none(owner.get("pid")) == pid
        and _int_or_none(owner.get("port")) == port
    )


def _owner_str(owner: dict[str, object] | None, key: str) -> str | None:
    value = owner.get(key) if owner is not None else None
    return value if isinstance(value, str) else None


def _sentence(clause: str) -> str:
    return clause[:1].upper() + clause[1:] + "."


# --------------------------------------------------------------------------------------------
# What a sweep may act on


class SweepCandidate(Protocol):
    """What a sweep needs of a record: a classification and its wire form both have it."""

    @property
    def pid(self) -> int | None: ...
    @property
    def port(self) -> int: ...
    @property
    def cleanup_class(self) -> CleanupClass: ...


_Record = TypeVar("_Record", bound=SweepCandidate)


def records_to_sweep(
    records: Iterable[_Record],
    *,
    force: bool = False,
    confirmed_pids: Collection[int] = (),
) -> list[_Record]:
    """The records a cleanup sweep may stop: ``safe_auto`` always, ``operator_required``
    only with ``force`` or when the operator confirmed that very pid; never the others."""
    chosen: list[_Record] = []
    for record in records:
        # A record may have come over the wire; the family boundary and a pid to re-check
        # at signal time are required whatever its class says.
        if record.pid is None or not in_family_range(record.port):
            continue
        if record.cleanup_class == "safe_auto" or (
            record.cleanup_class == "operator_required" and (force or record.pid in confirmed_pids)
        ):
            chosen.append(record)
    return chosen
