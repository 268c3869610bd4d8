"""The Prefect flows a recipe deploys: `train`, `evaluate`, `monitor`, `retrain`.

These are the entry points that `prefect.yaml` (rendered by `mlops deploy`) and `mlops deploy --prefect`
point at (`mlops.flows.train`, ...). Each is a thin edge over a plain function of its phase. Parameters are
typed so the deployment gets a real JSON schema. Each run shows what it found as Prefect artifacts (gate table,
links, drift summary), and its logs hold the `mlops` lines.

A process that calls one of these directly, without a Prefect server, calls `prepare_flow_run()` first (the
CLI does): the temporary server Prefect starts then dies with the process.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import Field

from mlops.core.errors import GateError, MlopsError
from mlops.core.log import say
from mlops.engine import runner
from mlops.engine.evaluate_model import evaluate_model
from mlops.engine.runner import artifact_key, configure_prefect, log_to_runs, prepare_flow_run
from mlops.engine.summary import Evaluation, RunSummary, VerdictBrief
from mlops.engine.validate import load_validated
from mlops.improve.audit import AuditLog
from mlops.improve.registry import Registry
from mlops.improve.retrain import (
    RetrainOptions,
    RetrainOutcome,
    approve,
    audit_for,
    reject,
    retrain_recipe,
    settled,
)
from mlops.monitor.results import LiveResult, MonitorResult
from mlops.monitor.run import monitor_recipe
from mlops.recipe import load_recipe

configure_prefect()

from prefect import flow  # noqa: E402  (configured first: Prefect reads settings at import)
from prefect.input import RunInput  # noqa: E402

__all__ = ["FLOWS", "Approval", "evaluate", "monitor", "prepare_flow_run", "resume_paused_retrain", "retrain",
           "train"]


@flow(name="mlops-train")
def train(recipe: str, overrides: list[str] | None = None, allow_failed_gates: bool = False) -> RunSummary:
    """Train, evaluate, export, gate and register the recipe's model (what `mlops run RECIPE` does)."""

    return runner.run(recipe, list(overrides or []), allow_failed_gates=allow_failed_gates)


@flow(name="mlops-evaluate")
def evaluate(recipe: str, overrides: list[str] | None = None, model: str | None = None,
             allow_failed_gates: bool = False) -> Evaluation:
    """Evaluate a registered model (`NAME@ALIAS`, `NAME/VERSION`; the recipe's champion by default) on the
    recipe's data and gates, as `mlops evaluate` does. A failed gate fails the flow run."""

    log_to_runs()
    loaded = load_validated(recipe, list(overrides or []))
    result = evaluate_model(loaded, model or f"{loaded.recipe.model_name}@champion", allow_failed_gates)
    try:
        runner.publish_gates(result.model, result.gates.outcome, [VerdictBrief.of(v) for v in result.gates.gates])
        runner.publish_links(result.model, result.tracking_uri, result.run_id, result.report)
    except Exception as exc:  # the evaluation stands without its page in the Prefect UI
        say(f"could not publish the evaluation's Prefect artifacts: {type(exc).__name__}: {exc}")
    if result.gates.outcome == "failed":
        raise GateError("\n".join([f"{result.model} FAILED its gates:",
                                    *(f"  {line}" for line in result.gates.failures)]))
    return result


@flow(name="mlops-monitor")
def monitor(recipe: str, overrides: list[str] | None = None, model: str | None = None) -> MonitorResult:
    """Drift and live metrics of the served model against the recipe's thresholds (`mlops monitor`)."""

    log_to_runs()
    result = monitor_recipe(recipe, list(overrides or []), model)
    try:
        publish_drift(result)
    except Exception as exc:
        say(f"could not publish the monitor run's Prefect artifacts: {type(exc).__name__}: {exc}")
    return result


def publish_drift(result: MonitorResult) -> None:
    """The monitor run's drift summary: a table of its windows, and what fired, with its pages."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    model = f"{result.model}-v{result.version}" if result.version else result.model
    rows = [{"window": w.index, "start": w.start, "end": w.end, "rows": w.rows, "judged": w.judged,
             "drift share": None if w.drift_share is None else round(w.drift_share, 4),
             "drifted features": ", ".join(w.drifted_features) or "-", "breaches": ", ".join(w.breaches) or "-"}
            for w in result.windows]
    create_table_artifact(rows, key=artifact_key(model, "drift"),
                          description=f"{model}: drift by window ({len(result.windows)} windows)")
    lines = [f"### {model}: {'fired ' + ', '.join(result.fired) if result.fired else 'no alert fired'}", "",
             f"- windows: {len(result.windows)} ({sum(w.judged for w in result.windows)} judged), "
             f"{result.pending_rows} rows waiting for their window",
             f"- dashboard: `{result.dashboard}`"]
    if isinstance(result, LiveResult) and result.evidently is not None:
        agrees = result.evidently.agrees_with_fast_path
        lines.append(f"- Evidently report: `{result.evidently.html}`"
                     + ("" if agrees is None else f" (agrees with the fast path: {'yes' if agrees else 'no'})"))
    lines += [f"- alert `{a.rule}` {a.state}: {a.reason}" for a in result.alerts]
    create_markdown_artifact("\n".join(lines), key=artifact_key(model, "monitor"),
                             description=f"{model}: the monitor run")


# --- retrain, and a person's answer from the Prefect UI ---------------------------------------------------


class Approval(RunInput):
    """A person's answer to a retrain that waits for approval: the form a paused `mlops-retrain` run shows in
    the Prefect UI, and what `mlops approve/reject` resume it with."""

    approve: bool = Field(description="true: roll the challenger out to champion; false: reject it")
    by: str = Field("prefect-ui", description="who decides (recorded in the audit log)")
    note: str = Field("", description="why (recorded in the audit log)")


APPROVAL_TAG = "mlops-approval:"  # + the training run id: how `mlops approve` finds the paused flow run


def _retrain_run_name() -> str:
    from pathlib import Path

    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"retrain {Path(params['recipe']).stem}: {params.get('reason') or 'auto'}"[:120]


@flow(name="mlops-retrain", flow_run_name=_retrain_run_name)
def retrain(recipe: str, overrides: list[str] | None = None, reason: str = "auto", by: str | None = None,
            force: bool = False, rollout_options: dict[str, Any] | None = None,
            pause_for_approval: bool | None = None, approval_timeout_s: int = 86400) -> RetrainOutcome:
    """Trigger, limits, data refresh, training (the `mlops-run` subflow) with gates vs the champion, then
    promote, wait for approval, stop or roll back (`mlops retrain`). `reason` is what fired it: `auto`
    answers the monitor's newest unanswered alert, `schedule` a cron run, an event name
    (`mlops.alert.drift`) an automation; cooldown and daily limits hold whatever fired it.

    A challenger that waits for a person pauses the flow run (`pause_for_approval`; default: when a deployment
    runs it) until someone answers in the Prefect UI or with `mlops approve/reject`, for `approval_timeout_s`
    at most; unpaused, the run ends `awaiting_approval` and `mlops approve/reject` carry on from the audit log."""
    # the parameters stay flat (not a RetrainOptions): they are the deployment's JSON schema
    log_to_runs()
    options = RetrainOptions(by=by, force=force, rollout_options=dict(rollout_options or {}))
    outcome = retrain_recipe(recipe, list(overrides or []), reason, options)
    if outcome.outcome != "awaiting_approval" or not _pauses(pause_for_approval):
        return outcome
    # the answer is recorded where the retrain recorded its start: the audit follows the recipe's production log
    audit = audit_for(load_recipe(recipe, list(overrides or [])))
    return await_approval(outcome, approval_timeout_s, dict(rollout_options or {}), audit=audit)


def _pauses(asked: bool | None) -> bool:
    """Whether a retrain waiting for a person pauses: as asked, else when a deployment runs it. Never without
    a Prefect server (PREFECT_API_URL): the temporary one dies with this process, and nobody could answer."""
    from prefect.runtime import deployment
    from prefect.settings import get_current_settings

    wanted = bool(deployment.id) if asked is None else asked
    if wanted and not get_current_settings().api.url:
        say("not pausing for approval: no Prefect server (PREFECT_API_URL) to answer through; "
            "use mlops approve/reject")
        return False
    return wanted


def await_approval(outcome: RetrainOutcome, timeout_s: int, rollout_options: dict[str, Any], *,
                   registry: Registry | None = None, audit: AuditLog | None = None) -> RetrainOutcome:
    """Pause this flow run until a person answers (the Prefect UI's form, or `mlops approve/reject`), then act on
    the answer: roll the challenger out, or reject it. An answer `mlops approve/reject` already acted on (it
    resumes the run once it is done) is only reported; no answer in time leaves the retrain waiting.
    `registry` and `audit` replace MLflow and the workspace's audit log (tests)."""
    from prefect import get_client
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run
    from prefect.runtime import flow_run

    run_id = str(outcome.run_id)
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, tags=[*current.tags, f"{APPROVAL_TAG}{run_id}"])
    say(f"{outcome.message}; or answer this flow run's form in the Prefect UI")
    try:
        answer = pause_flow_run(wait_for_input=Approval, timeout=timeout_s, poll_interval=2)
    except FlowPauseTimeout:
        return replace(outcome, message=f"{outcome.message} (nobody answered in {timeout_s} s; still waiting)")
    assert answer is not None
    try:
        if answer.approve:
            return approve(run_id, answer.by, answer.note, rollout_options=rollout_options, registry=registry,
                           audit=audit)
        return reject(run_id, answer.by, answer.note, registry=registry, audit=audit)
    except MlopsError as exc:  # `mlops approve/reject` acted on it already, and resumed this run to say so
        ended = settled(audit or AuditLog(), run_id)
        if ended is None:
            raise
        say(f"answered with mlops {'approve' if answer.approve else 'reject'} by {ended[1]}: {ended[0]}")
        return replace(outcome, outcome=ended[0], message=f"{outcome.model}/{outcome.version} {ended[0]}: "
                       f"answered by {ended[1]} outside this flow run ({str(exc).splitlines()[0]})")


def resume_paused_retrain(run_id: str, approved: bool, by: str, note: str) -> str | None:
    """After `mlops approve/reject` acted on training run `run_id`: resume its paused `mlops-retrain` flow run,
    if one waits on a Prefect server, with the same answer. The paused run's id, or None."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        return None  # no server: nothing can be paused on the temporary one once its process ended
    with get_client(sync_client=True) as client:
        paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"{APPROVAL_TAG}{run_id}"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    for run in paused:
        resume_flow_run(run.id, run_input={"approve": approved, "by": by, "note": note})
    return str(paused[0].id) if paused else None


FLOWS = {"train": train, "evaluate": evaluate, "monitor": monitor, "retrain": retrain}
