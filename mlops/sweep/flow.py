"""`mlops sweep`: an Optuna study as a Prefect flow. Each trial is a Prefect task (with retries) that
trains in its own process and is a nested MLflow run under the sweep's parent run.

The study lives in durable storage under a name derived from the recipe, so running the same command
again resumes it; `--worker` joins a study from another process or machine that shares the storage.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from mlops.core.errors import GateError, MlopsError
from mlops.core.log import say
from mlops.core.registry import experiment_id, registry_client, tracking_uri
from mlops.engine.children import clean_env
from mlops.engine.plan import compile_plan
from mlops.engine.runner import configure_prefect, prepare_flow_run, run_flow
from mlops.engine.steps.common import RunContext
from mlops.engine.steps.load_data import load_data
from mlops.engine.steps.preprocess import preprocess
from mlops.engine.steps.split import split
from mlops.engine.summary import RunSummary, TrialRun
from mlops.engine.validate import load_validated
from mlops.recipe import LoadedRecipe
from mlops.sweep import warm
from mlops.sweep.launch import PROCESS, launch
from mlops.sweep.objective import objective_value
from mlops.sweep.report import log_study
from mlops.sweep.study import (
    ERROR,
    HEARTBEAT_S,
    OWNER,
    as_overrides,
    counts,
    has_room,
    open_study,
    owner,
    recover_orphans,
    step_aside,
    storage_url,
    suggest,
    surplus,
)
from mlops.sweep.trial import TrialJob
from mlops.train.pruning import PruneLink

configure_prefect()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

PROCESS_ATTR = "mlops.process"  # a trial's user attribute: {pid, parent, warm} of the process that ran it


class BestTrial(BaseModel):
    number: int
    value: float
    params: dict[str, Any]
    overrides: list[str]  # the params as recipe overrides
    trial_run_id: str | None  # the trial's own MLflow run


class SweepSummary(BaseModel):
    """What a sweep did. `--json` prints the final run's summary fields at the top level beside the study's
    (`run`'s fields are flattened there, as they always were); a `--worker` has no final run and no best."""

    study_name: str
    storage: str
    parent_run_id: str
    trials: dict[str, int]  # complete, pruned, failed, running
    requeued: list[int]  # trials left unfinished by a dead process, run again
    run: RunSummary | None = None  # the best trial's model, exported and registered
    best: BestTrial | None = None

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        run, best = data.pop("run"), data.pop("best")
        return data | (run or {}) | ({"best": best} if best is not None else {})


@task(name="trial", cache_policy=NO_CACHE, persist_result=False)
def trial_task(job: dict[str, Any]) -> dict[str, Any]:
    """A TrialRun as JSON, plus the process that ran it (`launch`)."""
    return launch(TrialJob.model_validate(job))


def _prepare_data(loaded: LoadedRecipe) -> None:
    """Compute the shared data steps once, before parallel trials would race to compute them."""

    plan = compile_plan(loaded)
    ctx = RunContext(loaded=loaded, run_id=None, tracking_uri="")
    for fn in (load_data, split, preprocess):
        ctx.record(fn.__name__, plan.run(ctx, fn.__name__, fn))


def _parent_run(study: Any, loaded: LoadedRecipe) -> str:
    """The sweep's MLflow parent run; a resumed sweep continues under the same one."""

    uri = tracking_uri(loaded.recipe.tracking.uri)
    client = registry_client(uri)
    existing = study.user_attrs.get("mlflow_parent_run_id")
    if existing:
        try:
            client.update_run(existing, status="RUNNING")
            return str(existing)
        except Exception:  # the tracking store was wiped or changed: start a new parent
            pass
    exp = experiment_id(client, loaded.recipe.experiment, uri)
    assert loaded.recipe.sweep is not None
    run = client.create_run(exp, run_name=f"{loaded.recipe.name} sweep {study.study_name}", tags={
        "mlops.sweep": "true", "mlops.study": study.study_name, "mlops.study_storage": storage_url(loaded.recipe.sweep),
        "mlops.recipe": str(loaded.path), "mlops.overrides": json.dumps(loaded.overrides)})
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return str(run.info.run_id)


def _tell(study: Any, trial: Any, loaded: LoadedRecipe, launched: dict[str, Any] | BaseException) -> str:
    from optuna.trial import TrialState


    if isinstance(launched, BaseException):
        trial.set_user_attr(ERROR, str(launched)[:2000])
        study.tell(trial, state=TrialState.FAIL)
        return f"failed: {launched}"
    outcome = TrialRun.model_validate(launched)
    trial.set_user_attr("mlflow_run_id", outcome.run_id)
    trial.set_user_attr(PROCESS_ATTR, launched[PROCESS])
    if outcome.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        return f"pruned after {len(outcome.history)} epochs"
    value = objective_value(loaded.recipe, outcome.history)
    study.tell(trial, value)
    return f"{loaded.recipe.sweep.metric if loaded.recipe.sweep else 'value'} = {value:.5f}"


def _run_trials(study: Any, loaded: LoadedRecipe, parent: str) -> None:
    cfg = loaded.recipe.sweep
    assert cfg is not None
    inflight: dict[Any, Any] = {}
    checked = time.monotonic()
    while True:
        if time.monotonic() - checked >= HEARTBEAT_S:  # a worker that died elsewhere: its trial is queued again
            checked = time.monotonic()
            for number in recover_orphans(study):
                print(f"mlops: trial {number} lost its worker: queued again", flush=True)
        while len(inflight) < cfg.parallelism and has_room(counts(study), cfg.n_trials):
            trial = study.ask()
            if surplus(study, trial, cfg.n_trials):  # another process took the last trial at the same moment
                step_aside(study, trial)
                continue
            trial.set_user_attr(OWNER, owner())
            params = suggest(trial, cfg)
            prune = None if cfg.pruner == "none" else PruneLink(
                storage=storage_url(cfg), study_name=study.study_name, trial_id=trial._trial_id, metric=cfg.metric,
                pruner=cfg.pruner, startup_trials=cfg.pruner_startup_trials, warmup_epochs=cfg.pruner_warmup_epochs)
            job = TrialJob(recipe=str(loaded.path), overrides=loaded.overrides + as_overrides(params),
                           parent_run_id=parent, trial_number=trial.number, prune=prune, result_file="")
            say(f"trial {trial.number} started: {' '.join(as_overrides(params))}")
            inflight[trial_task.with_options(retries=cfg.retries).submit(job.model_dump())] = trial
        if not inflight:
            return
        done = [f for f in inflight if f.state.is_final()]
        if not done:
            time.sleep(0.2)
            continue
        for future in done:
            trial = inflight.pop(future)
            try:
                outcome: dict[str, Any] | BaseException = future.result()
            except Exception as exc:  # the trial's own error, after its retries
                outcome = exc
            verdict = _tell(study, trial, loaded, outcome)
            c = counts(study)
            say(f"trial {trial.number} {verdict}  [{c['complete']} complete, {c['pruned']} pruned, "
                f"{c['failed']} failed of {cfg.n_trials}]")


def _sweep_name() -> str:
    from pathlib import Path

    from prefect.runtime import flow_run

    return f"{Path(flow_run.parameters['recipe']).stem} sweep"


@flow(name="mlops-sweep", flow_run_name=_sweep_name, validate_parameters=False)
def sweep_flow(recipe: str, overrides: list[str], worker: bool = False,
               allow_failed_gates: bool = False) -> SweepSummary:
    loaded = load_validated(recipe, overrides)
    assert loaded.recipe.sweep is not None
    study = open_study(loaded, create=not worker)
    requeued = recover_orphans(study)
    if requeued:
        say(f"resuming study {study.study_name}: re-running trial(s) {requeued} left unfinished")
    parent = _parent_run(study, loaded)
    say(f"study {study.study_name} ({counts(study)['complete']} trials complete so far), "
        f"MLflow parent run {parent}")
    # started first, so that it imports while the data is prepared; trials fork from it (MLOPS_SWEEP_WARM=0: not)
    with warm.trial_worker(clean_env()):
        _prepare_data(loaded)
        _run_trials(study, loaded, parent)
        summary = SweepSummary(study_name=study.study_name, storage=storage_url(loaded.recipe.sweep),
                               parent_run_id=parent, trials=counts(study), requeued=requeued)
        if worker:
            return summary
        _await_other_workers(study, loaded, parent)
    final, best = _finish(study, loaded, parent, allow_failed_gates)
    return summary.model_copy(update={"run": final, "best": best, "trials": counts(study)})


def _await_other_workers(study: Any, loaded: LoadedRecipe, parent: str, poll: float = 1.0) -> None:
    """The budget is spent, but trials that `--worker` processes started may still be running: the best
    trial is chosen once they are done. A dead worker's trial (its pid gone on this host, its heartbeat
    stopped on another) is queued again, and run here."""

    assert loaded.recipe.sweep is not None
    budget = loaded.recipe.sweep.n_trials
    announced = False
    while True:
        c = counts(study)  # one read of the storage per look
        if c["waiting"] and has_room(c, budget):
            _run_trials(study, loaded, parent)
            continue
        if not c["running"]:
            return
        if not announced:
            say(f"waiting for {c['running']} trial(s) running in other workers")
            announced = True
        recover_orphans(study)
        time.sleep(poll)


def _finish(study: Any, loaded: LoadedRecipe, parent: str,
            allow_failed_gates: bool = False) -> tuple[RunSummary, BestTrial]:
    """Log the study to the parent run, then export and register the best trial's model (reused from the
    step cache, not retrained) as `challenger`."""

    try:
        best = study.best_trial
    except ValueError:
        raise MlopsError(f"study {study.study_name} has no complete trial: see the failed trials' errors "
                         "with `mlops runs`") from None
    uri = tracking_uri(loaded.recipe.tracking.uri)
    client = registry_client(uri)
    best_overrides = as_overrides(best.params)
    log_study(client, parent, study)
    say(f"best trial {best.number}: value {best.value:.5f} with {' '.join(best_overrides)}")
    try:
        # the flow's summary as it is (a gate failure raises instead)
        final = RunSummary.model_validate(run_flow(str(loaded.path), loaded.overrides + best_overrides,
                                                   parent_run_id=parent, allow_failed_gates=allow_failed_gates))
    except GateError:
        client.set_tag(parent, "mlops.gates", "failed")
        client.set_terminated(parent, "FAILED")
        raise
    client.set_tag(parent, "mlops.model", f"{final.model_name}/{final.model_version}")
    client.set_terminated(parent, "FINISHED")
    return final, BestTrial(number=best.number, value=best.value, params=best.params, overrides=best_overrides,
                            trial_run_id=best.user_attrs.get("mlflow_run_id"))


def sweep(recipe: str, overrides: list[str], worker: bool = False, allow_failed_gates: bool = False) -> SweepSummary:
    from pathlib import Path

    loaded = load_validated(recipe, overrides)
    assert loaded.recipe.sweep is not None
    runner = ThreadPoolTaskRunner(max_workers=loaded.recipe.sweep.parallelism)
    prepare_flow_run()
    return sweep_flow.with_options(task_runner=runner)(str(Path(recipe).resolve()), overrides, worker, allow_failed_gates)
