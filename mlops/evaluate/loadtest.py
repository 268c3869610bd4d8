"""The load test: the exported model in the real serving process, under concurrent requests.

`run_load_test` starts `mlops serve BUNDLE` (the command the serving image runs, its prediction log on, as in
production) on a free port of 127.0.0.1, waits until it is ready, and drives it with Locust for a warm-up and
then `duration_s` measured seconds. Each request is a KServe V1 body `{"instances": [row]}` built from held-out
rows, one row per request, cycling. Locust runs in a child process (`mlops.evaluate.locustfile`): it patches
the standard library with gevent on import, which must not happen to the process that trains and tracks.

What comes back (`LoadTestResult`): achieved requests per second, latency percentiles (p50/p95/p99 over every
measured request, failures included: a slow error is still slow), the error rate, the server's peak resident
memory (its high-water mark from /proc, else the largest sample), and the latency over time, second by second.
The figures are flattened to `load/...` metrics that gates read like any other.

Bounded in time: the server must be ready within `timeout_s`, Locust must finish within warm-up + duration +
`timeout_s` (plus a small margin), and the server's process group is stopped on any exit. Against a live server
(`url=`), nothing is started and the peak memory is unknown.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.ports import free_port
from mlops.evaluate import locustfile
from mlops.evaluate.robustness import request_instance
from mlops.package.bundle import read_bundle
from mlops.package.predictor import Predictor

# the serving process the load test starts (`python -m mlops.cli serve`): the layers keep evaluate from importing
# it, so the plan adds its code to the assess step's code version (`mlops.engine.plan.LOAD_TEST_SERVER`)
SERVER_MODULE = "mlops.cli"

if TYPE_CHECKING:
    import pandas as pd

    from mlops.recipe.schema import LoadTestConfig

MIB = 2**20
LOCUST_MARGIN_S = 30.0  # Locust's own start and stop, on top of warm-up + duration + timeout_s
BIND_TRIES = 3  # a free port is probed, not held: another process may take it before the server binds it
TOKEN_ENV = "MLOPS_SERVE_TOKEN"


class LatencyPoint(BaseModel):
    """One second of the measurement."""

    t_s: float  # seconds since the measurement started (the end of the second)
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class LoadTestResult(BaseModel):
    target: str  # the URL driven
    users: int
    rps_target: float | None
    duration_s: float  # measured seconds (warm-up excluded)
    warmup_s: float
    requests: int
    failures: int
    rps: float  # requests answered per measured second, failures included
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    error_rate: float
    peak_memory_mb: float | None  # the server process's peak resident memory; None against a live URL
    errors: dict[str, int]  # failures by kind (`HTTP 503`, `ConnectionRefusedError`), most frequent first
    series: list[LatencyPoint]

    def metrics(self) -> dict[str, float]:
        """The figures gates read: load/rps, load/p99_ms, load/error_rate, ... (absent ones left out)."""
        values = {"rps": self.rps, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "p99_ms": self.p99_ms,
                  "error_rate": self.error_rate, "peak_memory_mb": self.peak_memory_mb}
        return {f"load/{k}": float(v) for k, v in values.items() if v is not None}

    def line(self) -> str:
        p = " / ".join("-" if v is None else f"{v:.3g}" for v in (self.p50_ms, self.p95_ms, self.p99_ms))
        memory = "" if self.peak_memory_mb is None else f", server peak memory {self.peak_memory_mb:.0f} MiB"
        return (f"{self.requests} requests in {self.duration_s:g} s: {self.rps:.1f} rps, p50/p95/p99 {p} ms, "
                f"error rate {self.error_rate:.2%}{memory}")


@dataclass(frozen=True)
class Settings:
    """What one load test does: `LoadTestConfig`'s fields (which hold the defaults), or the `mlops loadtest` flags."""

    users: int
    duration_s: float
    warmup_s: float
    rows: int
    timeout_s: float
    rps: float | None = None  # absent: as fast as the server answers
    spawn_rate: float | None = None  # absent: every user at once

    @classmethod
    def of(cls, cfg: LoadTestConfig) -> Settings:
        return cls(users=cfg.users, duration_s=cfg.duration_s, warmup_s=cfg.warmup_s, rps=cfg.rps,
                   spawn_rate=cfg.spawn_rate, rows=cfg.rows, timeout_s=cfg.timeout_s)


def check_settings(settings: Settings) -> None:
    """Refuse what would run forever (a NaN duration) or not at all, naming the setting (`mlops loadtest`'s flag,
    the recipe's key in parentheses). Comparisons written so that NaN fails them."""
    problems = []
    if not settings.users >= 1:
        problems.append(f"--users (users) {settings.users}: expected at least 1")
    for flag, value, low in (("--duration (duration_s)", settings.duration_s, 0.0),
                             ("--timeout (timeout_s)", settings.timeout_s, 0.0)):
        if not low < value <= 86_400:
            problems.append(f"{flag} {value:g}: expected seconds in (0, 86400]")
    if not 0 <= settings.warmup_s <= 86_400:
        problems.append(f"--warmup (warmup_s) {settings.warmup_s:g}: expected seconds in [0, 86400]")
    for flag, rate in (("--rps (rps)", settings.rps), ("--spawn-rate (spawn_rate)", settings.spawn_rate)):
        if rate is not None and not 0 < rate < math.inf:
            problems.append(f"{flag} {rate:g}: expected a positive number per second (or leave it out)")
    if problems:
        raise MlopsError("the load test's settings: " + "; ".join(problems))


def run_load_test(bundle_dir: Path, rows: pd.DataFrame, settings: Settings, url: str | None = None) -> LoadTestResult:
    """Load-test the bundle: served here on loopback (url None), or the live server at `url` that serves it."""
    check_settings(settings)
    meta = read_bundle(bundle_dir)
    bodies = request_bodies(bundle_dir, rows, settings.rows)
    path = f"/v1/models/{meta.name}:predict"
    if url is not None:
        headers = {"authorization": f"Bearer {os.environ[TOKEN_ENV]}"} if os.environ.get(TOKEN_ENV) else {}
        return _drive(url.rstrip("/"), path, bodies, headers, settings, None)
    with tempfile.TemporaryDirectory(prefix="mlops-loadtest-") as tmp, \
            served(bundle_dir, Path(tmp), settings.timeout_s) as (base, proc):
        with PeakMemory(proc.pid) as peak:
            result = _drive(base, path, bodies, {}, settings, proc)
        return result.model_copy(update={"peak_memory_mb": peak.mb()})


def request_bodies(bundle_dir: Path, frame: pd.DataFrame, limit: int) -> list[str]:
    """Up to `limit` rows of `frame` as V1 request bodies, one row each, as a client sends them (images as
    {"b64": ...}, null for a missing value); rows the bundle cannot answer are left out."""
    predictor = Predictor(bundle_dir)
    missing = [c for c in predictor.columns if c not in frame.columns]
    if missing:
        raise MlopsError(f"the load test's rows lack the model's input column(s) {', '.join(missing)}: give rows "
                         "with the columns the model was trained on")
    bodies = []
    for i in range(min(len(frame), limit)):
        try:
            row = request_instance(predictor, frame.iloc[[i]])
            predictor.feeds_from_rows([row])  # a row the server would refuse measures the error path: skip it
        except Exception:  # noqa: BLE001 - the reason does not matter here, only that it is not a good request
            continue
        bodies.append(json.dumps({"instances": [row]}, default=_plain))
    if not bodies:
        raise MlopsError(f"none of the {min(len(frame), limit)} rows given to the load test is a valid request for "
                         f"model '{predictor.name}'")
    return bodies


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextmanager
def served(bundle_dir: Path, tmp: Path, timeout_s: float) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`mlops serve BUNDLE` on a free loopback port, its prediction log and output under `tmp`, until the block
    ends: (base URL, process). Its whole process group is stopped however the block ends."""
    # the token is for a deployed server's clients; this private one answers only us
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | {"PYTHONUNBUFFERED": "1"}
    output = tmp / "server.out"
    for _ in range(BIND_TRIES):
        port = free_port()
        with open(output, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", SERVER_MODULE, "serve", str(bundle_dir), "--host", "127.0.0.1",
                                     "--port", str(port), "--log", str(tmp / "predictions.sqlite")],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            ready = _wait_ready(port, proc, timeout_s)
            if ready:
                yield f"http://127.0.0.1:{port}", proc
                return
        finally:
            stop(proc)
        said = output.read_text(errors="replace")
        if "address already in use" not in said.lower():
            raise MlopsError(f"the model server for the load test did not become ready in {timeout_s:g} s:\n"
                             f"{said[-2000:]}")
    raise MlopsError(f"the model server for the load test found no free port in {BIND_TRIES} tries")


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """True once GET /v2/health/ready answers 200; False if the server exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    time.sleep(0.2)  # a server that lost the port exits at once: make sure the answer was ours
                    return proc.poll() is None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM to the process group (started with start_new_session), SIGKILL after `timeout` s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


class PeakMemory:
    """The peak resident memory of a process and its children while the block runs: the kernel's high-water mark
    (/proc/PID/status VmHWM) where there is one, else the largest of samples taken every 0.1 s."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.sampled = 0
        self.hwm: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.hwm = _high_water_mark(self.pid)

    def _sample(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            while not self._stop.is_set():
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                self.sampled = max(self.sampled, rss)
                self._stop.wait(self.interval)
        except psutil.Error:  # the process ended: the figures so far stand
            pass

    def mb(self) -> float | None:
        best = max(self.hwm or 0, self.sampled)
        return best / MIB if best else None


def _high_water_mark(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _drive(base: str, path: str, bodies: list[str], headers: dict[str, str], settings: Settings,
           server: subprocess.Popen[bytes] | None) -> LoadTestResult:
    """Run Locust against `base` + `path` in a child process; the summary of what it measured."""
    pace = f" at {settings.rps:g} rps" if settings.rps else ""
    say(f"load test: {settings.users} users{pace} for {settings.duration_s:g} s (after {settings.warmup_s:g} s "
        f"warm-up) against {base}{path}")
    with tempfile.TemporaryDirectory(prefix="mlops-locust-") as tmp:
        job, out, log = Path(tmp) / "job.json", Path(tmp) / "samples.json", Path(tmp) / "locust.out"
        job.write_text(json.dumps({
            "host": base, "path": path, "bodies": bodies, "headers": headers, "users": settings.users,
            "rps": settings.rps, "spawn_rate": settings.spawn_rate, "warmup_s": settings.warmup_s,
            "duration_s": settings.duration_s, "timeout_s": settings.timeout_s, "out": str(out)}))
        limit = settings.warmup_s + settings.duration_s + settings.timeout_s + LOCUST_MARGIN_S
        with open(log, "wb") as sink:
            child = subprocess.Popen([sys.executable, "-m", locustfile.__name__, str(job)], stdout=sink,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = child.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop(child)
        said = log.read_text(errors="replace")[-2000:]
        if code is None:
            raise MlopsError(f"the load test did not finish in {limit:g} s (Locust's output:\n{said})")
        if code != 0 or not out.is_file():
            if server is not None and server.poll() is not None:
                raise MlopsError(f"the model server exited ({server.returncode}) during the load test")
            raise MlopsError(f"Locust failed (exit {code}):\n{said}")
        raw = json.loads(out.read_text())
    result = summarise(raw["samples"], raw["start"], raw["end"])
    return LoadTestResult(target=base + path, users=settings.users, rps_target=settings.rps,
                          warmup_s=settings.warmup_s, peak_memory_mb=None, **result)


def summarise(samples: list[list[Any]], start: float, end: float) -> dict[str, Any]:
    """Locust's raw samples ([end time, latency ms, error or None]) of the measured window [start, end] as the
    result's figures; the warm-up's samples, and those ending after the window, are left out."""
    measured = [s for s in samples if start <= s[0] <= end]
    times = np.asarray([s[0] for s in measured], dtype=np.float64)
    latencies = np.asarray([s[1] for s in measured], dtype=np.float64)
    failed = np.asarray([s[2] is not None for s in measured], dtype=bool)
    errors: dict[str, int] = {}
    for s in measured:
        if s[2] is not None:
            errors[s[2]] = errors.get(s[2], 0) + 1
    duration = max(end - start, 1e-9)
    seconds = max(int(np.ceil(duration - 0.25)), 1)  # a sleep overshoots: its tail joins the last second
    bucket = np.minimum((times - start).astype(np.int64), seconds - 1)  # the last, partial second takes `end`
    series = [LatencyPoint(t_s=round(min(k + 1, duration), 3), requests=int((bucket == k).sum()),
                           failures=int(failed[bucket == k].sum()), **_percentiles(latencies[bucket == k]))
              for k in range(seconds)]
    failures = int(failed.sum())
    return {"duration_s": round(duration, 3), "requests": len(measured), "failures": failures,
            "rps": len(measured) / duration,
            "error_rate": failures / len(measured) if measured else 1.0,  # nothing answered: all failed
            "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])), "series": series,
            **_percentiles(latencies)}


def _percentiles(latencies: np.ndarray) -> dict[str, float | None]:
    if latencies.size == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def schema_rows(bundle_dir: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """Rows drawn from the training data's schema in the bundle (numbers within each column's range,
    categories among those seen, missing values as often as in training), for a load test with no rows given.
    Images and texts cannot be made up: they need rows (`--data`)."""
    import pandas as pd

    meta = read_bundle(bundle_dir)
    media = [i.name for i in meta.inputs if not i.scalar]
    if media:
        raise MlopsError(f"model '{meta.name}' takes images or texts ({', '.join(media)}): give rows to send with "
                         "--data FILE (CSV or Parquet with its input columns)")
    rng = np.random.default_rng(seed)
    columns = {c.name: c for c in meta.data_schema.columns}
    frame: dict[str, Any] = {}
    for spec in meta.inputs:
        col = columns.get(spec.name)
        if spec.kind == "numeric":
            lo = col.min if col is not None and col.min is not None else 0.0
            hi = col.max if col is not None and col.max is not None else 1.0
            values: list[Any] = list(rng.uniform(lo, hi, n))
        else:
            choices = (col.categories if col is not None else None) or ["a"]
            values = [choices[i] for i in rng.integers(0, len(choices), n)]
        missing = rng.random(n) < (col.missing_rate if col is not None else 0.0)
        frame[spec.name] = [None if m else v for v, m in zip(values, missing, strict=True)]
    return pd.DataFrame(frame)


def read_rows(path: Path) -> pd.DataFrame:
    """`--data FILE`: the rows to send, from a CSV or Parquet file."""
    import pandas as pd

    if not path.is_file():
        raise MlopsError(f"--data {path}: no such file (give a CSV or Parquet file of rows to send)")
    try:
        return pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise MlopsError(f"--data {path}: cannot read it as {'Parquet' if path.suffix == '.parquet' else 'CSV'}: "
                         f"{exc}") from exc


def check_bounds(result: LoadTestResult, bounds: dict[str, tuple[float | None, float | None]]) -> list[str]:
    """What breaks the bounds {load/metric: (min, max)}, one line each; a figure that was not measured (the peak
    memory of a live server) breaks its bound too: never a silent pass."""
    values = result.metrics()
    out = []
    for metric, (lo, hi) in bounds.items():
        value = values.get(metric)
        if value is None:
            out.append(f"{metric} was not measured")
        elif lo is not None and value < lo:
            out.append(f"{metric} {value:.4g} is below its minimum {lo:g}")
        elif hi is not None and value > hi:
            out.append(f"{metric} {value:.4g} is above its maximum {hi:g}")
    return out
