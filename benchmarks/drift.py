"""Drift detection: the monitor's fast path vs Evidently's `DataDriftPreset`, same data, same method, one run.

    .venv/bin/python benchmarks/drift.py [--rows 1000000] [--reference 100000] [--log-rows 1000000]
                                         [--only columns|embedding] [--embedding-reference 100000]
                                         [--embedding-rows 10000] [--embedding-dims 128] [--mmd-reference 30000]

Data: 20 numeric and 5 categorical columns; the current set has 1,000,000 rows, the reference 100,000. Some
columns drift (numeric shifts of 0.01 to 0.5 standard deviations and a change of scale; a new category; a
change of category shares), the rest do not. Both contenders start from the same pandas DataFrames and use
the same method and threshold per column: PSI (the monitor's default), then Wasserstein + Jensen-Shannon
(what Evidently picks by itself for a reference of more than 1000 rows). The fast path's time includes
preparing the reference (sorting, counting), which `mlops monitor` does once per run.

Then the streaming path: a prediction log of `--log-rows` rows written through the server's PredictionLog,
read back in chunks and judged in windows of 100,000 rows, and in one window of all rows, to show that peak
memory follows the window, not the log.

Then embeddings (an image or text model's `embedding` output): a float32 Gaussian reference of
`--embedding-reference` rows x `--embedding-dims` components and two windows of `--embedding-rows` rows, one
unshifted, one with 48 of 128 components (three eighths) shifted by half a standard deviation. Each of
Evidently's embedding methods (model, mmd, ratio), with its default threshold, judged by:
* fast: `EmbeddingReference.of` + `embedding_drift` (mlops.monitor.embedding), preparing the reference
  included; and the judge alone, on the reference prepared once (what each window of `mlops monitor` costs);
* Evidently report: `evidently_embedding_drift`, Evidently's legacy Report with `EmbeddingsDriftMetric`, which
  also draws a t-SNE picture of up to 2,500 + 2,500 rows (on one OpenMP thread);
* Evidently method: the method's own object called on the two frames, what the metric calls (no picture).
Evidently's mmd holds an (m + n)^2 kernel matrix; where that does not fit in memory the table says so, and
mmd is measured again on a reference of `--mmd-reference` rows, where it fits.

Peak memory is the process's peak resident set above what it held before the contender started (Linux:
the high-water mark is reset through /proc/self/clear_refs before each contender), the inputs built before.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_NUMERIC, N_CATEGORICAL = 20, 5
SHIFTS = {0: 0.01, 1: 0.05, 2: 0.1, 3: 0.2, 4: 0.5}  # numeric column -> mean shift in standard deviations
CATS = ["alpha", "beta", "gamma", "delta", "epsilon"]


def make_data(n_ref: int, n_cur: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ref: dict[str, Any] = {}
    cur: dict[str, Any] = {}
    for i in range(N_NUMERIC):
        ref[f"x{i}"] = rng.normal(0, 1, n_ref)
        cur[f"x{i}"] = rng.normal(SHIFTS.get(i, 0.0), 1.3 if i == 5 else 1.0, n_cur)
    p = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    for j in range(N_CATEGORICAL):
        ref[f"c{j}"] = rng.choice(CATS, n_ref, p=p).astype(object)
        q = p if j >= 2 else (np.array([0.3, 0.3, 0.2, 0.12, 0.08]) if j == 1 else p)
        values = rng.choice(CATS, n_cur, p=q).astype(object)
        if j == 0:
            values[rng.random(n_cur) < 0.05] = "zeta"  # a category the reference never saw
        cur[f"c{j}"] = values
    return pd.DataFrame(ref), pd.DataFrame(cur)


NUMERIC = [f"x{i}" for i in range(N_NUMERIC)]
CATEGORICAL = [f"c{j}" for j in range(N_CATEGORICAL)]


# --- memory ----------------------------------------------------------------------------------------------------


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float | None]:
    """(result, seconds, peak resident bytes above the start) of one call."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS high-water mark
        before = _status("VmRSS")
    except OSError:
        before = None
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    peak = None if before is None else max(_status("VmHWM") - before, 0)
    return result, seconds, peak


# --- contenders ------------------------------------------------------------------------------------------------


def fast_path(ref: pd.DataFrame, cur: pd.DataFrame, methods: dict[str, tuple[str, float]]) -> dict[str, bool | None]:
    from mlops.monitor.drift import CategoricalReference, NumericReference, categorical_drift, numeric_drift
    from mlops.monitor.schema_checks import category_counts

    out: dict[str, bool | None] = {}
    for c in NUMERIC:
        out[c] = numeric_drift(c, NumericReference.of(ref[c].to_numpy()), cur[c].to_numpy(), *methods[c]).drift
    for c in CATEGORICAL:
        out[c] = categorical_drift(c, CategoricalReference.of(ref[c].to_numpy()), category_counts(cur[c].to_numpy()),
                                   *methods[c]).drift
    return out


def with_evidently(ref: pd.DataFrame, cur: pd.DataFrame, methods: dict[str, tuple[str, float]]) -> dict[str, bool]:
    from mlops.monitor.evidently_report import run_drift, verdicts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = run_drift(ref, cur, NUMERIC, CATEGORICAL, methods, 0.5)
    return {c: v["drift"] for c, v in verdicts(snapshot).items()}


def streaming(log: Path, ref: pd.DataFrame, window: int, methods: dict[str, tuple[str, float]]) -> dict[str, int]:
    """What `mlops monitor` does per window, minus the model: read the log in chunks, cut windows, judge drift."""
    from mlops.monitor.drift import CategoricalReference, NumericReference, categorical_drift, numeric_drift
    from mlops.monitor.logstream import LogFilter, count_windows, read_chunks
    from mlops.monitor.schema_checks import category_counts

    profiles: dict[str, Any] = {c: NumericReference.of(ref[c].to_numpy()) for c in NUMERIC}
    profiles |= {c: CategoricalReference.of(ref[c].to_numpy()) for c in CATEGORICAL}
    columns = {c: "numeric" for c in NUMERIC} | {c: "categorical" for c in CATEGORICAL}
    windows = drifted = 0
    for w in count_windows(read_chunks(log, LogFilter("bench"), columns, "binary"), window):
        windows += 1
        for c in NUMERIC:
            drifted += bool(numeric_drift(c, profiles[c], w.rows.numeric[c], *methods[c]).drift)
        for c in CATEGORICAL:
            drifted += bool(categorical_drift(c, profiles[c], category_counts(w.rows.categorical[c]),
                                              *methods[c]).drift)
    return {"windows": windows, "drifted": drifted}


def write_log(path: Path, cur: pd.DataFrame, rows: int) -> None:
    from mlops.core.predlog import PredictionLog

    log = PredictionLog(path)
    records = cur.iloc[:rows].to_dict("records")
    out = json.dumps({"label": "1", "probabilities": [0.3, 0.7]})
    try:
        for start in range(0, rows, 50_000):
            batch = [(f"id{start + k}", 1.7e9 + start + k, "bench", "1", "champion", json.dumps(r), out, 1.0)
                     for k, r in enumerate(records[start:start + 50_000])]
            log.submit("predictions", batch).result(timeout=600)
    finally:
        log.close()


# --- embeddings ---------------------------------------------------------------------------------------------------

EMBEDDING_METHODS = ("model", "mmd", "ratio")
WINDOWS = ("unshifted", "shifted")


def make_embeddings(n_ref: int, n_cur: int, dims: int, window: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian reference and a window; the shifted one moves 3/8 of the components by 0.5 sd."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((n_ref, dims), dtype=np.float32)
    cur = rng.standard_normal((n_cur, dims), dtype=np.float32)
    if window == "shifted":
        cur[:, : (3 * dims) // 8] += 0.5
    return ref, cur


def embedding_worker(args: argparse.Namespace) -> None:
    """One contender on one method and window, in its own process: (seconds, peak, score, verdict)."""
    from evidently.legacy.metrics.data_drift import embedding_drift_methods

    from mlops.core.errors import MlopsError
    from mlops.monitor.embedding import EmbeddingReference, embedding_drift, evidently_embedding_drift

    kind, method, window = args.worker
    ref, cur = make_embeddings(args.embedding_reference, args.embedding_rows, args.embedding_dims, window)
    out: dict[str, Any] = {}
    if kind == "emb-fast":
        result, out["seconds"], out["peak"] = measure(
            lambda: embedding_drift("embedding", EmbeddingReference.of(ref, methods=(method,)), cur, method, None))
        prepared = EmbeddingReference.of(ref, methods=(method,))
        _, out["judge_seconds"], out["judge_peak"] = measure(
            lambda: embedding_drift("embedding", prepared, cur, method, None))
        out["score"], out["drift"] = result.score, result.drift
    else:
        # Evidently's mmd allocates its whole kernel matrix: cap the address space at the machine's memory so
        # that a matrix too large fails here instead of pushing the machine into the OOM killer
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (total, total))
        columns = [f"embedding_{j}" for j in range(ref.shape[1])]
        ref_frame, cur_frame = pd.DataFrame(ref, columns=columns), pd.DataFrame(cur, columns=columns)
        drift_method = getattr(embedding_drift_methods, method)()

        def call() -> tuple[float, bool]:
            if kind == "emb-report":
                return evidently_embedding_drift(ref, cur, method, None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                score, drift, _ = drift_method(cur_frame, ref_frame)
            return float(score), bool(drift)

        try:
            (out["score"], out["drift"]), out["seconds"], out["peak"] = measure(call)
        except (MemoryError, MlopsError) as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
    print("RESULT " + json.dumps(out))


def run_embedding_worker(kind: str, method: str, window: str, n_ref: int, args: argparse.Namespace) -> dict[str, Any]:
    import subprocess

    cmd = [sys.executable, __file__, "--worker", kind, method, window, "--embedding-reference", str(n_ref),
           "--embedding-rows", str(args.embedding_rows), "--embedding-dims", str(args.embedding_dims)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    print(f"  measured: {kind} {method} {window} ({n_ref:,} reference rows)", file=sys.stderr, flush=True)
    return json.loads(line.removeprefix("RESULT "))


def _s(r: dict[str, Any], key: str = "seconds") -> str:
    return "-" if key not in r else f"{r[key]:.2f}"


def _ratio(slow: dict[str, Any], fast: dict[str, Any], key: str = "seconds") -> str:
    return "-" if "seconds" not in slow or key not in fast else f"{slow['seconds'] / fast[key]:.1f}x"


def _verdict(r: dict[str, Any]) -> str:
    return "-" if "drift" not in r else ("drift" if r["drift"] else "no drift")


def _same(fast: dict[str, Any], *others: dict[str, Any]) -> str:
    judged = [o for o in others if "drift" in o]
    return "-" if not judged else ("yes" if all(o["drift"] == fast["drift"] for o in judged) else "no")


def embedding_section(args: argparse.Namespace) -> None:
    print(f"\n## Embedding drift: {args.embedding_rows:,}-row windows against a {args.embedding_reference:,}-row "
          f"reference, {args.embedding_dims} float32 components\n")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.1f} at the start\n")
    print("| method | reference rows | window | fast s (prepare + judge) | judge s (prepared) | Evidently report s "
          "| Evidently method s | speed-up vs report | speed-up vs method | judge speed-up vs method "
          "| verdict fast / report / method | same verdict | score fast / report / method "
          "| peak MB fast / judge / report / method |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|")
    notes: dict[tuple[str, int, str], str] = {}  # (method, reference rows, contender) -> why it gave no result
    plans = [(m, args.embedding_reference) for m in EMBEDDING_METHODS]
    if args.mmd_reference and args.mmd_reference != args.embedding_reference:
        plans.append(("mmd", args.mmd_reference))
    for method, n_ref in plans:
        for window in WINDOWS:
            fast, report, alone = (run_embedding_worker(k, method, window, n_ref, args)
                                   for k in ("emb-fast", "emb-report", "emb-method"))
            for label, r in (("Evidently report", report), ("Evidently method", alone)):
                if "error" in r:
                    notes.setdefault((method, n_ref, label), r["error"])
            scores = " / ".join("-" if "score" not in r else f"{r['score']:.4f}" for r in (fast, report, alone))
            peaks = " / ".join(_mb(r.get(k)) for r, k in ((fast, "peak"), (fast, "judge_peak"), (report, "peak"),
                                                        (alone, "peak")))
            print(f"| {method} | {n_ref:,} | {window} | {_s(fast)} | {_s(fast, 'judge_seconds')} | {_s(report)} "
                  f"| {_s(alone)} | {_ratio(report, fast)} | {_ratio(alone, fast)} "
                  f"| {_ratio(alone, fast, 'judge_seconds')} "
                  f"| {' / '.join(_verdict(r) for r in (fast, report, alone))} | {_same(fast, report, alone)} "
                  f"| {scores} | {peaks} |", flush=True)
    for (method, n_ref, label), error in notes.items():
        print(f"\n{label}, {method} on {n_ref:,} reference rows: no result ({error})")


# --- main: each measurement in a fresh process, so one contender's memory never counts for another --------------


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:,.0f}"


def _methods(num: str, cat: str) -> dict[str, tuple[str, float]]:
    from mlops.monitor.drift import threshold_for

    return ({c: (num, threshold_for(num, None)) for c in NUMERIC}
            | {c: (cat, threshold_for(cat, None)) for c in CATEGORICAL})


def worker(args: argparse.Namespace) -> None:
    """One measurement: build the same data (seeded), then time one contender and its peak memory."""
    kind, num, cat = args.worker
    ref, cur = make_data(args.reference, args.rows)
    import evidently as _  # noqa: F401 - imported before timing: its import is not the comparison

    import mlops.monitor.logstream  # noqa: F401

    if kind == "stream":
        del cur
        out, seconds, peak = measure(lambda: streaming(Path(args.log), ref, int(num), _methods("psi", "psi")))
    else:
        fn, methods = (fast_path if kind == "fast" else with_evidently), _methods(num, cat)
        out, seconds, peak = measure(lambda: fn(ref, cur, methods))
    print("RESULT " + json.dumps({"seconds": seconds, "peak": peak, "out": out}))


def run_worker(kind: str, a: str, b: str, args: argparse.Namespace, log: Path | None = None) -> dict[str, Any]:
    import subprocess

    cmd = [sys.executable, __file__, "--worker", kind, a, b, "--rows", str(args.rows), "--reference",
           str(args.reference)] + (["--log", str(log)] if log else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{kind} {a} {b} failed:\n{proc.stderr[-3000:]}")
    print(f"  measured: {kind} {a} {b}", file=sys.stderr, flush=True)
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=100_000)
    parser.add_argument("--log-rows", type=int, default=1_000_000, help="rows of the streamed log (0: skip)")
    parser.add_argument("--only", choices=("columns", "embedding"), help="run one part (default: both)")
    parser.add_argument("--embedding-reference", type=int, default=100_000)
    parser.add_argument("--embedding-rows", type=int, default=10_000, help="rows of an embedding window")
    parser.add_argument("--embedding-dims", type=int, default=128)
    parser.add_argument("--mmd-reference", type=int, default=30_000,
                        help="reference rows of the second mmd measurement, where Evidently's kernel matrix fits (0: skip)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        (embedding_worker if args.worker[0].startswith("emb-") else worker)(args)
        return
    if args.only != "embedding":
        columns_section(args)
    if args.only != "columns":
        embedding_section(args)


def columns_section(args: argparse.Namespace) -> None:

    plans = {"psi": ("psi", "psi"), "wasserstein + jensenshannon": ("wasserstein", "jensenshannon")}
    n = N_NUMERIC + N_CATEGORICAL
    print(f"\ndrift of {args.rows:,} rows x {N_NUMERIC} numeric + {N_CATEGORICAL} categorical columns against a "
          f"reference of {args.reference:,} rows ({os.cpu_count()} cores); peak = resident memory above the "
          "inputs")
    print(f"{'method':<28} {'fast path s':>11} {'Evidently s':>11} {'speed-up':>9} {'verdicts agree':>15} "
          f"{'fast peak MB':>13} {'Evidently peak MB':>18}")
    for label, (num, cat) in plans.items():
        fast = run_worker("fast", num, cat, args)
        ev = run_worker("evidently", num, cat, args)
        agree = sum(fast["out"][c] == ev["out"][c] for c in NUMERIC + CATEGORICAL)
        print(f"{label:<28} {fast['seconds']:>11.2f} {ev['seconds']:>11.2f} {ev['seconds'] / fast['seconds']:>8.1f}x "
              f"{f'{agree}/{n}':>15} {_mb(fast['peak']):>13} {_mb(ev['peak']):>18}", flush=True)
        print(f"{'':<28} drifted (fast):      {', '.join(c for c, d in fast['out'].items() if d)}")
        print(f"{'':<28} drifted (Evidently): {', '.join(c for c, d in ev['out'].items() if d)}", flush=True)

    if args.log_rows:
        with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
            log = Path(tmp) / "log.sqlite"
            started = time.perf_counter()
            write_log(log, make_data(10, args.log_rows, seed=1)[1], args.log_rows)
            write_s = time.perf_counter() - started
            size = log.stat().st_size
            print(f"\nstreaming a prediction log of {args.log_rows:,} rows ({size / 2**20:,.0f} MB on disk, written "
                  f"through PredictionLog in {write_s:.0f} s): read in chunks of 10,000 rows, PSI per window")
            print(f"{'window':<28} {'windows':>8} {'time s':>8} {'rows/s':>10} {'peak MB':>9}")
            for window in (100_000, args.log_rows):
                r = run_worker("stream", str(window), "-", args, log)
                print(f"{f'{window:,} rows':<28} {r['out']['windows']:>8} {r['seconds']:>8.1f} "
                      f"{args.log_rows / r['seconds']:>10,.0f} {_mb(r['peak']):>9}", flush=True)


if __name__ == "__main__":
    main()
