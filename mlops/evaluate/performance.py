"""Inference benchmark of the exported ONNX model, and of the torch module for comparison.

Both runtimes are measured the same way so the numbers compare: one intra-op thread (ONNX Runtime
`intra_op_num_threads=1`, `torch.set_num_threads(1)` restored afterwards), because serving runs many
small requests side by side where each gets about one core, and because a thread pool's size would
otherwise decide the comparison rather than the runtime. Inputs are built before the clock starts:
only the runtime's call is timed (`time.perf_counter`).

- latency: `cfg.iterations` calls of one row each, cycling through the rows, after a short warm-up;
  `latencies_ms` keeps every timing for a histogram;
- throughput: rows per second at `cfg.batch_size`, over at least ~0.3 s and a minimum number of calls;
- peak memory: growth of the process's peak resident set (Linux `/proc`) from just before the
  measurement to its end, in MiB. For ONNX that includes creating the session (the weights); for torch
  the module already exists, so it is the inference working set only. None where `/proc` is missing
  or the peak cannot be reset (then the peak could be the training run's, which would mislead).

Speed figures are machine-dependent: they belong in benchmarks and gates on one machine, not tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.core.errors import MlopsError
from mlops.evaluate.scored import bundle_feeds

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from mlops.recipe.schema import PerformanceConfig

MIB = 2**20
WARMUP_CALLS = 10
THROUGHPUT_SECONDS = 0.3
THROUGHPUT_MIN_CALLS = 5
METRIC_KEYS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "throughput_rps", "peak_memory_mb",
               "model_size_mb")


def benchmark_onnx(bundle_dir: Path, frame: pd.DataFrame, cfg: PerformanceConfig) -> dict[str, Any]:
    """Latency, throughput, peak memory and file size of a bundle's `model.onnx` on raw rows."""
    import onnxruntime as ort


    if len(frame) == 0:
        raise MlopsError("the performance benchmark needs at least one row")
    feeds = bundle_feeds(bundle_dir, frame)
    n = len(frame)
    singles = [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(n)]
    take = np.arange(cfg.batch_size) % n
    batch = {k: v[take] for k, v in feeds.items()}
    model = bundle_dir / "model.onnx"

    before = _reset_peak_rss_mb()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    result = _measure(lambda f: session.run(None, f), singles, batch, cfg)
    result["peak_memory_mb"] = _peak_growth_mb(before)
    result["model_size_mb"] = model.stat().st_size / MIB
    return result


def benchmark_torch(module: torch.nn.Module, features: np.ndarray | dict[str, np.ndarray],
                    cfg: PerformanceConfig) -> dict[str, Any]:
    """The same measurement for the trained module on its own device: on preprocessed features [N, F], or on
    {input: array} for a network that takes a dict (pixels and token ids as the preprocess step made them)."""
    import torch

    arrays = features if isinstance(features, dict) else {"": features}
    n = len(next(iter(arrays.values())))
    if n == 0:
        raise MlopsError("the performance benchmark needs at least one row")
    device = next(module.parameters(), torch.empty(0)).device
    tensors = {k: torch.as_tensor(np.ascontiguousarray(v if v.dtype.kind in "iu" else v.astype(np.float32)))
               .to(device) for k, v in arrays.items()}
    pick = torch.as_tensor(np.arange(cfg.batch_size) % n, device=device)

    def rows(sel: Any) -> Any:
        chosen = {k: t[sel] for k, t in tensors.items()}
        return chosen if isinstance(features, dict) else chosen[""]

    singles = [rows(slice(i, i + 1)) for i in range(n)]
    batch = rows(pick)
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call(inp: Any) -> None:
        module(inp)
        sync()  # a CUDA call returns before the work is done: time the work, not the launch

    threads, was_training = torch.get_num_threads(), module.training
    torch.set_num_threads(1)
    module.eval()
    try:
        before = _reset_peak_rss_mb()
        with torch.inference_mode():
            result = _measure(call, singles, batch, cfg)
        result["peak_memory_mb"] = _peak_growth_mb(before)
    finally:
        torch.set_num_threads(threads)
        module.train(was_training)
    return result


def perf_metrics(onnx: dict[str, Any], torch: dict[str, Any] | None) -> dict[str, float]:
    """Flat metrics for tracking and gates: perf/<key> for ONNX, perf/torch/<key> for torch."""
    out: dict[str, float] = {}
    for prefix, result in (("perf/", onnx), ("perf/torch/", torch)):
        for key in METRIC_KEYS:
            value = (result or {}).get(key)
            if value is not None:
                out[prefix + key] = float(value)
    return out


def _measure(call: Callable[[Any], Any], singles: list[Any], batch: Any,
             cfg: PerformanceConfig) -> dict[str, Any]:
    for i in range(WARMUP_CALLS):
        call(singles[i % len(singles)])
    latencies: list[float] = []
    for i in range(cfg.iterations):
        inp = singles[i % len(singles)]
        start = time.perf_counter()
        call(inp)
        latencies.append((time.perf_counter() - start) * 1000.0)

    call(batch)  # the first call at a new shape may allocate: keep it off the clock
    calls, start = 0, time.perf_counter()
    while True:
        call(batch)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= THROUGHPUT_SECONDS and calls >= THROUGHPUT_MIN_CALLS:
            break
    p50, p95, p99 = (float(v) for v in np.percentile(np.asarray(latencies), [50, 95, 99]))
    return {"latency_p50_ms": p50, "latency_p95_ms": p95, "latency_p99_ms": p99,
            "throughput_rps": float(calls * cfg.batch_size / elapsed), "latencies_ms": latencies,
            "batch_size": int(cfg.batch_size), "iterations": int(cfg.iterations)}


def _reset_peak_rss_mb() -> float | None:
    """Reset the process's peak RSS to its current RSS and return that RSS (MiB); None if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")


def _peak_growth_mb(before: float | None) -> float | None:
    if before is None:
        return None
    peak = _proc_status_mb("VmHWM")
    return None if peak is None else max(peak - before, 0.0)


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        return None
    return None
