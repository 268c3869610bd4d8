"""Batch scoring throughput: what validation, chunked Parquet parts and resumability cost over bare ONNX Runtime,
and what Spark local mode does with the same bundle.

    .venv/bin/python benchmarks/batch.py [--rows 200000] [--chunk-rows 10000] [--repeats 3] [--no-spark]

The model is the toy bundle of the tests (age, income, city -> preprocessing graph, a linear layer, softmax):
tiny on purpose, so the figures show the per-row cost of everything around the model. Rows are random, 0.1 %
of them invalid. Measured in this process, each repetition interleaved:

* bare ORT: the CSV read with pandas (typed), columns cast to the model's arrays with numpy, one
  `session.run` per chunk, nothing written: the floor (no validation, no output).
* mlops local, CSV and Parquet: `score_local` end to end (read as text or typed, every value judged by the
  server's column check, predictions and errors written as Parquet parts, manifest, final file).
* mlops spark, CSV: `score_spark` on `local[*]` (session started once, outside the timing; the first,
  warm-up job is not counted).

Reports rows per second (median over the repetitions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_data(directory: Path, rows: int) -> tuple[Path, Path]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.normal(40, 10, rows).round(3).astype(object),
                          "income": rng.normal(50, 15, rows).round(3), "city": rng.choice(["a", "b", "c"], rows)})
    frame.loc[rng.choice(rows, max(rows // 1000, 1), replace=False), "age"] = "unknown"
    frame.to_csv(directory / "rows.csv", index=False)
    typed = frame.copy()
    typed["age"] = pd.to_numeric(typed["age"], errors="coerce")
    typed.to_parquet(directory / "rows.parquet", index=False)
    return directory / "rows.csv", directory / "rows.parquet"


def bare_ort(bundle: Path, csv: Path, chunk_rows: int) -> int:
    import numpy as np
    import onnxruntime as ort
    import pandas as pd

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    n = 0
    for frame in pd.read_csv(csv, chunksize=chunk_rows):
        feeds = {"age": pd.to_numeric(frame["age"], errors="coerce").to_numpy(np.float32).reshape(-1, 1),
                 "income": frame["income"].to_numpy(np.float32).reshape(-1, 1),
                 "city": frame["city"].astype(str).to_numpy(object).reshape(-1, 1)}
        session.run(None, feeds)
        n += len(frame)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-spark", action="store_true")
    args = parser.parse_args()

    from mlops.score.batch import score_local
    from mlops.score.source import open_input
    from tests.serve_fixtures import build_bundle

    work = Path(tempfile.mkdtemp(prefix="mlops-bench-batch-"))
    bundle = build_bundle(work / "bundle")
    csv, parquet = make_data(work, args.rows)
    spark = None
    if not args.no_spark:
        from mlops.score.spark import score_spark, spark_session

        spark = spark_session("local[*]")
        score_spark(open_input(csv), bundle, None, str(work / "warmup"), args.chunk_rows, spark=spark)

    timings: dict[str, list[float]] = {}

    def timed(name: str, fn: object) -> None:
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        timings.setdefault(name, []).append(time.perf_counter() - started)

    for _ in range(args.repeats):
        timed("bare ORT (CSV, no validation, no output)", lambda: bare_ort(bundle, csv, args.chunk_rows))
        timed("mlops local, CSV", lambda: score_local(open_input(csv), bundle, None, work / "a.parquet",
                                                      args.chunk_rows, progress=False))
        timed("mlops local, Parquet", lambda: score_local(open_input(parquet), bundle, None, work / "b.parquet",
                                                          args.chunk_rows, progress=False))
        if spark is not None:
            timed(f"mlops spark local[{os.cpu_count()}], CSV",
                  lambda: score_spark(open_input(csv), bundle, None, str(work / "c.parquet"), args.chunk_rows,
                                      spark=spark))
    if spark is not None:
        spark.stop()

    print(f"\nbatch scoring, {args.rows} rows, chunks of {args.chunk_rows}, {os.cpu_count()} CPUs, "
          f"median of {args.repeats}")
    print(f"{'path':<48} {'seconds':>8} {'rows/s':>10}")
    for name, seconds in timings.items():
        s = statistics.median(seconds)
        print(f"{name:<48} {s:>8.2f} {args.rows / s:>10.0f}")


if __name__ == "__main__":
    main()
