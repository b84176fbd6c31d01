"""What the service manager puts in our environment: read once, never handed to a daemon."""

from __future__ import annotations

import os

import pytest

from spec_kitty_supervisor._sd_notify import (
    SERVICE_MANAGER_VARIABLES,
    Notifier,
    child_environment_scrub,
    listen_fds_from_env,
)

SYSTEMD_ENVIRONMENT = {
    "NOTIFY_SOCKET": "/run/user/1000/systemd/notify",
    "LISTEN_FDS": "1",
    "LISTEN_PID": "4242",
    "LISTEN_FDNAMES": "control",
    "WATCHDOG_USEC": "60000000",
    "WATCHDOG_PID": "4242",
    "INVOCATION_ID": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "JOURNAL_STREAM": "8:123456",
    "MANAGERPID": "1234",
    "SYSTEMD_EXEC_PID": "4242",
    "MONITOR_EXIT_CODE": "exited",
    "TRIGGER_UNIT": "spec-kitty-supervisor.socket",
}
CLIENT_ENVIRONMENT = {
    "HOME": "/home/ada",
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "SPEC_KITTY_HOME": "/home/ada/.spec-kitty",
    "XDG_RUNTIME_DIR": "/run/user/1000",
}


# child_environment_scrub ---------------------------------------------------------------------


def test_scrub_removes_every_service_manager_variable_and_keeps_the_rest() -> None:
    scrubbed = child_environment_scrub({**CLIENT_ENVIRONMENT, **SYSTEMD_ENVIRONMENT})

    assert scrubbed == CLIENT_ENVIRONMENT


def test_scrub_covers_the_variables_named_in_the_design() -> None:
    named = {"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
    named |= {"WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM"}
    named |= {"MANAGERPID", "SYSTEMD_EXEC_PID"}

    assert named <= SERVICE_MANAGER_VARIABLES


def test_scrub_returns_a_copy_and_leaves_its_argument_alone() -> None:
    original = {**CLIENT_ENVIRONMENT, "NOTIFY_SOCKET": "@x"}

    scrubbed = child_environment_scrub(original)
    scrubbed["EXTRA"] = "1"

    assert original == {**CLIENT_ENVIRONMENT, "NOTIFY_SOCKET": "@x"}


# Notifier.from_environment --------------------------------------------------------------------


def test_without_notify_socket_the_notifier_is_disabled_and_sends_nothing() -> None:
    notifier = Notifier.from_environment({})

    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.status("idle") is False
    assert notifier.watchdog_interval() is None


@pytest.mark.parametrize("address", ["/run/user/1000/systemd/notify", "@/org/systemd/notify"])
def test_a_path_or_abstract_notify_socket_enables_the_notifier(address: str) -> None:
    assert Notifier.from_environment({"NOTIFY_SOCKET": address}).enabled


@pytest.mark.parametrize("address", ["", "relative/notify", "vsock:2:1234"])
def test_an_unusable_notify_socket_disables_the_notifier(address: str) -> None:
    assert not Notifier.from_environment({"NOTIFY_SOCKET": address}).enabled


def test_watchdog_interval_is_half_the_managers_timeout() -> None:
    environ = {"NOTIFY_SOCKET": "@n", "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}

    assert Notifier.from_environment(environ).watchdog_interval() == 30.0


def test_watchdog_without_a_pid_applies_to_this_process() -> None:
    environ = {"NOTIFY_SOCKET": "@n", "WATCHDOG_USEC": "5000000"}

    assert Notifier.from_environment(environ).watchdog_interval() == 2.5


@pytest.mark.parametrize(
    "watchdog",
    [
        {"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"},  # meant for another process
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "sixty"},
        {"WATCHDOG_PID": "1"},
    ],
)
def test_no_watchdog_interval_unless_the_watchdog_is_ours(watchdog: dict[str, str]) -> None:
    assert (
        Notifier.from_environment({"NOTIFY_SOCKET": "@n", **watchdog}).watchdog_interval() is None
    )


def test_reading_the_notify_variables_unsets_them_so_nothing_inherits_them() -> None:
    environ = {
        **CLIENT_ENVIRONMENT,
        "NOTIFY_SOCKET": "@n",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "1",
    }

    Notifier.from_environment(environ)

    assert environ == CLIENT_ENVIRONMENT


def test_reading_the_notify_variables_can_leave_them_in_place() -> None:
    environ = {"NOTIFY_SOCKET": "@n"}

    Notifier.from_environment(environ, unset=False)

    assert environ == {"NOTIFY_SOCKET": "@n"}


def test_from_environment_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@sks-test")

    notifier = Notifier.from_environment()

    assert notifier.enabled
    assert "NOTIFY_SOCKET" not in os.environ


# listen_fds_from_env (the paths that need no passed socket; the rest run under
# systemd-socket-activate in tests/integration/test_sd_notify.py) ------------------------------


def test_no_listen_variables_means_no_activated_sockets() -> None:
    assert listen_fds_from_env({}) == []


@pytest.mark.parametrize(
    "listen",
    [
        {"LISTEN_PID": "1", "LISTEN_FDS": "1"},  # another process's sockets
        {"LISTEN_PID": "self", "LISTEN_FDS": "many"},
        {"LISTEN_PID": "nobody", "LISTEN_FDS": "1"},
        {"LISTEN_PID": "self", "LISTEN_FDS": "0"},
        {"LISTEN_FDS": "1"},
    ],
)
def test_listen_variables_not_meant_for_us_give_no_sockets_and_are_unset(
    listen: dict[str, str],
) -> None:
    environ = {
        **CLIENT_ENVIRONMENT,
        **{k: str(os.getpid()) if v == "self" else v for k, v in listen.items()},
        "LISTEN_FDNAMES": "control",
    }

    assert listen_fds_from_env(environ) == []
    assert environ == CLIENT_ENVIRONMENT
