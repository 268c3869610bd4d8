"""Per-trial start-up of a sweep: trials forked from the warm worker vs a new process per trial
(`MLOPS_SWEEP_WARM=0`), in one run, on the same short quickstart trials.

    .venv/bin/python benchmarks/sweep_startup.py [--trials 4] [--epochs 3]

A trial's start-up is its wall time (Optuna's start to complete) minus its own training (`train/fit_seconds`,
logged on its MLflow run): imports, composing the recipe, opening MLflow, evaluating and logging.
"""

from __future__ import annotations

import argparse
import os
import statistics

from sweep import (
    quickstart_sweep,  # benchmarks/sweep.py, beside this script (run as a script: its folder is on sys.path)
)


def sweep(warm: bool, trials: int, epochs: int) -> dict[str, float]:
    from mlflow import MlflowClient

    overrides = [f"sweep.n_trials={trials}", "sweep.parallelism=1", "sweep.sampler=random", "sweep.pruner=none",
                 f"trainer.max_epochs={epochs}", "trainer.early_stopping=null",
                 "sweep.params={model.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}}"]
    with quickstart_sweep(overrides, {"MLOPS_SWEEP_WARM": "1" if warm else "0"}, "bench-sweep-startup-") as (
            result, study, total):
        client = MlflowClient(result["tracking_uri"])
        startup, walls, forked = [], [], 0
        for t in study.trials:
            if t.datetime_complete is None:
                continue
            wall = (t.datetime_complete - t.datetime_start).total_seconds()
            fit = client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics["train/fit_seconds"]
            walls.append(wall)
            startup.append(wall - fit)
            forked += bool(t.user_attrs.get("mlops.process", {}).get("warm"))
        return {"startup_s": statistics.median(startup), "max_s": max(startup), "wall_s": statistics.median(walls),
                "command_s": total, "forked": forked, "trials": len(startup)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    rows = {"new process": sweep(False, args.trials, args.epochs), "warm worker": sweep(True, args.trials, args.epochs)}
    print(f"\nsweep start-up per trial: {args.trials} trials x {args.epochs} epochs, quickstart MLP, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"{'trial process':>14} {'start-up s (median)':>20} {'(max)':>7} {'trial wall s':>13} {'command s':>10} "
          f"{'forked':>7}")
    for name, r in rows.items():
        print(f"{name:>14} {r['startup_s']:>20.2f} {r['max_s']:>7.2f} {r['wall_s']:>13.2f} {r['command_s']:>10.1f} "
              f"{r['forked']:>4}/{r['trials']}")
    print(f"start-up saved per trial: {rows['new process']['startup_s'] - rows['warm worker']['startup_s']:.2f} s")


if __name__ == "__main__":
    main()
