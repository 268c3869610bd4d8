"""`mlops runs`, `diff` and `reproduce`: tracked runs as people compare them."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from mlflow import MlflowClient

import mlops
from mlops.cli.output import emit
from mlops.core.registry import registry_client, tracking_uri
from mlops.recipe import LoadedRecipe, load_recipe
from mlops.tracking.compare import default_metrics, diff_runs, list_runs, render_diff, render_runs
from mlops.tracking.reproduce import rebuild_environment, reproduce


def _client(recipe: str | None = None) -> tuple[MlflowClient, LoadedRecipe | None]:
    loaded = load_recipe(recipe) if recipe else None
    return registry_client(tracking_uri(loaded.recipe.tracking.uri if loaded else None)), loaded


def cmd_runs(args: argparse.Namespace) -> int:
    client, loaded = _client(args.recipe)
    experiment = args.experiment or (loaded.recipe.experiment if loaded else None)
    rows = list_runs(client, experiment, args.metric, args.sort, args.limit)
    metrics = args.metric or default_metrics(rows)
    print(render_runs(rows, metrics), end="")
    emit(rows)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    client, _ = _client()
    rows = diff_runs(client, args.run_a, args.run_b)
    print(render_diff(rows, args.run_a, args.run_b), end="")
    emit(rows)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    client, _ = _client()
    if args.env:  # the same command again, on the run's own packages (mlops itself from this checkout)
        python = rebuild_environment(client, args.run_id, Path(args.env))
        root = Path(mlops.__file__).resolve().parent.parent
        return subprocess.run([str(python), "-m", "mlops.cli", "reproduce", args.run_id, *(["--json"] if args.json else [])],
                              env=os.environ | {"PYTHONPATH": str(root)}).returncode
    result = reproduce(client, args.run_id)
    if result["match"]:
        print(f"reproduced run {result['run_id']} exactly: same metrics, same per-epoch history, byte-identical ONNX "
              f"(sha256 {result['onnx_sha256'][:16]}); reproduction run {result['reproduction_run_id']}")
    else:
        print(f"run {result['run_id']} did NOT reproduce ({len(result['mismatches'])} differences):")
        for m in result["mismatches"]:
            print(f"  {m['field']}: original {m['original']!r}, now {m['now']!r}")
    emit(result)
    return 0 if result["match"] else 1
