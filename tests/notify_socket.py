"""The datagram socket systemd listens on for sd_notify messages, opened by the tests."""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
    """The datagram socket systemd listens on for sd_notify messages."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, wanted: str, timeout: float = 20.0) -> list[str]:
        """Collect datagrams until one contains the line `wanted`; return all collected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(data)
            if wanted in data.splitlines():
                return self.messages
        raise AssertionError(f"no {wanted!r} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()

    def drain(self, seconds: float) -> None:
        """Read and keep messages for `seconds`, so that the sender never finds the queue full."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.sock.settimeout(min(remaining, 0.5))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
