"""A full listen backlog (EAGAIN on connect) is a busy supervisor, never a missing one: the
client waits for room until its deadline and never starts a second supervisor (issue 8)."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spec_kitty_supervisor_client import (
    SupervisorBusy,
    SupervisorClient,
    SupervisorUnavailable,
    _wire,
)
from spec_kitty_supervisor_client._autostart import COMMAND_ENV, socket_accepts
from spec_kitty_supervisor_client._paths import socket_path_for_root


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses a full backlog (ECONNREFUSED)")
class TestAFullBacklog:
    @pytest.fixture
    def root(self) -> Iterator[Path]:
        # A short root, so that its socket sits at R/supervisor/supervisor.sock.
        with tempfile.TemporaryDirectory(prefix="skb-") as name:
            yield Path(name)

    @pytest.fixture
    def full_backlog(self, root: Path) -> Iterator[tuple[socket.socket, list[socket.socket]]]:
        """A listener that accepts nothing, with its backlog filled to refusal."""
        path = socket_path_for_root(root)
        path.parent.mkdir(mode=0o700)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(0)
        fillers: list[socket.socket] = []
        while True:
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(str(path))
            except BlockingIOError:
                filler.close()
                break
            fillers.append(filler)
        yield listener, fillers
        for filler in fillers:
            filler.close()
        listener.close()

    def test_a_full_backlog_still_counts_as_a_supervisor_present(
        self, root: Path, full_backlog: tuple[socket.socket, list[socket.socket]]
    ) -> None:
        assert socket_accepts(socket_path_for_root(root))

    def test_the_client_waits_until_its_deadline_then_raises_busy_and_starts_nothing(
        self,
        root: Path,
        full_backlog: tuple[socket.socket, list[socket.socket]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        marker = root / "a-supervisor-was-started"
        monkeypatch.setenv(COMMAND_ENV, f"touch {marker}")
        with SupervisorClient(root, timeout=0.3) as client, pytest.raises(SupervisorBusy) as busy:
            client.start()  # the one call that may auto-start
        assert not isinstance(busy.value, SupervisorUnavailable)
        assert "backlog is full" in str(busy.value)
        assert not marker.exists()
        assert not (root / "supervisor" / "autostart.lock").exists()

    def test_the_request_goes_through_once_the_backlog_has_room(
        self,
        root: Path,
        full_backlog: tuple[socket.socket, list[socket.socket]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        waited = threading.Event()
        real_sleep = time.sleep

        def observed_sleep(seconds: float) -> None:
            waited.set()
            real_sleep(seconds)

        monkeypatch.setattr(_wire.time, "sleep", observed_sleep)

        listener, fillers = full_backlog

        def serve_once() -> None:
            # Only once the client has met the full backlog: then make room and answer it.
            waited.wait(10)
            for filler in fillers:
                filler.close()
            while True:
                conn, _ = listener.accept()
                request = conn.recv(65536)
                if not request:
                    conn.close()  # a filler: closed above, so it reads as end of stream
                    continue
                body = json.dumps(
                    {
                        "status": "ok",
                        "pid": os.getpid(),
                        "version": "t",
                        "protocol_version": 1,
                        "root": str(root),
                    }
                ).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                conn.close()
                return

        server = threading.Thread(target=serve_once)
        server.start()
        try:
            with SupervisorClient(root, autostart=False, timeout=30) as client:
                assert client.health().pid == os.getpid()
        finally:
            server.join(30)
        assert waited.is_set()
