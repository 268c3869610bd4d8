"""The monitor's reading of a large prediction log in windows: rows read into Python and cut there, against
windows cut by the database, in one run, on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/monitor_windows.py [--rows 1000000] [--window 1000] [--stores sqlite,postgresql]

A log of `--rows` generated predictions (8 numeric and 4 categorical inputs, a binary answer) is written to each
store through the server's own writer (`open_log`), and a tenth of it to a second log, to see whether memory
follows the log's size. Then, each in its own process (its peak RSS is its own), every complete window of
`--window` rows is read:

* python: every row after the cursor read in keyset chunks, each row's JSON parsed by orjson, the windows cut
  in Python (`read_chunks` + `count_windows`, the monitor's reading before issue 18);
* sql bounds: the database cuts the windows (`window_bounds`: ROW_NUMBER over the filter), then one window's
  rows are read at a time and parsed by orjson (`read_windows`, what `mlops monitor` does);
* sql fields: as sql bounds, and the monitored fields extracted by the database too (json_extract / jsonb)
  instead of orjson (`read_windows(..., in_sql=True)`).

Needs PostgreSQL for its rows (default: a throwaway database on 127.0.0.1:5432, user postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.core.predlog import LogFilter  # noqa: E402
from mlops.core.predlog_store import open_log  # noqa: E402
from mlops.monitor.logstream import count_windows, read_chunks, read_windows  # noqa: E402

MODEL = "bench"
COLUMNS = {f"x{k}": "numeric" for k in range(8)} | {f"c{k}": "categorical" for k in range(4)}
VARIANTS = ("python", "sql bounds", "sql fields")
BATCH = 10_000


def build(target: str, rows: int) -> None:
    """`rows` predictions, written in batches through the log's writer, 20 per second of log time."""
    rng = np.random.default_rng(0)
    log = open_log(target, max_group=64)
    t0 = time.time() - rows * 0.05
    futures = []
    for start in range(0, rows, BATCH):
        n = min(BATCH, rows - start)
        x = np.round(rng.normal(size=(n, 8)), 6)
        p = rng.random(n)
        batch = []
        for i in range(n):
            k = start + i
            inputs = {f"x{j}": float(x[i, j]) for j in range(8)} | {f"c{j}": "abcdef"[(k * (j + 1)) % 6]
                                                                     for j in range(4)}
            outputs = {"label": "yes" if p[i] > 0.5 else "no", "probabilities": [1 - float(p[i]), float(p[i])]}
            batch.append((f"id{k}", t0 + k * 0.05, MODEL, "1", "champion", json.dumps(inputs), json.dumps(outputs),
                          1.0))
        futures.append(log.submit("predictions", batch))
    for future in futures:
        future.result(timeout=900)
    log.close()


def read(target: str, variant: str, window: int) -> dict[str, float]:
    """Every complete window read by `variant`; wall seconds, windows, rows and this process's peak RSS."""
    flt = LogFilter(MODEL)
    start = time.perf_counter()
    if variant == "python":
        windows = count_windows(read_chunks(target, flt, COLUMNS, "binary", in_sql=False), window)
    else:
        windows = iter(read_windows(target, flt, COLUMNS, "binary", size=window, in_sql=variant == "sql fields"))
    n = rows = 0
    for w in windows:
        n += 1
        rows += len(w.rows)
    wall = time.perf_counter() - start
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's across fork and exec)
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return {"wall_s": wall, "windows": n, "rows": rows, "peak_mb": int(hwm.split()[1]) / 1024}


def measure(target: str, variant: str, window: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--read", target, "--variant", variant, "--window", str(window)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--read", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read(args.read, args.variant, args.window)))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres import throwaway_database  # a benchmark's own throwaway database, as the tests make theirs

    small = max(args.rows // 10, args.window)
    results: list[tuple[str, int, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stores = args.stores.split(",")
        contexts = []
        targets: dict[str, list[tuple[int, str]]] = {}
        for store in stores:
            if store == "sqlite":
                targets[store] = [(n, str(Path(tmp) / f"log-{n}.sqlite")) for n in (small, args.rows)]
            else:
                pair = []
                for n in (small, args.rows):
                    ctx = throwaway_database(f"mlops_bench_windows_{n}")
                    info, name = ctx.__enter__()
                    contexts.append(ctx)
                    pair.append((n, f"postgresql://{info.user}@{info.host}:{info.port}/{name}"))
                targets[store] = pair
        try:
            for store, pairs in targets.items():
                for n, target in pairs:
                    t = time.perf_counter()
                    build(target, n)
                    print(f"{store}: wrote {n:,} rows in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
                    for variant in VARIANTS:  # interleaved per log, so background load hits them alike
                        r = measure(target, variant, args.window)
                        print(f"  {variant}: {r['wall_s']:.2f} s, {r['windows']} windows, peak {r['peak_mb']:.0f} MB",
                              file=sys.stderr, flush=True)
                        results.append((store, n, variant, r))
        finally:
            for ctx in contexts:
                ctx.__exit__(None, None, None)
    print(f"\nmonitor windows of {args.window:,} rows; {os.cpu_count()} cores; each read in its own process\n")
    print("| store | log rows | variant | wall s | x python | peak MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for store, n, variant, r in results:
        base = next(b for s, m, v, b in results if (s, m, v) == (store, n, "python"))
        print(f"| {store} | {n:,} | {variant} | {r['wall_s']:.2f} | {base['wall_s'] / r['wall_s']:.2f} | "
              f"{r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
