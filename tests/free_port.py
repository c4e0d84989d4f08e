"""A TCP port nothing listens on now, for a test's own rendezvous (a fixed port collides with
another test or job on the machine)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
