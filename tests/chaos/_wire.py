"""Raw HTTP over the supervisor's socket, byte for byte, for requests no client would send."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

from spec_kitty_supervisor_client import socket_path_for_root

__all__ = ["Reply", "call", "exchange", "request"]


def exchange(path: Path, data: bytes, timeout: float = 30.0) -> bytes:
    """Send ``data``, half-close, and read until the supervisor hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # it may already have answered and hung up
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def request(method: str, target: str, body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@dataclass(frozen=True)
class Reply:
    status: int
    document: object

    @property
    def error_code(self) -> str | None:
        if isinstance(self.document, dict) and isinstance(self.document.get("error"), dict):
            code = self.document["error"].get("code")
            return code if isinstance(code, str) else None
        return None


def call(root: Path, method: str, target: str, body: object = None, timeout: float = 60) -> Reply:
    """One request to the supervisor of ``root``; its status and JSON document."""
    data = b"" if body is None else json.dumps(body).encode()
    raw = exchange(socket_path_for_root(root), request(method, target, data), timeout)
    if not raw:
        raise ConnectionError(f"{method} {target}: the supervisor hung up without an answer")
    status = int(raw.split(b" ", 2)[1])
    return Reply(status, json.loads(raw.partition(b"\r\n\r\n")[2] or b"null"))
