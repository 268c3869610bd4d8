"""Run a plan as a Prefect flow: one task per step, our own content-keyed cache in front of each.

Prefect's ephemeral API is used unless PREFECT_API_URL points at a server. Multirun jobs are subflows
of one parent flow in this process (one temporary server, not one per job), each its own MLflow run
nested under a parent run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops.engine.plan import Plan, compile_plan
from mlops.engine.steps import STEPS, RunContext
from mlops.recipe import LoadedRecipe, load_recipe
from mlops.tracking.store import mlops_home, tracking_uri


def configure_prefect() -> None:
    """Defaults that make Prefect's temporary server quiet and patient (see PITFALLS)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")


configure_prefect()

from prefect import flow, task  # noqa: E402  (configured first: Prefect reads settings at import)
from prefect.cache_policies import NO_CACHE  # noqa: E402


def execute(loaded: LoadedRecipe, parent_run_id: str | None = None) -> dict[str, Any]:
    """Run every step of the recipe's plan, tracking in MLflow. Returns the run summary."""
    from mlflow import MlflowClient

    from mlops.tracking.lock import build_lock
    from mlops.tracking.log import log_environment, log_step, start_run
    from mlops.tracking.store import experiment_id

    started = time.perf_counter()
    plan = compile_plan(loaded)
    uri = tracking_uri(loaded.recipe)
    client = MlflowClient(uri)
    exp = experiment_id(client, loaded.recipe.experiment, uri)
    run_id = start_run(client, exp, loaded, parent_run_id, {"mlops.plan": json.dumps({s.name: s.key for s in plan.steps})})
    run_dir = _run_dir(loaded, run_id)
    print(f"mlops: run {run_id} of recipe '{loaded.recipe.name}' -> {run_dir}", flush=True)
    ctx = RunContext(loaded=loaded, run_id=run_id, tracking_uri=uri)
    cache_hits: dict[str, bool] = {}
    try:
        for step in plan.steps:
            hit = step.cached and plan.cache.has(step.name, step.key)
            result = step_task.with_options(name=step.name)(plan, ctx, step.name)
            ctx.results[step.name] = result
            cache_hits[step.name] = hit
            log_step(client, run_id, step.name, result, hit)
            print(f"mlops: step {step.name}: {'reused cached result' if hit else 'done'}", flush=True)
            if step.name == "load_data":
                lock = build_lock(loaded.hash, loaded.resolved(), {"fingerprint": result["fingerprint"],
                                  "dvc": result.get("dvc"), "source": result["source"]}, loaded.recipe.seed,
                                  loaded.path.parent)
                log_environment(client, run_id, loaded, lock)
                _write(run_dir / "recipe.lock", json.dumps(lock, indent=2, default=str))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    summary = _summary(plan, ctx, run_dir, cache_hits, time.perf_counter() - started)
    _write(run_dir / "summary.json", json.dumps(summary, indent=2))
    client.log_artifact(run_id, str(run_dir / "summary.json"))
    client.set_terminated(run_id, "FINISHED")
    return summary


@task(cache_policy=NO_CACHE, persist_result=False)
def step_task(plan: Plan, ctx: RunContext, name: str) -> dict[str, Any]:
    step = plan.step(name)
    fn = STEPS[name]
    if step.cached:
        if plan.cache.has(name, step.key):
            return plan.cache.load(name, step.key)
        return plan.cache.compute(name, step.key, lambda out: fn(ctx, out))
    out = mlops_home() / "runs" / "steps" / name / (ctx.run_id or "local")
    out.mkdir(parents=True, exist_ok=True)
    return fn(ctx, out) | {"dir": str(out)}


def _run_dir(loaded: LoadedRecipe, run_id: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    d = mlops_home() / "runs" / loaded.recipe.name / f"{stamp}-{run_id[:8]}"
    d.mkdir(parents=True, exist_ok=True)
    _write(d / "recipe.yaml", loaded.to_yaml())
    return d


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _summary(plan: Plan, ctx: RunContext, run_dir: Path, hits: dict[str, bool], seconds: float) -> dict[str, Any]:
    bundle = run_dir / "bundle"
    shutil.copytree(ctx.dir("export") / "bundle", bundle, dirs_exist_ok=True)
    reg = ctx.results["register"]
    train = ctx.results["train"]
    metrics = dict(ctx.results["evaluate"]["metrics"])
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
        "world_size": train["world_size"],
        "cache": {k: ("reused" if v else "ran") for k, v in hits.items()},
        "run_dir": str(run_dir),
        "tracking_uri": ctx.tracking_uri,
        "experiment": plan.loaded.recipe.experiment,
        "seconds": round(seconds, 2),
    }


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return " ".join([Path(params["recipe"]).stem, *params.get("overrides", [])])


def _multirun_name() -> str:
    from prefect.runtime import flow_run

    return f"{Path(flow_run.parameters['recipe']).stem} multirun"


@flow(name="mlops-run", flow_run_name=_run_name, validate_parameters=False)
def run_flow(recipe: str, overrides: list[str], parent_run_id: str | None = None) -> dict[str, Any]:
    """Train, evaluate, export and register one recipe (the deployable entrypoint)."""
    return execute(load_recipe(recipe, overrides), parent_run_id)


@flow(name="mlops-multirun", flow_run_name=_multirun_name, validate_parameters=False)
def multirun_flow(recipe: str, jobs: list[list[str]]) -> dict[str, Any]:
    """Hydra-style multirun: one subflow and one nested MLflow run per combination of overrides."""
    from mlflow import MlflowClient

    from mlops.tracking.store import experiment_id

    loaded = [load_recipe(recipe, job) for job in jobs]  # validate every job before running any
    first = loaded[0]
    uri = tracking_uri(first.recipe)
    client = MlflowClient(uri)
    exp = experiment_id(client, first.recipe.experiment, uri)
    parent = client.create_run(exp, run_name=f"{first.recipe.name} multirun ({len(jobs)} jobs)",
                               tags={"mlops.multirun": "true", "mlops.recipe": str(first.path),
                                     "mlops.jobs": json.dumps(jobs)}).info.run_id
    summaries = []
    try:
        for i, job in enumerate(jobs, 1):
            print(f"mlops: multirun job {i}/{len(jobs)}: {' '.join(job) or '(no overrides)'}", flush=True)
            summaries.append(run_flow(recipe, job, parent_run_id=parent))
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return {"parent_run_id": parent, "jobs": summaries}


def run(recipe: str | Path, overrides: list[str]) -> dict[str, Any]:
    return run_flow(str(Path(recipe).resolve()), overrides)


def multirun(recipe: str | Path, jobs: list[list[str]]) -> dict[str, Any]:
    return multirun_flow(str(Path(recipe).resolve()), jobs)
