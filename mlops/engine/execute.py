"""Execute a plan step by step with MLflow tracking. No Prefect here: `mlops.engine.runner` wraps each
step as a Prefect task, and a sweep trial's subprocess calls this directly (one flow, not one per trial)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops.core.atomic import write_text
from mlops.core.errors import GateError
from mlops.core.registry import experiment_id, registry_client, tracking_uri
from mlops.core.workspace import workspace
from mlops.engine.cache import Cache
from mlops.engine.lock import build_lock
from mlops.engine.plan import Plan, compile_plan
from mlops.engine.runlog import log_environment, log_step, start_run
from mlops.engine.steps import (
    assess,
    check_data,
    evaluate,
    export,
    gate,
    load_data,
    preprocess,
    register,
    split,
    train,
)
from mlops.engine.steps.common import RunContext, StepFn
from mlops.recipe import LoadedRecipe
from mlops.train.pruning import TrialPruned

# every step, in plan order: step `name` is the function `name` of module `mlops.engine.steps.<name>`
STEPS: dict[str, StepFn] = {fn.__name__: fn for fn in (
    load_data.load_data, check_data.check_data, split.split, preprocess.preprocess, train.train,
    evaluate.evaluate, export.export, assess.assess, gate.gate, register.register)}
StepRunner = Callable[[str], Callable[[Plan, RunContext, str], dict[str, Any]]]


def execute(loaded: LoadedRecipe, parent_run_id: str | None = None, *, until: str | None = None,
            prune: Any = None, cache: Cache | None = None, tags: dict[str, str] | None = None,
            step_runner: StepRunner | None = None, allow_failed_gates: bool = False) -> dict[str, Any]:
    """Run the recipe's plan (up to and including step `until`), tracking in MLflow. Returns the summary.

    `prune` links a sweep trial to its Optuna trial; `cache` replaces the shared step cache (reproduce
    uses an empty one to recompute everything). `step_runner` wraps each step (the Prefect runner
    passes a task factory); by default steps run as plain calls.
    """

    started = time.perf_counter()
    plan = compile_plan(loaded, cache)
    uri = tracking_uri(loaded.recipe.tracking.uri)
    client = registry_client(uri)
    exp = experiment_id(client, loaded.recipe.experiment, uri)
    run_tags = {"mlops.plan": json.dumps({s.name: s.key for s in plan.steps})} | (tags or {})
    run_id = start_run(client, exp, loaded, parent_run_id, run_tags)
    run_dir = _run_dir(loaded, run_id)
    print(f"mlops: run {run_id} of recipe '{loaded.recipe.name}' -> {run_dir}", flush=True)
    ctx = RunContext(loaded=loaded, run_id=run_id, tracking_uri=uri, prune=prune, allow_failed_gates=allow_failed_gates)
    cache_hits: dict[str, bool] = {}
    steps = plan.steps if until is None else plan.steps[: [s.name for s in plan.steps].index(until) + 1]
    try:
        for step in steps:
            hit = step.cached and plan.cache.has(step.name, step.key)
            result = (step_runner(step.name) if step_runner else run_step)(plan, ctx, step.name)
            ctx.results[step.name] = result
            cache_hits[step.name] = hit
            log_step(client, run_id, step.name, result, hit)
            print(f"mlops: step {step.name}: {'reused cached result' if hit else 'done'}", flush=True)
            if step.name == "load_data":
                lock = build_lock(loaded, result)
                log_environment(client, run_id, loaded, lock)
                write_text(run_dir / "recipe.lock", json.dumps(lock, indent=2, default=str))
    except TrialPruned as pruned:
        log_step(client, run_id, "train", pruned.args[0] | {"dir": "."}, False)
        client.set_tag(run_id, "mlops.trial_state", "pruned")
        client.set_terminated(run_id, "KILLED")
        return {"run_id": run_id, "state": "pruned", "history": pruned.args[0]["history"], "metrics": {}}
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    if until is not None:
        client.set_terminated(run_id, "FINISHED")
        return {"run_id": run_id, "state": "complete", "history": ctx.results["train"]["history"],
                "metrics": ctx.results.get("evaluate", {}).get("metrics", {}), "cache": cache_hits,
                "onnx_sha256": ctx.results.get("export", {}).get("onnx_sha256")}
    summary = _summary(plan, ctx, run_dir, cache_hits, time.perf_counter() - started)
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    client.log_artifact(run_id, str(run_dir / "summary.json"))
    if summary["gates"]["outcome"] == "failed":
        client.set_terminated(run_id, "FAILED")  # the model is registered for the record, but nothing promotes it
        raise GateError("\n".join([
            f"model {summary['model_name']} version {summary['model_version']} FAILED its gates: registered with "
            "tag gates=failed and no alias", *(f"  {line}" for line in summary["gates"]["failures"]),
            f"report: {summary['gates']['report']}",
            "(rerun with --allow-failed-gates to register it with aliases anyway)"]))
    client.set_terminated(run_id, "FINISHED")
    return summary


def run_step(plan: Plan, ctx: RunContext, name: str) -> dict[str, Any]:
    return plan.run(ctx, name, STEPS[name])


def _run_dir(loaded: LoadedRecipe, run_id: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    d = workspace().run_dir(loaded.recipe.name, stamp, run_id)
    d.mkdir(parents=True, exist_ok=True)
    write_text(d / "recipe.yaml", loaded.to_yaml())
    return d


def _summary(plan: Plan, ctx: RunContext, run_dir: Path, hits: dict[str, bool], seconds: float) -> dict[str, Any]:
    bundle = run_dir / "bundle"
    shutil.copytree(ctx.dir("export") / "bundle", bundle, dirs_exist_ok=True)
    reg = ctx.results["register"]
    gate = ctx.results["gate"]
    for name in gate["report"].values():
        shutil.copy2(ctx.dir("gate") / name, run_dir / name)
    train = ctx.results["train"]
    metrics = dict(ctx.results["evaluate"]["metrics"]) | ctx.results["assess"]["metrics"]
    metrics["train/epochs"] = train["epochs_run"]
    return {
        "run_id": ctx.run_id,
        "recipe": plan.loaded.recipe.name,
        "model_name": reg["model_name"],
        "model_version": reg["model_version"],
        "aliases": reg["aliases"],
        "metrics": metrics,
        "bundle": str(bundle),
        "data_fingerprint": ctx.results["load_data"]["fingerprint"],
        "recipe_hash": plan.loaded.hash,
        "overrides": plan.loaded.overrides,
        "split_sizes": ctx.results["split"]["sizes"],
        "parity_max_abs_diff": ctx.results["export"]["parity"]["max_abs_diff"],
        "gates": {"outcome": gate["outcome"], "failures": gate["failures"], "champion": gate["champion"],
                  "verdicts": [{k: v.get(k) for k in ("metric", "slice", "threshold", "value", "status", "detail")}
                               for v in gate["gates"]],
                  "report": str(run_dir / gate["report"]["html"])},
        "world_size": train["world_size"],
        "cache": {k: ("reused" if v else "ran") for k, v in hits.items()},
        "run_dir": str(run_dir),
        "tracking_uri": ctx.tracking_uri,
        "experiment": plan.loaded.recipe.experiment,
        "seconds": round(seconds, 2),
    }
