"""The one-call path: ``import spec_kitty_supervisor_client`` and ``ensure_sync_daemon()``.

A spec-kitty process pays for this path once per command, so what it must not do is pinned
here: the package's import imports none of its modules, and the call sends no version it
would have to ask a subprocess for, runs no subprocess, and imports no pydantic (the answer
is an ``EnsureAnswer``, read with :mod:`json`). The process checks run in a fresh
interpreter, because ``sys.modules`` of the test process already holds everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spec_kitty_supervisor_client import EnsureRequest, EnsureResponse, ProtocolMismatch
from spec_kitty_supervisor_client._one_call import EnsureAnswer, ensure_request_body
from spec_kitty_supervisor_client._wire import PASSED_ENV_NAMES, PASSED_ENV_PREFIXES

HEAVY = ("pydantic", "httpx", "anyio", "spec_kitty_supervisor_client._models")

_ONE_CALL_SCRIPT = r"""
import json, socket, subprocess, sys, threading
root = sys.argv[1]
import spec_kitty_supervisor_client as client
heavy = %(heavy)r
after_import = sorted(m for m in sys.modules if m in heavy or m.startswith(client.__name__ + "."))
from spec_kitty_supervisor_client._wire import ensure_private_dir, resolve_daemon_root
from spec_kitty_supervisor_client._wire import socket_path_for_root
path = socket_path_for_root(resolve_daemon_root(root))
ensure_private_dir(path.parent)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(str(path))
listener.listen(1)
seen = {}
answer = json.dumps({"action": "reused", "daemon": {
    "pid": 4242, "port": 9440, "url": "http://127.0.0.1:9440", "package_version": "3.2.4",
    "python": "/opt/sk/bin/python", "origin": "spawned", "state": "healthy",
    "role": "current", "started_at": "2026-12-01T00:00:00+00:00", "token": "t"}}).encode()

def serve():
    conn, _ = listener.accept()
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        buffer += conn.recv(65536)
    head, body = buffer.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += conn.recv(65536)
    seen["request_line"] = head.split(b"\r\n")[0].decode()
    seen["connection"] = [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                          if line.lower().startswith(b"connection:")]
    seen["body"] = json.loads(body)
    seen["heavy_when_asked"] = sorted(m for m in heavy if m in sys.modules)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"spec-kitty-supervisor-protocol: 1\r\ncontent-length: %%d\r\n\r\n" %% len(answer)
        + answer
    )
    conn.close()

threading.Thread(target=serve, daemon=True).start()

def no_subprocess(*args, **kwargs):
    raise AssertionError(f"a subprocess on the one-call path: {args!r}")

subprocess.Popen = no_subprocess
result = client.ensure_sync_daemon(python="/opt/sk/bin/python", root=root)
print(json.dumps({
    "after_import": after_import,
    "seen": seen,
    "type": type(result).__module__ + "." + type(result).__qualname__,
    "heavy_at_end": sorted(m for m in heavy if m in sys.modules),
    "pid": result.daemon.pid,
    "token": result.daemon.token,
}))
"""


def _run(tmp_path: Path) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", _ONE_CALL_SCRIPT % {"heavy": HEAVY}, str(tmp_path / "root")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def test_importing_the_package_imports_none_of_its_modules(tmp_path: Path) -> None:
    assert _run(tmp_path)["after_import"] == []


def test_the_one_call_sends_no_version_runs_no_subprocess_and_imports_no_pydantic(
    tmp_path: Path,
) -> None:
    result = _run(tmp_path)
    seen = result["seen"]
    assert seen["request_line"] == "POST /v1/sync/ensure HTTP/1.1"
    assert seen["body"]["python"] == "/opt/sk/bin/python"
    assert "package_version" not in seen["body"]
    assert seen["heavy_when_asked"] == []
    assert result["heavy_at_end"] == []
    assert result["type"] == "spec_kitty_supervisor_client._one_call.EnsureAnswer"
    assert (result["pid"], result["token"]) == (4242, "t")


def test_the_one_call_asks_the_supervisor_to_close_the_connection_once_it_has_answered(
    tmp_path: Path,
) -> None:
    # It asks once and leaves: the supervisor need not wait for it to hang up.
    assert _run(tmp_path)["seen"]["connection"] == ["close"]


def test_the_ensure_body_is_what_the_schema_accepts() -> None:
    without = EnsureRequest.model_validate_json(ensure_request_body("/usr/bin/python3", None, "/"))
    assert without.package_version is None
    claimed = EnsureRequest.model_validate_json(ensure_request_body("/p/bin/python", "3.2.7", "/w"))
    assert (claimed.python, claimed.package_version, claimed.cwd) == (
        "/p/bin/python",
        "3.2.7",
        "/w",
    )


def test_a_public_name_is_bound_once_imported_and_an_unknown_one_is_an_attribute_error() -> None:
    import spec_kitty_supervisor_client as client

    assert client.SupervisorError.__module__ == "spec_kitty_supervisor_client._errors"
    assert "SupervisorError" in vars(client)
    assert set(client.__all__) <= set(dir(client))
    with pytest.raises(AttributeError, match="NotAName"):
        client.NotAName  # type: ignore[attr-defined]  # noqa: B018


_DAEMON = {
    "pid": 7,
    "port": 9440,
    "url": "http://127.0.0.1:9440",
    "package_version": "3.2.7",
    "python": "/p/bin/python",
    "origin": "adopted",
    "state": "healthy",
    "role": "current",
    "started_at": "2026-12-01T00:00:00+00:00",
    "last_healthy_at": "2026-12-01T00:00:05+00:00",
    "token": "secret",
}


def test_the_answer_reads_what_the_model_reads_and_converts_to_it() -> None:
    body = json.dumps(
        {"action": "adopted", "daemon": {**_DAEMON, "newer_field": 1}, "message": "m", "x": 2}
    ).encode()
    answer = EnsureAnswer.from_json(body)
    model = EnsureResponse.model_validate_json(body)
    assert answer.to_model() == model
    assert (answer.action, answer.daemon.pid, answer.daemon.token) == ("adopted", 7, "secret")
    minimal = {k: v for k, v in _DAEMON.items() if k not in ("last_healthy_at", "token")}
    bare = EnsureAnswer.from_json(json.dumps({"action": "reused", "daemon": minimal}).encode())
    assert (bare.message, bare.daemon.token, bare.daemon.last_healthy_at) == ("", None, None)


@pytest.mark.parametrize(
    "document",
    [
        {"action": "reused"},
        {"action": "reused", "daemon": {**_DAEMON, "pid": True}},
        {"action": "reused", "daemon": {**_DAEMON, "port": "9440"}},
        {"action": 3, "daemon": _DAEMON},
        {"action": "reused", "daemon": {**_DAEMON, "token": 5}},
        {"action": "reused", "daemon": [1, 2]},
        [1],
    ],
)
def test_an_answer_of_another_shape_is_a_protocol_mismatch(document: object) -> None:
    with pytest.raises(ProtocolMismatch, match="not protocol v1's"):
        EnsureAnswer.from_json(json.dumps(document).encode())


def test_an_answer_that_is_not_json_is_a_protocol_mismatch() -> None:
    with pytest.raises(ProtocolMismatch):
        EnsureAnswer.from_json(b"<html>")


def test_the_body_is_built_again_whenever_what_it_says_may_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPEC_KITTY_FLAVOUR", "one")
    first = ensure_request_body("/p/bin/python", None, "/w")
    # Asked again with the same arguments and environment: the same bytes, not rebuilt.
    assert ensure_request_body("/p/bin/python", None, "/w") is first
    assert json.loads(first)["env"]["SPEC_KITTY_FLAVOUR"] == "one"

    monkeypatch.setenv("SPEC_KITTY_FLAVOUR", "two")
    assert (
        json.loads(ensure_request_body("/p/bin/python", None, "/w"))["env"]["SPEC_KITTY_FLAVOUR"]
        == "two"
    )
    monkeypatch.delenv("SPEC_KITTY_FLAVOUR")
    assert (
        "SPEC_KITTY_FLAVOUR"
        not in json.loads(ensure_request_body("/p/bin/python", None, "/w"))["env"]
    )
    for arguments in (
        ("/q/bin/python", None, "/w"),
        ("/p/bin/python", "3.2.7", "/w"),
        ("/p/bin/python", None, "/v"),
    ):
        document = json.loads(ensure_request_body(*arguments))
        assert (document["python"], document.get("package_version"), document["cwd"]) == arguments


def test_the_body_always_holds_the_allow_listed_environment_as_it_is_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from spec_kitty_supervisor_client._wire import passed_environment

    for value in ("a", "b", "b\udcff", "a"):  # undecodable bytes round-trip as os.environ's
        monkeypatch.setenv("LC_FLAVOUR", value)
        monkeypatch.setenv("UNRELATED", value + "x")
        env = json.loads(ensure_request_body("/p/bin/python", None, "/w"))["env"]
        assert env == passed_environment(os.environ)
        assert env == {
            k: v
            for k, v in os.environ.items()
            if k not in ("SPEC_KITTY_HOME", "SPEC_KITTY_CLI_VERSION")
            and (k in PASSED_ENV_NAMES or k.startswith(PASSED_ENV_PREFIXES))
        }
        assert env["LC_FLAVOUR"] == value


def test_an_answer_is_read_again_only_when_its_bytes_differ() -> None:
    from spec_kitty_supervisor_client._one_call import _read_answer

    body = json.dumps({"action": "reused", "daemon": _DAEMON}).encode()
    first = _read_answer(body)
    assert _read_answer(bytes(body)) is first
    later = {**_DAEMON, "last_healthy_at": "2026-12-01T00:00:10+00:00"}
    second = _read_answer(json.dumps({"action": "reused", "daemon": later}).encode())
    assert second.daemon.last_healthy_at == "2026-12-01T00:00:10+00:00"
    with pytest.raises(ProtocolMismatch):
        _read_answer(b"<html>")
    # A refused answer is never remembered in place of the last good one.
    assert _read_answer(json.dumps({"action": "reused", "daemon": later}).encode()) is second
