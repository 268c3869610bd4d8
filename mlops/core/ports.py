"""Loopback ports for the processes mlops starts itself (a load test's server, the local Prefect server)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that was free when probed (not held: start the server on it at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:PORT now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT does not hold it
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
