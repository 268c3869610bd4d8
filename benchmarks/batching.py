"""Adaptive batching where the model call is the request's cost: `mlops serve` unbatched against `--batch-max 32
--batch-wait-ms 2`, on a wide MLP (30 inputs, two hidden layers of 2048: 17 MB of float32 weights).

    .venv/bin/python benchmarks/batching.py [--bundle DIR] [--hidden "[2048,2048]"] [--rounds 3] [--duration 5]

Why a second bundle: on the quickstart MLP (30-64-32-2) the model call is about a tenth of a served request, so
sharing it can save at most that (benchmarks/serve.py prints the batching goal on it, and docs/benchmarks.md
measures the bound). At batch 1 a wide layer's call is a matrix-vector product that reads every weight from
memory for one row; at batch 32 one read serves 32 rows. This script shows what the same batcher gives when the
model call is most of the request, and prints beside it what sharing the call alone would give (Amdahl,
from the measured call times).

Without --bundle it trains one: `mlops run recipes/quickstart.yaml model.hidden=<--hidden> trainer.max_epochs=2
gates=classification name=batching_wide` in a temporary MLOPS_HOME (about a minute on 2 cores). The model call
is timed in this process (`Predictor.predict`, one ONNX Runtime thread as the server runs it, best of 7); the
servers are pinned to one core and wrk to the other, measured interleaved, each alone on its core (as
benchmarks/serve.py does), V1 single-row bodies at 8 and 32 connections.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as bench  # noqa: E402 - beside this file: its servers, wrk driver and pinning

ROOT = bench.ROOT
CONNECTIONS = (8, 32)
UNBATCHED, BATCHED = "unbatched", "batched"


def train(home: Path, hidden: str) -> Path:
    env = os.environ | {"MLOPS_HOME": str(home)}
    cmd = [sys.executable, "-m", "mlops.cli", "run", "recipes/quickstart.yaml", f"model.hidden={hidden}",
           "trainer.max_epochs=2", "gates=classification", "name=batching_wide"]
    print(f"training: {' '.join(cmd[2:])}", flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    bundles = sorted(home.glob("runs/batching_wide/*/bundle"))
    if done.returncode != 0 or not bundles:
        raise SystemExit(f"training failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return bundles[-1]


def call_us(bundle: Path, row: dict[str, object], rows: int) -> float:
    """One `Predictor.predict` of `rows` rows, in microseconds: the best of 7 half-second loops."""
    from mlops.package.predictor import Predictor

    predictor = Predictor(bundle, max_batch=64)
    feeds = predictor.feeds_from_rows([row] * rows)
    predictor.predict(feeds)
    best = []
    for _ in range(7):
        started, calls = time.perf_counter(), 0
        while time.perf_counter() - started < 0.5:
            predictor.predict(feeds)
            calls += 1
        best.append((time.perf_counter() - started) / calls * 1e6)
    return min(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="a tabular bundle to serve (default: train the wide MLP)")
    parser.add_argument("--hidden", default="[2048,2048]", help="model.hidden of the bundle trained without "
                                                                "--bundle (default [2048,2048])")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per server and concurrency (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per timed wrk run (default 5)")
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds {args.rounds}: expected at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp_name:
        tmp = Path(tmp_name)
        bundle = Path(args.bundle).resolve() if args.bundle else train(tmp / "home", args.hidden)
        name, bodies = bench.request_bodies(bundle)
        row = json.loads(bodies["v1"])["instances"][0]
        one, batch = call_us(bundle, row, 1), call_us(bundle, row, 32)
        server_cpu, client_cpu, cpus = bench.pinned_cores()
        print(f"\nbatching benchmark: {bench.machine_line(server_cpu, client_cpu, cpus)}")
        print(bench.versions())
        print(f"bundle: {bundle} ({sum(f.stat().st_size for f in bundle.iterdir()) / 1e6:.1f} MB)")
        print(f"model call (Predictor.predict, one thread, best of 7): batch 1 {one:,.1f} us; batch 32 "
              f"{batch:,.1f} us, {batch / 32:,.1f} us a row ({one / (batch / 32):.1f}x less a row)")
        env = os.environ | {"MLOPS_HOME": str(tmp / "serve-home"), "PYTHONUNBUFFERED": "1"}
        env.pop("MLOPS_SERVE_TOKEN", None)
        ours = [sys.executable, "-m", "mlops.cli", "serve", str(bundle)]
        servers = [bench.Server(UNBATCHED, [*ours, "--log", str(tmp / "u.sqlite")]),
                   bench.Server(BATCHED, [*ours, "--log", str(tmp / "b.sqlite"), *bench.DEFAULT_BATCH_ARGS])]
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        try:
            for s in servers:
                bench.start(s, server_cpu, tmp, env)
            for s in servers:
                bench.wait_ready(s)
                bench.check_answers(s, name, bodies)
                if not s.ok.get("v1"):
                    raise SystemExit(f"{s.key} did not answer the V1 body: see above")
            script = tmp / "v1.lua"
            script.write_text(bench.LUA.format(body=bodies["v1"]))
            for s in servers:  # warm-up
                bench.measure(servers, s, s.infer_url(name, "v1"), script, 8, 2, client_cpu)
            for c in CONNECTIONS:
                for _ in range(args.rounds):
                    for s in servers:
                        runs.setdefault((s.key, c), []).append(
                            bench.measure(servers, s, s.infer_url(name, "v1"), script, c, args.duration, client_cpu))
        finally:
            bench.focus(servers, None)
            for s in servers:
                bench.stop(s)

    print(f"\n| server | {' | '.join(f'c={c} req/s | c={c} p99 ms' for c in CONNECTIONS)} |")
    print(f"|---|{'---|---|' * len(CONNECTIONS)}")
    medians = {key: bench.median_run(r) for key, r in runs.items()}
    for s in (UNBATCHED, BATCHED):
        cells = " | ".join(f"{medians[(s, c)]['rps']:,.0f} | {medians[(s, c)]['p99']:.2f}" for c in CONNECTIONS)
        print(f"| `mlops serve`{' --batch-max 32 --batch-wait-ms 2' if s == BATCHED else ''} | {cells} |")
    for c in CONNECTIONS:
        ratio = medians[(BATCHED, c)]["rps"] / medians[(UNBATCHED, c)]["rps"]
        rounds = [b["rps"] / u["rps"] for u, b in zip(runs[(UNBATCHED, c)], runs[(BATCHED, c)], strict=True)]
        request_us = 1e6 / medians[(UNBATCHED, c)]["rps"]
        share = min(one / request_us, 1.0)
        bound = 1 / (1 - share + share * (batch / 32) / one)
        print(f"- batched / unbatched at c={c}: **{ratio:.2f}x** [rounds {min(rounds):.2f}-{max(rounds):.2f}]"
              f"{' (goal >= 1.5x at c=32: ' + ('MET' if ratio >= 1.5 else 'NOT MET') + ')' if c == 32 else ''}; "
              f"the model call is {share:.0%} of an unbatched request ({one:,.0f} of {request_us:,.0f} us): "
              f"sharing it alone at batch 32 would give {bound:.2f}x (beyond that, a request that no longer waits "
              "behind a whole call per row also costs less of the rest)")
    print(f"load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
