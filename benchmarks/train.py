"""What the framework costs over a hand-written PyTorch loop, on the quickstart recipe.

    .venv/bin/python benchmarks/train.py [--repeats 3] [--epochs 15]

Each repetition, interleaved so that background load hits both sides alike:

* framework: `mlops run --json recipes/quickstart.yaml trainer.max_epochs=N trainer.early_stopping=null`
  in a subprocess with a fresh MLOPS_HOME (nothing cached). The fit time is the training step's own
  measurement (`trainer.fit` wall time), read back from the MLflow metric `train/fit_seconds`; the
  whole command's wall time is reported for context.
* plain loop: a fresh Python process (like the framework's) trains the same MLP on the same rows:
  breast_cancer, stratified 0.7/0.15/0.15 split with seed 42, features standardised on the training
  split; MLP 30->64->32->2 (ReLU, dropout 0.1), Adam lr 1e-3, batch 64, N epochs, a validation pass
  each epoch (batch 256, as the framework's DataModule), keeping the best weights by val loss
  (Lightning's ModelCheckpoint does the same, on disk). Timed from building the loaders to the end of
  the last epoch: imports and model construction are outside both timings.

Both sides run with OMP_NUM_THREADS=1 unless `--threads` says otherwise (see its help).

Reports medians over the repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SEED = 42
BATCH = 64
VAL_BATCH = 256  # mlops.train.datamodule.ArrayDataModule uses max(batch_size, 256) for validation


# --------------------------------------------------------------------------- plain PyTorch loop


def plain_once(epochs: int) -> dict[str, float]:
    """One plain-PyTorch training run; returns its loop time and final validation numbers."""
    import copy

    import numpy as np
    import torch
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    x, y = load_breast_cancer(return_X_y=True)
    idx = np.arange(len(x))
    train, rest = train_test_split(idx, train_size=0.7, random_state=SEED, stratify=y)
    val, test = train_test_split(rest, train_size=0.5, random_state=SEED, stratify=y[rest])
    train, val = np.sort(train), np.sort(val)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std[std == 0] = 1.0

    def tensors(rows: np.ndarray) -> TensorDataset:
        xs = ((x[rows] - mean) / std).astype(np.float32)
        return TensorDataset(torch.from_numpy(xs), torch.from_numpy(y[rows].astype(np.int64)))

    train_ds, val_ds = tensors(train), tensors(val)
    assert (len(train), len(val), len(test)) == (398, 85, 86), (len(train), len(val), len(test))

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)  # the recipe's trainer.deterministic: true
    model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))

    started = time.perf_counter()
    gen = torch.Generator().manual_seed(SEED)
    train_dl = DataLoader(train_ds, batch_size=BATCH, shuffle=True, generator=gen)
    val_dl = DataLoader(val_ds, batch_size=VAL_BATCH)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best_loss, best_state = float("inf"), None
    val_loss = val_acc = float("nan")
    for _ in range(epochs):
        model.train()
        train_sum, seen = 0.0, 0
        for xb, yb in train_dl:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            train_sum += loss.detach().item() * len(xb)  # epoch-mean train loss, as Lightning logs it
            seen += len(xb)
        model.eval()
        loss_sum = correct = n = 0.0
        with torch.inference_mode():
            for xb, yb in val_dl:
                out = model(xb)
                loss_sum += F.cross_entropy(out, yb).item() * len(xb)
                correct += (out.argmax(-1) == yb).sum().item()
                n += len(xb)
        val_loss, val_acc = loss_sum / n, correct / n
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(model.state_dict())
    seconds = time.perf_counter() - started
    assert best_state is not None
    return {"seconds": seconds, "val_loss": val_loss, "val_accuracy": val_acc, "train_loss": train_sum / seen}


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads > 0:  # both sides alike; 0 keeps torch's default, one thread per core
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


def run_plain(epochs: int, threads: int) -> dict[str, float]:
    """The plain loop in a fresh interpreter, as the framework's training also runs in a fresh one."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--plain-once", "--epochs", str(epochs)],
                          cwd=REPO, env=child_env(threads), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"plain loop failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the framework


def run_framework(epochs: int, prefect_home: Path, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mlops-bench-") as home:
        env = {k: v for k, v in child_env(threads).items()
               if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL")}
        env |= {"MLOPS_HOME": home, "PREFECT_HOME": str(prefect_home),
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        cmd = [sys.executable, "-m", "mlops.cli", "run", "--json", "recipes/quickstart.yaml",
               f"trainer.max_epochs={epochs}", "trainer.early_stopping=null"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"mlops run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        summary = json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])
        if summary["cache"].get("train") != "ran":
            raise SystemExit(f"the train step did not run (cache: {summary['cache']}): not a fresh MLOPS_HOME?")

        from mlflow import MlflowClient

        client = MlflowClient(summary["tracking_uri"], registry_uri=summary["tracking_uri"])
        run = client.get_run(summary["run_id"])
        val_loss = client.get_metric_history(summary["run_id"], "val/loss")
        return {
            "fit_seconds": run.data.metrics["train/fit_seconds"],
            "epochs": int(run.data.metrics["train/epochs"]),
            "run_seconds": summary["seconds"],  # the flow's own execute(): steps + tracking
            "wall_seconds": wall,  # the whole command: imports, Prefect server, everything
            "val_loss": sorted(val_loss, key=lambda m: m.step)[-1].value if val_loss else float("nan"),
        }


# --------------------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for both sides (default 1; 0 leaves torch's default of one per core). "
                             "This MLP is too small to gain from more threads, and with them a busy machine makes "
                             "the numbers swing several-fold: OpenMP threads wait on descheduled peers")
    parser.add_argument("--plain-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_once:
        print(json.dumps(plain_once(args.epochs)))
        return 0

    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    load_before = os.getloadavg()
    fw: list[dict[str, Any]] = []
    plain: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="mlops-bench-prefect-") as prefect_home:
        for i in range(1, args.repeats + 1):
            print(f"[{i}/{args.repeats}] mlops run ...", end=" ", flush=True)
            fw.append(run_framework(args.epochs, Path(prefect_home), args.threads))
            print(f"fit {fw[-1]['fit_seconds']:.2f} s, wall {fw[-1]['wall_seconds']:.1f} s; plain loop ...",
                  end=" ", flush=True)
            plain.append(run_plain(args.epochs, args.threads))
            print(f"{plain[-1]['seconds']:.2f} s", flush=True)
    for r in fw:
        if r["epochs"] != args.epochs:
            raise SystemExit(f"the framework ran {r['epochs']} epochs, not {args.epochs}: early stopping still on?")

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def each(rows: list[dict[str, Any]], key: str, fmt: str = "{:.2f}") -> str:
        return ", ".join(fmt.format(r[key]) for r in rows)

    fit, loop = med(fw, "fit_seconds"), med(plain, "seconds")
    rows = [
        ("framework fit (train/fit_seconds)", f"{fit:.2f} s", each(fw, "fit_seconds")),
        ("plain PyTorch loop", f"{loop:.2f} s", each(plain, "seconds")),
        ("ratio framework / plain", f"{fit / loop:.2f}x", ""),
        ("per epoch: framework / plain", f"{fit / args.epochs * 1000:.0f} / {loop / args.epochs * 1000:.0f} ms", ""),
        ("mlops run: flow (steps + tracking)", f"{med(fw, 'run_seconds'):.1f} s", each(fw, "run_seconds", "{:.1f}")),
        ("mlops run: whole command wall time", f"{med(fw, 'wall_seconds'):.1f} s", each(fw, "wall_seconds", "{:.1f}")),
        ("final val/loss: framework / plain", f"{med(fw, 'val_loss'):.4f} / {med(plain, 'val_loss'):.4f}", ""),
    ]
    threads = f"{args.threads} torch thread(s)" if args.threads > 0 else "default torch threads"
    title = (f"quickstart, {args.epochs} epochs, batch {BATCH}, no early stopping, {threads}; median of "
             f"{args.repeats} (load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs)")
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for col, justify in (("measurement", "left"), ("median", "right"), ("each run", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    except ImportError:
        print(title)
        for name, value, runs in rows:
            print(f"  {name:<38} {value:>16}   {runs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
