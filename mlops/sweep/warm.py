"""A warm worker for local sweep trials: one process per sweep imports the heavy libraries once, then forks a
child per trial that runs `python -m mlops.sweep.trial JOB` exactly as a new process would.

A new trial process spends most of its start-up importing torch, Lightning, MLflow's SQL store and the steps
(about 12 s here, for trials that train in seconds). A child forked from a process that has imported them
starts at once. Each trial is still its own process (isolated, and killed on its own: its exit code, a
signal's included, comes back as a new process's would), with the launching thread's argv, environment,
working directory and stdin/stdout/stderr.

The sweep and its worker talk over a Unix socket pair (no path on disk, so no length limit and no other
user can connect): for each trial, the sweep sends the request with a new socket pair's end and its own
stdio file descriptors (SCM_RIGHTS); the worker forks, answers the child's pid and, when it ends, its exit
code. Closing that trial socket kills the child. Nothing is left behind: the worker dies with the sweep
(PR_SET_PDEATHSIG, and it exits on the control socket's end-of-file, which a `kill -9` of the sweep also
gives), and each child dies with the worker.

`MLOPS_SWEEP_WARM=0` turns it off: a new process per trial. If the worker cannot start or dies, trials run in
new processes from then on, after one warning line.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mlops.core.log import say
from mlops.engine.children import die_with_parent
from mlops.engine.lock import pip_freeze
from mlops.recipe.hydra_internals import COMPOSE_MODULES

SWITCH = "MLOPS_SWEEP_WARM"  # "0" (or false, no, off): a new process per trial, as before the worker
READY = b"ready"
START_TIMEOUT_S = 180.0  # its imports: about 8 s here, much longer on a loaded CI box
MAX_MESSAGE = 1 << 20  # a request: the trial's argv and environment

# Imported by the worker before it forks anything: what a trial imports, at module top (mlops.sweep.trial) or
# lazily while it runs (MLflow's SQL store and its migrations, metrics and plots, Parquet, the models). A name
# missing here only costs its import in each trial; one that cannot be imported is skipped.
WARM_IMPORTS = (
    "mlops.sweep.trial",
    "mlops.train.models",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.store.db.utils",
    "alembic.command",
    "sqlite3",
    "hydra",
    "hydra.compose",
    "omegaconf",
    "ruamel.yaml",
    "sklearn.metrics",
    "sklearn.calibration",
    "matplotlib.pyplot",
    "matplotlib.backends.backend_agg",
    "pyarrow.parquet",
    "torch.utils.serialization",
    "concurrent.futures.process",
    "multiprocessing.pool",
    "logging.handlers",
    "logging.config",
)


def enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


class WorkerGone(Exception):
    """The worker died or never became ready: trials run in new processes instead."""


class WarmWorker:
    """The sweep's end of one warm worker process. `run` is safe to call from several threads at once."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)  # what the worker imported under: a trial with another environment runs elsewhere
        self.cwd = os.getcwd()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlops.sweep.warm", str(theirs.fileno())], env=self.env,
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.control = ours
        self.lock = threading.Lock()  # one request at a time on the control socket; readiness read once
        self.ready = False
        self.set_by_imports: set[str] = set()  # variables the worker's imports set (it says at ready)
        self.gone: str | None = None  # why the worker cannot be used any more

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def suits(self, env: dict[str, str]) -> bool:
        """Whether a trial with this environment and working directory can fork from the worker: libraries read
        some variables when imported (Lightning's MLFlowLogger reads MLFLOW_TRACKING_URI), so a trial whose
        environment differs from the one the worker imported under gets a new process. Variables the imports
        set themselves (torch and scikit-learn set KMP_* ones, in the sweep too) do not count."""
        if self.gone is not None or os.getcwd() != self.cwd:
            return False
        try:
            with self.lock:
                self._await_ready()  # it says which variables its imports set
        except WorkerGone:
            return False
        return all(env.get(k) == self.env.get(k) for k in set(env) | set(self.env) if k not in self.set_by_imports)

    def run(self, module: str, args: list[str], env: dict[str, str],
            stdio: tuple[int, int, int] = (0, 1, 2), on_start: Any = None) -> int:
        """Run `python -m module *args` as a child of the worker; its exit code (minus the signal that killed
        it, as `subprocess` reports it). Raises WorkerGone when the worker is not there to run it: the child,
        if it had started, is dead (it dies with the worker) and the caller runs the trial anew."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = None
        try:
            request = json.dumps({"module": module, "args": args, "env": env, "cwd": os.getcwd()}).encode()
            with self.lock:
                self._await_ready()
                try:
                    socket.send_fds(self.control, [request], [theirs.fileno(), *stdio])
                except OSError as exc:
                    raise self._lost(f"cannot be reached ({exc})") from None
            theirs.close()
            pid = int(self._receive(ours)["pid"])
            if on_start is not None:
                on_start(pid)
            return int(self._receive(ours)["exit"])
        except WorkerGone:
            if pid is not None:
                _await_exit(pid)  # killed with the worker: gone before the trial runs again
            raise
        except BaseException:
            if pid is not None:  # the caller gave up on the trial (interrupted): its child must not train on
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise
        finally:
            theirs.close()
            ours.close()  # the worker kills a child whose socket closed: nothing outlives its launcher

    def close(self) -> None:
        """Stop the worker and any trial it still runs (it kills them when the control socket closes)."""
        self.control.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _await_ready(self) -> None:
        if self.gone is not None:
            raise WorkerGone(self.gone)
        if self.ready:
            return
        self.control.settimeout(START_TIMEOUT_S)
        try:
            message = self.control.recv(MAX_MESSAGE)
        except TimeoutError:
            raise self._lost(f"was not ready after {START_TIMEOUT_S:.0f} s") from None
        except OSError as exc:
            raise self._lost(f"cannot be reached ({exc})") from None
        finally:
            self.control.settimeout(None)
        if not message.startswith(READY):
            raise self._lost(f"exited with code {self.proc.poll()} before it was ready")
        imported_under = json.loads(message[len(READY):])
        self.set_by_imports = {k for k, v in imported_under.items() if self.env.get(k) != v}
        self.ready = True

    def _receive(self, conn: socket.socket) -> dict[str, Any]:
        try:
            message = conn.recv(MAX_MESSAGE)
        except OSError:
            message = b""
        if not message:
            raise self._lost("died" if self.proc.poll() is not None else "dropped a trial")
        return dict(json.loads(message))

    def _lost(self, why: str) -> WorkerGone:
        """The worker is unusable from now on: said once, and killed if still there."""
        if self.gone is None:
            self.gone = why
            if self.proc.poll() is None:
                self.proc.kill()
            say(f"warning: the warm trial worker (pid {self.pid}) {why}: trials run in new processes from now on")
        return WorkerGone(self.gone)


def _await_exit(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


_current: WarmWorker | None = None


def current() -> WarmWorker | None:
    """The worker this process's sweep started, if any (trial tasks run in the sweep's threads)."""
    return _current


@contextlib.contextmanager
def trial_worker(env: dict[str, str]) -> Iterator[WarmWorker | None]:
    """A warm worker for the trials launched in this process while the block runs (none with
    MLOPS_SWEEP_WARM=0, or when it cannot start: trials then get new processes)."""
    global _current
    if not enabled():
        yield None
        return
    try:
        worker: WarmWorker | None = WarmWorker(env)
    except OSError as exc:
        say(f"warning: cannot start the warm trial worker ({exc}): each trial runs in a new process")
        worker = None
    _current = worker
    try:
        yield worker
    finally:
        _current = None
        if worker is not None:
            worker.close()


# --- the worker process: `python -m mlops.sweep.warm FD` ------------------------------------------------------


@dataclass
class ChildRequest:
    """A trial to become, in the forked child."""

    module: str
    args: list[str]
    env: dict[str, str]
    cwd: str
    stdio: list[int]


def main(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[0]))
    warm_up()
    request = _serve(control)
    if request is None:
        return 0
    become(request)
    # as `python -m module`: the module runs as __main__
    try:
        runpy.run_module(request.module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exit_code(exc)
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_child(code)
    return code


def exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return int(exc.code or 0)
    print(exc.code, file=sys.stderr)
    return 1


def exit_child(code: int) -> None:
    """End the child as the interpreter ends a process (its threads joined, atexit handlers run, streams
    flushed), but without C++ static destructors: onnxruntime's wait for its thread pool's threads, which
    exist in the worker but not in a forked child, and would hang the child forever."""
    # what Py_Finalize does first: the threading module's exit hooks (a ThreadPoolExecutor's, which tell its
    # workers to stop: MLflow's artifact uploads, Prefect's), then a join of every non-daemon thread
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()  # what Py_Finalize runs; the only way to run them and then skip C's exit handlers
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def warm_up(also: tuple[str, ...] = ()) -> None:
    """Import what trials import (and `also`). Nothing here may start a thread: the worker forks (libraries'
    native pools created at load, such as OpenBLAS's, have their own fork handlers)."""
    for name in (*WARM_IMPORTS, *COMPOSE_MODULES, *also):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    pip_freeze()  # every trial's run records it: read here once, inherited by each fork
    started = threading.active_count()
    if started != 1:
        raise SystemExit(f"warm worker: importing started {started - 1} thread(s): forking is unsafe")


def _serve(control: socket.socket) -> ChildRequest | None:
    """Fork a child per request until the sweep closes the control socket (or dies). Returns only in a child,
    with what it is to run; in the worker, returns None when the sweep is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the sweep and the trials; the worker goes with the sweep
    trials = Children(control)
    control.sendall(READY + json.dumps(dict(os.environ)).encode())  # the imports' own variables included
    while True:
        for key, _ in trials.sel.select():
            if key.data == "source":
                try:
                    message, fds, _flags, _addr = socket.recv_fds(control, MAX_MESSAGE, 4)
                except OSError:
                    message, fds = b"", []
                if not message:  # the sweep closed it, or died
                    for fd in fds:
                        os.close(fd)
                    trials.stop()
                    return None
                body = json.loads(message)
                conn = socket.socket(fileno=fds[0])
                request = ChildRequest(body["module"], list(body["args"]), dict(body["env"]), body["cwd"], list(fds[1:]))
                if trials.fork(conn, request.stdio) == 0:
                    return request
            elif key.data == "wake":
                trials.reap()
            else:  # a trial socket: its launcher closed it (gave up, or died): the trial goes too
                trials.hung_up(key.data)


class Children:
    """A worker's forked children, each with the socket of whoever asked for it, and the selector that wakes
    the worker for a request on `source`, a child's exit (SIGCHLD, through a wake-up pipe: its key's data is
    "wake") or a launcher that hung up (its key's data is the child's pid)."""

    def __init__(self, source: socket.socket) -> None:
        self.source = source
        self.live: dict[int, socket.socket] = {}  # child pid -> its launcher's socket
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD writes to the wake-up pipe
        self.sel = selectors.DefaultSelector()
        self.sel.register(source, selectors.EVENT_READ, "source")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")

    def fork(self, conn: socket.socket, stdio: list[int]) -> int:
        """Fork a child for the launcher at `conn`, whose stdio descriptors it takes. In the child: 0, with
        the worker's ends of everything dropped. In the worker: the child's pid, sent to its launcher."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = fork_quietly()
        if pid == 0:
            self.sel.close()
            for other in (self.source, *self.live.values(), conn):
                other.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            return 0
        for fd in stdio:
            os.close(fd)
        self.live[pid] = conn
        self.sel.register(conn, selectors.EVENT_READ, pid)
        send_message(conn, {"pid": pid})
        return pid

    def reap(self) -> None:
        """Tell each launcher whose child ended its exit code."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.live.pop(pid, None)
            if conn is None:  # killed after its launcher left
                continue
            self.sel.unregister(conn)
            send_message(conn, {"exit": os.waitstatus_to_exitcode(status)})
            conn.close()

    def hung_up(self, pid: int) -> None:
        """The launcher of child `pid` closed its socket (gave up, or died): the child goes too."""
        conn = self.live.pop(pid, None)
        if conn is None:  # reaped earlier in this same round of events (its socket is closed)
            return
        self.sel.unregister(conn)
        conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Kill every child still running, and wait for them."""
        for pid, conn in self.live.items():
            conn.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.live:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.live.clear()


def fork_quietly() -> int:
    with warnings.catch_warnings():
        # Python 3.12+ warns at fork in a process with threads: ours are only native library pools (OpenBLAS,
        # jemalloc) made at load, which handle fork themselves; no Python thread runs (checked in warm_up)
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def send_message(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # its launcher is gone: nothing to tell
        conn.sendall(json.dumps(message).encode())


def become(request: ChildRequest) -> None:
    """Turn this forked child into what `python -m` would start in the launcher's place: its stdio,
    working directory, environment, default signals; and it dies with the worker."""
    worker = os.getppid()
    protect = die_with_parent()
    if protect is not None:
        protect()
    if os.getppid() != worker:  # the worker died before we asked to die with it
        os._exit(128 + signal.SIGKILL)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(request.stdio):
        os.dup2(fd, target)
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(line_buffering=stream.isatty() or stream is sys.stderr)  # type: ignore[union-attr]
    start_dir = os.getcwd()
    os.chdir(request.cwd)
    if sys.path and sys.path[0] == start_dir:  # `python -m` puts its working directory first
        sys.path[0] = request.cwd
    os.environ.clear()
    os.environ.update(request.env)
    sys.argv = [sys.argv[0], *request.args]  # run_module replaces argv[0] with the module's file, as `-m` does
    _reseed()


def _reseed() -> None:
    """A new process draws its random state from the OS; a forked one would share the worker's (Python's
    `random` reseeds itself after fork, numpy and torch do not). Trials that set a seed set it anyway."""
    # imported here, not at the top: the sweep process imports this module and needs neither (the worker has
    # both imported already by warm_up, so this costs nothing)
    import numpy
    import torch

    numpy.random.seed()
    torch.seed()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
