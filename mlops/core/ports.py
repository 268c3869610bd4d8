"""Ports: loopback ones for the processes mlops starts itself (a load test's server, the local Prefect server),
and the check that a server of ours can listen where it was told to."""

from __future__ import annotations

import errno
import socket

from mlops.core.errors import MlopsError


def free_port() -> int:
    """A port on 127.0.0.1 that was free when probed (not held: start the server on it at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:PORT now."""
    return _bind_error("127.0.0.1", port) is None


def _bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not bind host:PORT now, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT does not hold it
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def check_listen(flag: str, host: str, port: int, *, takes_host: bool = False) -> None:
    """Refuse an address a server could not listen on now (a port another process holds, a privileged port, a
    host of another machine): one `error:` line before anything starts, saying what to give `flag` instead,
    where uvicorn would log its OSError and exit 3. A port taken in between still fails the start-up.
    `takes_host`: `flag` takes [HOST:]PORT (collect's --http), not a port beside its own --host (serve's --port)."""
    failed = _bind_error(host, port)
    if failed is not None:
        raise MlopsError(listen_error(flag, host, port, failed, takes_host=takes_host))


def listen_error(flag: str, host: str, port: int, exc: OSError, *, takes_host: bool = False) -> str:
    """Why `host:port` cannot be listened on, and what to give `flag` instead (the host too when `flag` takes it
    and it is not the loopback default: `--port 0.0.0.0:N` would be refused as no number)."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def example(other: int) -> str:
        if not takes_host or host == "127.0.0.1":
            return str(other)
        return f"[{host}]:{other}" if ":" in host else f"{host}:{other}"

    said = f"cannot listen on {address} ({exc.strerror or exc})"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:  # gaierror: its errno is no errno
        return f"{said}: {host} is no address of this machine; give one of its addresses, or 0.0.0.0 for all"
    if exc.errno == errno.EADDRINUSE:
        other = free_port()  # free on loopback now: likely free on any address of this machine too
        return f"{said}: another process listens on port {port}; choose another port, e.g. {flag} {example(other)}"
    if exc.errno == errno.EACCES:
        return f"{said}: ports below 1024 need privileges; choose a port from 1024, e.g. {flag} {example(8081)}"
    return f"{said}: choose another address"
