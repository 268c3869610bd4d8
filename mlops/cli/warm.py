"""Warm runs: `mlops run` forked from a worker process kept between commands (`MLOPS_WARM_RUNS=1`).

A run spends most of a cached rerun importing Prefect and MLflow (about 1.2 s for MLflow's package, 0.75 s for
its SQL store's modules, 0.75 s more for Prefect's, on 2 cores): more than the steps, the flow run and the MLflow
bookkeeping together. With the setting on, the first `mlops run` starts a worker that imports them (and torch,
Lightning and the steps: a run that trains starts at once too) and then waits on a Unix socket; every `mlops run`
from then on connects, hands over its arguments, environment, working directory and stdin/stdout/stderr
(SCM_RIGHTS), and the worker forks a child that becomes that command exactly as the sweep's warm trial worker
does (mlops.sweep.warm): its own process, with its own Prefect flow run and MLflow run, its exit code (a signal's
included) returned as the command's. Ctrl-C and SIGTERM reach the run as they would in the command's own process;
a command killed outright (kill -9) closes its socket, and the worker kills its run.

One worker per environment: the socket's name is a digest of the interpreter, mlops' source files (their times),
the installed distributions (mlops.core.installed), the working directory and the environment variables
(UNKEYED_VARIABLES aside), since libraries read some of them when imported. A command with a changed variable,
from another directory or after an edited source file gets a worker of its own, and the old one, unused, exits
after `MLOPS_WARM_RUNS_IDLE_S` (default 900) s without a run. `mlops server stop` stops them all. An idle worker
holds about 1 GB resident (its imports: torch among them), which its forked runs share.

Opt-in, like the local Prefect server it pairs with: a process that outlives the command is one the user asked for.
When the worker cannot be started or reached, the command says so in one line and runs in its own process.

Only the standard library is imported here (the CLI imports this module for every command); the worker's side
imports mlops.sweep.warm when it starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.core.installed import installed_stamp

if TYPE_CHECKING:
    from mlops.sweep.warm import ChildRequest  # noqa: F401 - in annotations

SWITCH = "MLOPS_WARM_RUNS"  # "1" (true, yes, on): warm runs; unset or anything else: each command imports anew
DIR_ENV = "MLOPS_WARM_DIR"  # where the sockets, state and logs are (default /tmp/mlops-warm-UID: a short path,
# since a Unix socket's path is limited to 107 bytes)
IDLE_ENV = "MLOPS_WARM_RUNS_IDLE_S"
DEFAULT_IDLE_S = 900.0
START_TIMEOUT_S = 180.0  # the worker's imports: about 6 s here, much longer on a loaded CI box
MAX_MESSAGE = 1 << 20
# imported by the worker on top of what a sweep trial imports (mlops.sweep.warm.WARM_IMPORTS)
# left out of the worker's key (a run still gets the command's own values): a shell's own bookkeeping, which
# differs between two shells (or a `timeout` in front) of one user, and the workspace, which mlops reads when a
# command runs, never at import; no library reads any of them when imported
UNKEYED_VARIABLES = frozenset({"_", "SHLVL", "OLDPWD", "PWD", "COLUMNS", "LINES", "TERM_SESSION_ID", "WINDOWID",
                               "TMUX_PANE", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY", "MLOPS_HOME"})
RUN_IMPORTS = ("mlops.cli.run", "prefect.flow_engine", "prefect.task_engine", "mlflow.tracking.client")

# not `python -m mlops.cli.warm`: that would run a second copy of this module as __main__, beside the one the
# command imports (whose `_in_child` a forked run sets)
WORKER_MAIN = ("import sys; from pathlib import Path; from mlops.cli.warm import serve; "
               "raise SystemExit(serve(Path(sys.argv[1])))")
_in_child = False  # set in a forked run: it runs the command itself, never hands it on again


class WarmUnavailable(Exception):
    """The worker cannot be started or reached: the command runs in its own process instead."""


def wanted(command: str | None) -> bool:
    return (command == "run" and not _in_child
            and os.environ.get(SWITCH, "").strip().lower() in ("1", "true", "yes", "on"))


def workers_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or f"/tmp/mlops-warm-{os.getuid()}")


def _private_dir() -> Path:
    """The workers' directory, created mode 0700 and refused unless it is ours and private: anyone who can
    connect to a worker runs commands as its user."""
    d = workers_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WarmUnavailable(f"{d} is not a private directory of this user (mode {st.st_mode & 0o777:o})")
    return d


def _source_stamp() -> list[int]:
    """How many of mlops' source files there are and the latest of their modification times."""
    root = Path(__file__).resolve().parents[1]
    count, latest = 0, 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                count += 1
                latest = max(latest, os.stat(os.path.join(folder, name)).st_mtime_ns)
    return [count, latest]


def worker_key(env: dict[str, str], cwd: str) -> str:
    """The digest that names the worker a command from this environment may fork from."""
    identity = [sys.executable, str(Path(__file__).resolve().parents[1]), _source_stamp(), installed_stamp(), cwd,
                sorted((k, v) for k, v in env.items() if k not in UNKEYED_VARIABLES)]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]


def run_in_worker(args: list[str]) -> int | None:
    """Run `mlops *args` forked from this environment's warm worker (started when there is none): its exit
    code. None when no worker can be used: the caller then runs the command itself."""
    try:
        path = _private_dir() / f"{worker_key(dict(os.environ), os.getcwd())}.sock"
        conn = _connect_or_start(path)
    except (WarmUnavailable, OSError) as exc:
        print(f"warning: warm runs unavailable ({exc}): this run imports everything in its own process",
              file=sys.stderr)
        return None
    with conn:
        request = json.dumps({"args": args, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        try:
            socket.send_fds(conn, [request], [0, 1, 2])
            pid = int(_receive(conn)["pid"])
        except (OSError, KeyError, ValueError) as exc:
            print(f"warning: the warm worker did not take the run ({exc}): it runs in this process", file=sys.stderr)
            return None
        return _await_run(conn, pid, path.with_suffix(".log"))


def _await_run(conn: socket.socket, pid: int, log: Path) -> int:
    """Wait for the run's exit code, passing it the signals the command gets (Ctrl-C, SIGTERM, SIGHUP)."""

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            answer = _receive(conn)
            break
        except KeyboardInterrupt:
            forward(signal.SIGINT, None)  # the run stops as a Ctrl-C stops it in its own process
        except (OSError, ValueError):
            print(f"error: the warm worker ended during the run (pid {pid}); its log: {log}", file=sys.stderr)
            return 1
    code = int(answer["exit"])
    return 128 - code if code < 0 else code  # killed by a signal: as a shell reports it


def _receive(conn: socket.socket) -> dict[str, Any]:
    message = conn.recv(MAX_MESSAGE)
    if not message:
        raise ValueError("the worker closed the connection")
    return dict(json.loads(message))


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    return conn


def _connect_or_start(path: Path) -> socket.socket:
    conn = _connect(path)
    if conn is not None:
        return conn
    # one starter per worker: two commands started at once would each start one, and one would be left over
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(path)
        if conn is not None:
            return conn
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a worker that died without removing it
        return _start(path)


def _start(path: Path) -> socket.socket:
    import subprocess  # only when a worker starts: `mlops --help` does not need it

    log_path = path.with_suffix(".log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", WORKER_MAIN, str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)  # outlives this command
    print(f"mlops: started a warm worker (pid {proc.pid}) for runs from this environment; it stops after "
          f"{idle_seconds():.0f} s without one, or with `mlops server stop`", file=sys.stderr)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        conn = _connect(path)
        if conn is not None:
            proc.returncode = 0  # detached on purpose: nothing waits for it here
            return conn
        if proc.poll() is not None:
            raise WarmUnavailable(f"the worker exited with code {proc.returncode} before it was ready; its log: "
                                  f"{log_path}")
        time.sleep(0.05)
    proc.kill()
    raise WarmUnavailable(f"the worker was not ready after {START_TIMEOUT_S:.0f} s; its log: {log_path}")


def idle_seconds() -> float:
    try:
        return float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_S)
    except ValueError:
        return DEFAULT_IDLE_S


def stop_workers() -> int:
    """Stop every warm worker of this user (their runs in progress go with them). How many were stopped."""
    stopped = 0
    d = workers_dir()
    for state in d.glob("*.json") if d.is_dir() else []:
        try:
            pid = int(json.loads(state.read_text())["pid"])
            if "mlops.cli.warm" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                raise ProcessLookupError  # gone, and the pid taken by another process
            os.kill(pid, signal.SIGTERM)
            stopped += 1
        except (OSError, ValueError, KeyError):
            pass
        with contextlib.suppress(FileNotFoundError):
            state.unlink()
    return stopped


# --- the worker: `python -c WORKER_MAIN SOCKET` --------------------------------------------------------------


def serve(path: Path) -> int:
    # the worker's side needs the sweep worker's fork machinery, which imports the engine (the command's own
    # side must stay light)
    from mlops.sweep import warm as forking

    forking.warm_up(RUN_IMPORTS)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    staging = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    listener.bind(str(staging))
    listener.listen(16)
    os.replace(staging, path)  # appears only once it accepts
    inode = path.stat().st_ino
    state = path.with_suffix(".json")
    state.write_text(json.dumps({"pid": os.getpid(), "socket": str(path), "started_at": time.time()}))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the command's, not the worker's
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    runs = forking.Children(listener)
    idle, last = idle_seconds(), time.monotonic()
    try:
        while not stopping and (runs.live or time.monotonic() - last < idle) and _still_ours(path, inode):
            for key, _ in runs.sel.select(timeout=min(idle, 30.0)):
                if key.data == "source":
                    conn, _addr = listener.accept()
                    request = _request(conn)
                    if request is None:
                        conn.close()
                        continue
                    last = time.monotonic()
                    pid = runs.fork(conn, request.stdio)
                    if pid == 0:
                        _run_child(request)
                    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} run pid {pid}: mlops {' '.join(request.args)}",
                          flush=True)
                elif key.data == "wake":
                    runs.reap()
                    last = time.monotonic()
                else:  # the command closed its socket (killed): its run goes too
                    runs.hung_up(key.data)
    finally:
        runs.stop()
        if _still_ours(path, inode):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(FileNotFoundError):
                state.unlink()
        listener.close()
    return 0


def _still_ours(path: Path, inode: int) -> bool:
    """Whether `path` is still this worker's socket (a removed directory, or another worker started in its
    place, ends this one)."""
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _request(conn: socket.socket) -> ChildRequest | None:
    """The command a connection asks for, or None (said in the worker's log) when it is not one."""
    from mlops.sweep.warm import ChildRequest  # the worker's side only (see serve)

    conn.settimeout(10.0)  # a command sends its request at once
    fds: list[int] = []
    try:
        message, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 3)
        body = json.loads(message)
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} file descriptors, not 3")
        conn.settimeout(None)
        return ChildRequest("mlops.cli", list(body["args"]), dict(body["env"]), str(body["cwd"]), list(fds))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        for fd in fds:
            os.close(fd)
        print(f"refused a request: {exc}", file=sys.stderr, flush=True)
        return None


def _run_child(request: ChildRequest) -> None:
    """In the forked child: become the command, run it, and end with its exit code."""
    global _in_child
    from mlops.cli import main  # the CLI itself, not mlops.cli.entry: this child runs the command
    from mlops.sweep import warm as forking

    _in_child = True
    forking.become(request)
    with contextlib.suppress(Exception):  # Prefect read its settings under the worker's start; read them again
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    try:
        code = main(request.args)
    except SystemExit as exc:
        code = forking.exit_code(exc)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    forking.exit_child(code)

