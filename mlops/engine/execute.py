"""Execute a plan step by step with MLflow tracking. No Prefect here: `mlops.engine.runner` wraps each
step as a Prefect task, and a sweep trial's subprocess calls this directly (one flow, not one per trial)."""

from __future__ import annotations

import importlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mlops.core.atomic import write_text
from mlops.core.errors import GateError
from mlops.core.log import say
from mlops.core.refs import CHAMPION, pinned_identity
from mlops.core.registry import experiment_id, registry_client, tracking_uri
from mlops.core.workspace import workspace
from mlops.engine.cache import Cache
from mlops.engine.lock import build_lock
from mlops.engine.plan import STEP_PACKAGE, Plan, Step, compile_plan
from mlops.engine.results import (
    AssessResult,
    CheckDataResult,
    EvaluateResult,
    ExportResult,
    LoadDataResult,
    PreprocessResult,
    RegisterResult,
    SplitResult,
    StepOutput,
)
from mlops.engine.runlog import log_environment, log_step, start_run
from mlops.engine.steps.common import RunContext, StepFn
from mlops.engine.summary import GateSummary, RunSummary, TrialRun, VerdictBrief
from mlops.evaluate.gates import GateDecision
from mlops.recipe import LoadedRecipe
from mlops.train.pruning import TrialPruned
from mlops.train.result import TrainResult, checkpoint_dir, recorded_run

# every step, in plan order, with the model it returns: step `name` is the function `name` of module
# `mlops.engine.steps.<name>` (`step_fn`). A step reused from the cache is parsed into its model here, without
# importing its module: train, evaluate, export and assess import torch and Lightning (about 4 s), which a
# rerun whose training is cached never needs. A test holds each function's return annotation to this table.
STEP_RESULTS: dict[str, type[BaseModel]] = {
    "load_data": LoadDataResult, "check_data": CheckDataResult, "split": SplitResult,
    "preprocess": PreprocessResult, "train": TrainResult, "evaluate": EvaluateResult, "export": ExportResult,
    "assess": AssessResult, "gate": GateDecision, "register": RegisterResult}
StepRunner = Callable[[str], Callable[[Plan, RunContext, str], StepOutput[Any]]]


@dataclass
class _Run:
    """One MLflow run of a plan, started and not yet ended."""

    plan: Plan
    ctx: RunContext
    client: Any
    run_dir: Path
    started: float


def execute(loaded: LoadedRecipe, parent_run_id: str | None = None, *, cache: Cache | None = None,
            tags: dict[str, str] | None = None, step_runner: StepRunner | None = None,
            allow_failed_gates: bool = False) -> RunSummary:
    """Run the recipe's whole plan, tracking in MLflow. Returns the summary; raises GateError when the model
    failed its gates (registered for the record, without aliases).

    `cache` replaces the shared step cache. `step_runner` wraps each step (the Prefect runner passes a task
    factory); by default steps run as plain calls.
    """

    run = _start(loaded, parent_run_id, cache, tags, allow_failed_gates)
    hits = _run_steps(run, run.plan.steps, step_runner)
    client, run_id = run.client, run.ctx.run_id
    summary = _summary(run, hits)
    write_text(run.run_dir / "summary.json", json.dumps(summary.model_dump(mode="json"), indent=2))
    client.log_artifact(run_id, str(run.run_dir / "summary.json"))
    if summary.gates.outcome == "failed":
        client.set_terminated(run_id, "FAILED")  # the model is registered for the record, but nothing promotes it
        raise GateError("\n".join([
            f"model {summary.model_name} version {summary.model_version} FAILED its gates: registered with "
            "tag gates=failed and no alias", *(f"  {line}" for line in summary.gates.failures),
            f"report: {summary.gates.report}",
            "(rerun with --allow-failed-gates to register it with aliases anyway)"]))
    client.set_terminated(run_id, "FINISHED")
    return summary


def execute_until(loaded: LoadedRecipe, until: str, parent_run_id: str | None = None, *, prune: Any = None,
                  cache: Cache | None = None, tags: dict[str, str] | None = None) -> TrialRun:
    """Run the plan up to and including step `until` (train at least), tracking in MLflow.

    `prune` links a sweep trial to its Optuna trial: a trial the pruner stops ends here as `pruned`.
    `cache` replaces the shared step cache (reproduce uses an empty one to recompute everything).
    """

    run = _start(loaded, parent_run_id, cache, tags, prune=prune)
    names = [s.name for s in run.plan.steps]
    client, ctx = run.client, run.ctx
    assert ctx.run_id is not None
    try:
        hits = _run_steps(run, run.plan.steps[: names.index(until) + 1])
    except TrialPruned as pruned:
        partial: TrainResult = pruned.args[0]
        log_step(client, ctx.run_id, "train", _unstreamed(StepOutput(partial, Path(".")), ctx.run_id), False)
        client.set_tag(ctx.run_id, "mlops.trial_state", "pruned")
        client.set_terminated(ctx.run_id, "KILLED")
        return TrialRun(run_id=ctx.run_id, state="pruned", history=partial.history, metrics={})
    client.set_terminated(ctx.run_id, "FINISHED")
    evaluated = ctx.results.get("evaluate")
    exported = ctx.results.get("export")
    return TrialRun(run_id=ctx.run_id, state="complete", history=ctx.result("train", TrainResult).history,
                    metrics=evaluated.metrics if isinstance(evaluated, EvaluateResult) else {}, cache=hits,
                    onnx_sha256=exported.onnx_sha256 if isinstance(exported, ExportResult) else None)


def step_fn(name: str) -> StepFn:
    """Step `name`'s function, its module imported now: only a step that runs needs its libraries."""
    fn: StepFn = getattr(importlib.import_module(f"{STEP_PACKAGE}.{name}"), name)
    return fn


def run_step(plan: Plan, ctx: RunContext, name: str) -> StepOutput[Any]:
    # the step's module is imported when the step runs, not when its result comes from the cache
    return plan.run(ctx, name, lambda c, out: step_fn(name)(c, out), STEP_RESULTS[name])


def _start(loaded: LoadedRecipe, parent_run_id: str | None, cache: Cache | None, tags: dict[str, str] | None,
           allow_failed_gates: bool = False, prune: Any = None) -> _Run:
    started = time.perf_counter()
    plan = compile_plan(loaded, cache)
    uri = tracking_uri(loaded.recipe.tracking.uri)
    client = registry_client(uri)
    exp = experiment_id(client, loaded.recipe.experiment, uri)
    run_tags = {"mlops.plan": json.dumps({s.name: s.key for s in plan.steps})} | (tags or {})
    resumed = _resume_run(plan, client, uri, exp, parent_run_id, run_tags)
    run_id = resumed or start_run(client, exp, loaded, parent_run_id, run_tags)
    run_dir = _run_dir(loaded, run_id, resumed=resumed is not None)
    say(f"run {run_id} of recipe '{loaded.recipe.name}' -> {run_dir}")
    ctx = RunContext(loaded=loaded, run_id=run_id, tracking_uri=uri, prune=prune, allow_failed_gates=allow_failed_gates,
                     run_dir=run_dir)
    return _Run(plan=plan, ctx=ctx, client=client, run_dir=run_dir, started=started)


def _run_steps(run: _Run, steps: list[Step], step_runner: StepRunner | None = None) -> dict[str, bool]:
    """Run `steps` in order into the run's context; whether each reused its cached result. A failure ends
    the MLflow run as FAILED; a pruned trial's TrialPruned is left to the caller."""
    plan, ctx, client = run.plan, run.ctx, run.client
    assert ctx.run_id is not None
    hits: dict[str, bool] = {}
    try:
        for step in steps:
            if step.champion:
                step = plan.keyed_on(step.name, _champion_now(run))
            hit = step.cached and plan.cache.has(step.name, step.key)
            output = (step_runner(step.name) if step_runner else run_step)(plan, ctx, step.name)
            ctx.record(step.name, output)
            hits[step.name] = hit
            log_step(client, ctx.run_id, step.name, _unstreamed(output, ctx.run_id), hit)
            say(f"step {step.name}: {'reused cached result' if hit else 'done'}")
            if step.name == "load_data":
                lock = build_lock(plan.loaded, ctx.result("load_data", LoadDataResult))
                log_environment(client, ctx.run_id, plan.loaded, lock)
                write_text(run.run_dir / "recipe.lock", json.dumps(lock, indent=2, default=str))
    except TrialPruned:
        raise
    except BaseException:
        client.set_terminated(ctx.run_id, "FAILED")
        raise
    return hits


def _champion_now(run: _Run) -> str:
    """The champion a gate step compares with, looked up now and pinned in the run's context (the gate scores
    that very version), as its cache key's part: the version and its content, and whether failed gates are
    allowed (that changes the outcome too)."""
    ctx = run.ctx
    allowed = f"allow_failed_gates={ctx.allow_failed_gates}"
    if not any(g.vs is not None for g in ctx.loaded.recipe.evaluate.gates):
        ctx.champion = None
        return f"no gate compares with a champion; {allowed}"
    found = pinned_identity(run.client, f"{ctx.loaded.recipe.model_name}@{CHAMPION}")
    ctx.champion = found[0] if found else None
    return f"champion {found[1] if found else 'none'} in {ctx.tracking_uri}; {allowed}"


def _resume_run(plan: Plan, client: Any, uri: str, experiment: str, parent_run_id: str | None,
                tags: dict[str, str]) -> str | None:
    """The MLflow run of a killed run of this plan, reopened, when its training left a checkpoint to resume
    from (`kill -9` leaves the run RUNNING; a crash, FAILED); None to start a new run."""
    train = plan.step("train")
    work = plan.cache.resumable(train.name, train.key)
    record = recorded_run(work) if work is not None else None
    if record is None or record.tracking_uri != uri or not (checkpoint_dir(work) / "last.ckpt").is_file():
        return None
    try:
        info = client.get_run(record.run_id).info
    except Exception:  # noqa: BLE001 - deleted, or another store: a new run
        return None
    if info.experiment_id != experiment or info.lifecycle_stage != "active" or info.status not in ("RUNNING", "FAILED"):
        return None
    client.update_run(record.run_id, status="RUNNING")
    for key, value in tags.items():
        client.set_tag(record.run_id, key, value)
    if parent_run_id:  # a re-run sweep or multirun has a new parent
        client.set_tag(record.run_id, "mlflow.parentRunId", parent_run_id)
    say(f"resuming run {record.run_id}: training resumes from its last checkpoint in {checkpoint_dir(work)}")
    return record.run_id


def _unstreamed(output: StepOutput[Any], run_id: str) -> StepOutput[Any]:
    """What is left to log of a step's output: a fit that streamed its epochs to this very run has its history
    there already (at the real times), so it is not logged again."""
    result = output.result
    if isinstance(result, TrainResult) and result.streamed_to == run_id:
        return StepOutput(result.model_copy(update={"history": []}), output.dir)
    return output


def _run_dir(loaded: LoadedRecipe, run_id: str, *, resumed: bool = False) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    d = workspace().run_dir(loaded.recipe.name, stamp, run_id)
    if resumed and d.parent.is_dir():  # a resumed run keeps the folder its killed start made
        d = next(iter(sorted(d.parent.glob(f"*-{run_id[:8]}"))), d)
    d.mkdir(parents=True, exist_ok=True)
    write_text(d / "recipe.yaml", loaded.to_yaml())
    return d


def _summary(run: _Run, hits: dict[str, bool]) -> RunSummary:
    plan, ctx, run_dir = run.plan, run.ctx, run.run_dir
    assert ctx.run_id is not None
    bundle = run_dir / "bundle"
    shutil.copytree(ctx.dir("export") / "bundle", bundle, dirs_exist_ok=True)
    train = ctx.result("train", TrainResult)
    weights = run_dir / "model.pt"  # what a later recipe fine-tunes from (model.weights), kept with the run
    shutil.copy2(ctx.dir("train") / train.state_dict, weights)
    reg = ctx.result("register", RegisterResult)
    gate = ctx.result("gate", GateDecision)
    for name in gate.report.values():
        shutil.copy2(ctx.dir("gate") / name, run_dir / name)
    evaluated, assessed = ctx.result("evaluate", EvaluateResult), ctx.result("assess", AssessResult)
    metrics: dict[str, float | int] = {**evaluated.metrics, **assessed.metrics, "train/epochs": train.epochs_run}
    return RunSummary(
        run_id=ctx.run_id,
        recipe=plan.loaded.recipe.name,
        model_name=reg.model_name,
        model_version=reg.model_version,
        aliases=reg.aliases,
        metrics=metrics,
        bundle=str(bundle),
        weights=str(weights),
        data_fingerprint=ctx.result("load_data", LoadDataResult).fingerprint,
        recipe_hash=plan.loaded.hash,
        overrides=plan.loaded.overrides,
        split_sizes=ctx.result("split", SplitResult).sizes,
        parity_max_abs_diff=ctx.result("export", ExportResult).parity.max_abs_diff,
        gates=GateSummary(outcome=gate.outcome, failures=gate.failures, champion=gate.champion,
                          verdicts=[VerdictBrief.of(v) for v in gate.gates],
                          report=str(run_dir / gate.report["html"])),
        world_size=train.world_size,
        cache={k: ("reused" if v else "ran") for k, v in hits.items()},
        run_dir=str(run_dir),
        tracking_uri=ctx.tracking_uri,
        experiment=plan.loaded.recipe.experiment,
        seconds=round(time.perf_counter() - run.started, 2),
    )
