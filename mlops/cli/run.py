"""`mlops run` and `evaluate`: the commands that train or score through the engine (`sweep`: mlops.cli.sweep)."""

from __future__ import annotations

import argparse

from rich.console import Console

from mlops.cli.output import emit, headline
from mlops.cli.recipe import resolve_recipe
from mlops.core.errors import GateError
from mlops.engine import runner
from mlops.engine.evaluate_model import evaluate_model
from mlops.engine.multirun import expand
from mlops.engine.summary import MultirunSummary, RunSummary
from mlops.engine.validate import load_validated


def cmd_run(args: argparse.Namespace) -> int:
    resolve_recipe(args)  # -cp/-cn
    jobs = expand(args.overrides) if args.multirun else [args.overrides]
    # fail fast, before any server starts or anything is written
    validated = [load_validated(args.recipe, job) for job in jobs]
    result: RunSummary | MultirunSummary
    if args.multirun:
        result = runner.multirun(args.recipe, jobs, allow_failed_gates=args.allow_failed_gates, validated=validated)
        for summary in result.jobs:
            print_summary(summary, brief=True)
    else:
        result = runner.run(args.recipe, jobs[0], allow_failed_gates=args.allow_failed_gates, validated=validated[0])
        print_summary(result, brief=False)
    emit(result)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    loaded = load_validated(args.recipe, args.overrides)
    result = evaluate_model(loaded, args.model, args.allow_failed_gates)
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]evaluated {result.model}[/bold] (run {result.run_id})  "
                  + "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if headline(k)))
    console.print(f"  gates      {result.gates.outcome}")
    console.print(f"  report     {result.report}")
    emit(result)
    if result.gates.outcome == "failed":
        raise GateError("\n".join([f"{result.model} FAILED its gates:",
                                   *(f"  {line}" for line in result.gates.failures)]))
    return 0


def print_summary(s: RunSummary, brief: bool) -> None:
    console = Console(highlight=False, soft_wrap=True)
    shown = {k: v for k, v in s.metrics.items() if headline(k)}
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
    model = f"{s.model_name}/{s.model_version}" if s.model_version else f"{s.model_name} (not registered)"
    console.print(f"[bold]run {s.run_id}[/bold] {' '.join(s.overrides)}  model {model} "
                  f"aliases {','.join(s.aliases) or '-'}  {metrics}")
    if brief:
        return
    uri = s.tracking_uri
    console.print(f"  bundle     {s.bundle}")
    if s.weights:
        console.print(f"  weights    {s.weights}   (fine-tune from them: model.weights=...)")
    console.print(f"  data       {s.data_fingerprint}")
    console.print(f"  run dir    {s.run_dir}")
    console.print(f"  steps      {', '.join(f'{k}:{v}' for k, v in s.cache.items())}")
    gates = s.gates
    console.print(f"  gates      {gates.outcome} ({len(gates.verdicts)} gates"
                  + (f", vs champion {gates.champion}" if gates.champion else "") + ")")
    console.print(f"  report     {gates.report}")
    console.print(f"  look next  mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else f"  look next  {uri}")
    if s.model_version:
        alias = "champion" if "champion" in s.aliases else "challenger"
        console.print(f"  serve it   mlops serve {s.model_name}@{alias}   (or the bundle dir above)")
