"""Sweep throughput: 8 short trials with parallelism 1 vs 2, in one run, on the same recipe.

    .venv/bin/python benchmarks/sweep.py [--trials 8] [--epochs 8]

Reports the wall time of the trial phase (first trial start to last trial end, from the Optuna study)
and of the whole `mlops sweep` command, and the speed-up of parallelism 2 over 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def quickstart_sweep(overrides: list[str], env: dict[str, str], prefix: str) -> Iterator[tuple[dict[str, Any], Any,
                                                                                              float]]:
    """`mlops sweep --json recipes/quickstart_sweep.yaml` with `overrides` in a temporary home: its JSON result,
    its Optuna study (readable while the context lasts) and the command's wall seconds."""
    import optuna

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        env = os.environ | {"MLOPS_HOME": f"{tmp}/.mlops", "PREFECT_HOME": f"{tmp}/.prefect",
                            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "240"} | env
        args = [sys.executable, "-m", "mlops.cli", "sweep", "--json", "recipes/quickstart_sweep.yaml", *overrides]
        started = time.perf_counter()
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
        total = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"sweep failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        yield result, optuna.load_study(study_name=result["study_name"], storage=result["storage"]), total


def sweep(parallelism: int, trials: int, epochs: int) -> dict[str, float]:
    overrides = [f"sweep.n_trials={trials}", f"sweep.parallelism={parallelism}", "sweep.sampler=random",
                 "sweep.pruner=none", f"trainer.max_epochs={epochs}", "trainer.early_stopping=null",
                 f"sweep.params={{trainer.max_epochs: {{type: int, low: {epochs}, high: {epochs + 1}}}}}"]
    with quickstart_sweep(overrides, {}, "bench-sweep-") as (result, study, total):
        done = [t for t in study.trials if t.datetime_complete]
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
        return {"trials_s": span, "command_s": total, "complete": result["trials"]["complete"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    rows = {p: sweep(p, args.trials, args.epochs) for p in (1, 2)}
    print(f"\nsweep of {args.trials} trials x {args.epochs} epochs, quickstart MLP, {os.cpu_count()} cores")
    print(f"{'parallelism':>12} {'trials phase s':>15} {'whole command s':>16} {'complete':>9}")
    for p, r in rows.items():
        print(f"{p:>12} {r['trials_s']:>15.1f} {r['command_s']:>16.1f} {r['complete']:>9}")
    print(f"speed-up (trials phase): {rows[1]['trials_s'] / rows[2]['trials_s']:.2f}x   "
          f"(whole command: {rows[1]['command_s'] / rows[2]['command_s']:.2f}x)")


if __name__ == "__main__":
    main()
