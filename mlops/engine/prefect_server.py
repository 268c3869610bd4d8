"""A local Prefect server kept across commands, so a run pays no server start-up.

Without `PREFECT_API_URL` (and no Prefect profile naming a server), Prefect starts a temporary server per
process: about 9-13 s of every `mlops run`. `mlops server start` starts `prefect server start` on 127.0.0.1 as a
detached process (its own session: it outlives the command and a closed terminal) and waits for `/api/health`;
every later command finds it running and points this process (and its children) at it. `mlops server status`
reports it, `mlops server stop` stops it. With `MLOPS_PREFECT_SERVER=local` the first command that runs a flow
starts it; `MLOPS_PREFECT_SERVER=ephemeral` never uses it.

Not started unasked: a server that outlives the command is a process the user did not ask for (and tests, CI
jobs and benchmarks in temporary homes would leave them behind), so without the setting and without a running
server a command keeps Prefect's temporary server, as before.

One server per Prefect home, not per project: the server's identity is its database (`PREFECT_HOME`, by
default `~/.prefect`, as the temporary server uses, so run history stays where it was), and two servers on one
SQLite file would contend for it. Its state (`mlops-server.json`), log and start lock live beside that
database. A user's `PREFECT_API_URL` always wins: nothing here runs then.

Nothing of Prefect is imported here, except to read its settings in `ensure_server` (a flow is about to run:
Prefect is loaded anyway).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.ports import free_port, port_free

# "local": start the local server on first use; "ephemeral": Prefect's temporary server per command, even when
# a local server runs; unset: use the local server when one runs (`mlops server start`), else the temporary one
MODE_ENV = "MLOPS_PREFECT_SERVER"
START_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"  # the same patience as the temporary one
_started: dict[int, subprocess.Popen[bytes]] = {}  # servers this process started: reaped when stopped here


@dataclass(frozen=True)
class ServerState:
    """What the state file records of a running local server."""

    pid: int  # the server's supervisor: its session and process group hold the server too
    port: int
    url: str  # the API URL: http://127.0.0.1:PORT/api
    prefect_home: str
    log: str
    started_at: float  # unix seconds
    mlops_version: str
    prefect_version: str

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")

    @classmethod
    def parse(cls, text: str) -> ServerState | None:
        """The state a file holds; None when it is not one (truncated, hand-edited, from another version)."""
        try:
            data = json.loads(text)
            return cls(pid=int(data["pid"]), port=int(data["port"]), url=str(data["url"]),
                       prefect_home=str(data["prefect_home"]), log=str(data["log"]),
                       started_at=float(data["started_at"]), mlops_version=str(data["mlops_version"]),
                       prefect_version=str(data["prefect_version"]))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass(frozen=True)
class ServerFiles:
    """Where a Prefect home's local server keeps its state, log and start lock (beside its database)."""

    home: Path

    @property
    def state(self) -> Path:
        return self.home / "mlops-server.json"

    @property
    def log(self) -> Path:
        return self.home / "mlops-server.log"

    @property
    def lock(self) -> Path:
        return self.home / "mlops-server.lock"


def prefect_home() -> Path:
    """The Prefect home a command uses: `$PREFECT_HOME`, else Prefect's default `~/.prefect` (read without
    importing Prefect, so `mlops server status` stays light)."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser().resolve()


def check_home(home: Path | None = None) -> Path:
    """The Prefect home, created when missing, refused in plain words when it cannot be written: Prefect's own
    answer is a warning, then a server that cannot open its database, thousands of lines of its traceback and
    a wait for that server to answer (a read-only mount, a typo under a directory that is a file)."""
    home = home or prefect_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mlops-write-check-", dir=home)  # a name no other process has
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MlopsError(f"the Prefect home {home} (PREFECT_HOME, else ~/.prefect) cannot be written: "
                         f"{exc.strerror or exc}; Prefect keeps its settings and its server's database there: point "
                         "PREFECT_HOME at a writable directory") from None
    return home


def server_files(home: Path | None = None) -> ServerFiles:
    return ServerFiles(home or prefect_home())


def start_on_use() -> bool:
    """Whether the user asked for the local server to start on first use."""
    return os.environ.get(MODE_ENV, "").strip().lower() == "local"


def ephemeral_mode() -> bool:
    """Whether the user asked for Prefect's temporary server per command (the behaviour before this module)."""
    return os.environ.get(MODE_ENV, "").strip().lower() == "ephemeral"


# --- liveness -------------------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """A process that runs: not gone, not a zombie waiting to be reaped."""
    if pid <= 0:
        return False
    proc = _started.get(pid)
    if proc is not None and proc.poll() is not None:  # ours, and it exited: reaped now
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the pid
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # reaped since kill(0) answered, unless there is no /proc at all (macOS)
        return not Path("/proc/self").exists()
    except (OSError, IndexError):  # kill(0) said it exists
        return True


def is_prefect_server(pid: int) -> bool:
    """Whether `pid` runs a Prefect server (not another process that reused the pid). True without /proc."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return pid_alive(pid)
    return "prefect" in cmdline and "server" in cmdline


def healthy(url: str, timeout: float = 2) -> bool:
    """Whether the Prefect API at `url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return bool(json.loads(resp.read()) is True)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def read_state(files: ServerFiles) -> ServerState | None:
    try:
        return ServerState.parse(files.state.read_text())
    except OSError:
        return None


def is_stale(state: ServerState | None) -> bool:
    """A recorded server that is no longer ours to use: none recorded, its process gone, or its pid reused."""
    return state is None or not pid_alive(state.pid) or not is_prefect_server(state.pid)


def running(files: ServerFiles | None = None) -> ServerState | None:
    """The local server of this Prefect home, when it runs and answers; else None."""
    state = read_state(files or server_files())
    if state is None or is_stale(state) or not healthy(state.url):
        return None
    return state


# --- start and stop -------------------------------------------------------------------------------------------


@contextmanager
def _locked(files: ServerFiles) -> Iterator[None]:
    """One command at a time starts or stops the server of a Prefect home (others wait, then find it)."""
    files.home.mkdir(parents=True, exist_ok=True)
    with open(files.lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_port(previous: int | None) -> int:
    """The previous server's port when free (the UI's address stays the same), else one the OS hands out."""
    if previous and port_free(previous):
        return previous
    return free_port()


# Runs the server (`argv[3:]`) as its child, in the session `start_new_session` gave it, so one killpg stops
# both; and stops the server once its state file is gone or names another server: its Prefect home was deleted
# (a temporary directory) or replaced, and nobody could find the server again to stop it. Before the state file
# first names it (the start is under way), it waits up to `argv[2]` seconds. The starter sends SIGUSR1 once it
# wrote the state file: a file written and deleted between two looks would otherwise read as "not yet written",
# and the server would run on until that wait ended (a CI run saw it outlive a 150 s bound).
_SUPERVISOR = """
import json, os, signal, subprocess, sys, time
state, wait = sys.argv[1], float(sys.argv[2])
announced = []
signal.signal(signal.SIGUSR1, lambda *_: announced.append(True))  # before the server: the starter waits for it
server = subprocess.Popen(sys.argv[3:])
def stop(*_):  # the group's SIGTERM: gone only once the server is (its port free)
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
def named():
    try:
        return json.loads(open(state).read()).get("pid") == os.getpid()
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return None  # being replaced, or unreadable for a moment: look again
deadline = time.monotonic() + wait
while server.poll() is None and not announced and named() is not True and time.monotonic() < deadline:
    time.sleep(0.5)
while server.poll() is None and named() is not False:
    time.sleep(5)
if server.poll() is not None:
    sys.exit(server.returncode)
stop()
"""


def _versions() -> tuple[str, str]:
    from importlib.metadata import version

    from mlops import __version__

    return __version__, version("prefect")


def _log_tail(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


def _start(files: ServerFiles, previous: ServerState | None, timeout: float) -> ServerState:
    """`prefect server start` detached, healthy; a port lost to another process in the meantime is retried."""
    mlops_version, prefect_version = _versions()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(files.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    for attempt in range(3):
        port = _free_port(previous.port if previous and attempt == 0 else None)
        url = f"http://127.0.0.1:{port}/api"
        with open(files.log, "ab") as log:
            offset = log.tell()
            log.write(f"--- mlops: prefect server start on port {port} at {time.ctime()}\n".encode())
            log.flush()
            proc = subprocess.Popen([sys.executable, "-c", _SUPERVISOR, str(files.state), str(timeout + 60),
                                     sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                     "--port", str(port)], cwd=files.home, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _started[proc.pid] = proc
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not healthy(url, timeout=2):
            if time.monotonic() > deadline:
                _stop_group(proc.pid, 15)
                raise MlopsError(f"the local Prefect server did not answer in {timeout:.0f} s (raise "
                                 f"{START_TIMEOUT_ENV}, or set {MODE_ENV}=ephemeral); its log {files.log}:\n"
                                 f"{_log_tail(files.log, offset)}")
            time.sleep(0.25)
        time.sleep(0.3)  # a server that lost its port to another one exits at once: the answer was not ours
        if proc.poll() is None:
            state = ServerState(pid=proc.pid, port=port, url=url, prefect_home=str(files.home), log=str(files.log),
                                started_at=time.time(), mlops_version=mlops_version,
                                prefect_version=prefect_version)
            tmp = files.state.with_suffix(".tmp")
            tmp.write_text(state.to_json())
            tmp.replace(files.state)
            with contextlib.suppress(ProcessLookupError):  # named: from now on a missing state file means "stop"
                os.kill(proc.pid, signal.SIGUSR1)
            return state
        tail = _log_tail(files.log, offset)
        if "address already in use" not in tail.lower():
            raise MlopsError(f"the local Prefect server exited {proc.returncode} on start (set {MODE_ENV}=ephemeral "
                             f"to use Prefect's temporary server instead); its log {files.log}:\n{tail}")
    raise MlopsError(f"the local Prefect server found no free port in 3 tries; its log: {files.log}")


def _stop_group(pid: int, timeout: float) -> None:
    """SIGTERM the server's process group, wait `timeout` s, then SIGKILL it."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    proc = _started.pop(pid, None)
    if proc is not None:  # ours: reap it
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def start_server(files: ServerFiles | None = None, timeout: float | None = None) -> tuple[ServerState, bool]:
    """The local server of this Prefect home, started when none runs (a stale state file is replaced);
    whether this call started it."""
    files = files or server_files()
    check_home(files.home)
    timeout = timeout if timeout is not None else float(os.environ.get(START_TIMEOUT_ENV) or 180)
    with _locked(files):
        previous = read_state(files)
        if previous is not None and not is_stale(previous):
            # alive but silent: give a busy one (a loaded machine, a long query) time before restarting it
            deadline = time.monotonic() + 30
            while not healthy(previous.url) and time.monotonic() < deadline and pid_alive(previous.pid):
                time.sleep(0.25)
            if healthy(previous.url):
                return previous, False
            say(f"the local Prefect server (pid {previous.pid}) does not answer at {previous.url}: restarting it")
            _stop_group(previous.pid, 15)
        files.state.unlink(missing_ok=True)
        return _start(files, previous, timeout), True


def stop_server(files: ServerFiles | None = None, timeout: float = 20) -> ServerState | None:
    """Stop this Prefect home's local server and remove its state file; the state it had, or None when none
    ran (a stale record is only removed)."""
    files = files or server_files()
    with _locked(files):
        state = read_state(files)
        stopped = state is not None and not is_stale(state)
        if stopped:
            assert state is not None
            _stop_group(state.pid, timeout)
        files.state.unlink(missing_ok=True)
        return state if stopped else None


def _api_url_configured() -> str | None:
    """The API URL Prefect would use without us: PREFECT_API_URL from the environment or the active profile."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def _point_prefect_at(url: str) -> None:
    """This process (its Prefect settings, already loaded) and its children use the server at `url`."""
    os.environ["PREFECT_API_URL"] = url
    context: Any = sys.modules.get("prefect.context")
    if context is not None:  # Prefect read its settings at import: read them again
        refresh = getattr(context, "refresh_global_settings_context", None)
        if refresh is not None:
            refresh()
        else:
            context.GLOBAL_SETTINGS_CONTEXT = context.root_settings_context()


def ensure_server() -> str | None:
    """Before a flow runs: unless the user names a server (PREFECT_API_URL, a profile) or asked for the
    temporary one (MLOPS_PREFECT_SERVER=ephemeral), point Prefect at the local server when it runs (started
    first with MLOPS_PREFECT_SERVER=local). Its URL, or None when Prefect's temporary server is used."""
    if ephemeral_mode() or _api_url_configured():
        return None
    if not start_on_use():
        found = running()
        if found is None:
            return None  # Prefect's temporary server, as without this module
        state, started = found, False
    else:
        state, started = start_server()
    _, prefect_version = _versions()
    if started:
        say(f"started a local Prefect server at {state.ui} (pid {state.pid}, log {state.log}); it keeps running "
            "for the next commands: `mlops server stop` stops it")
    elif state.prefect_version != prefect_version:
        say(f"the local Prefect server (pid {state.pid}) runs Prefect {state.prefect_version}, this is "
            f"{prefect_version}: `mlops server stop` to restart it with this one")
    _point_prefect_at(state.url)
    return state.url
