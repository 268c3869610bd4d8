"""The Prefect flows a recipe deploys: `train`, `evaluate`, `monitor`, `retrain`.

These are the entry points that `prefect.yaml` (rendered by `mlops deploy`) and `mlops deploy --prefect`
point at (`mlops.flows.train`, ...). Each is a thin edge over a plain function of its phase. Parameters are
typed so the deployment gets a real JSON schema.
"""

from __future__ import annotations

from typing import Any

from mlops.core.errors import GateError
from mlops.engine import runner
from mlops.engine.evaluate_model import evaluate_model
from mlops.engine.runner import configure_prefect
from mlops.engine.summary import Evaluation, RunSummary
from mlops.engine.validate import load_validated
from mlops.improve.retrain import RetrainOptions, RetrainOutcome, retrain_recipe
from mlops.monitor.results import MonitorResult
from mlops.monitor.run import monitor_recipe

configure_prefect()

from prefect import flow  # noqa: E402  (configured first: Prefect reads settings at import)


@flow(name="mlops-train")
def train(recipe: str, overrides: list[str] | None = None, allow_failed_gates: bool = False) -> RunSummary:
    """Train, evaluate, export, gate and register the recipe's model (what `mlops run RECIPE` does)."""

    return runner.run(recipe, list(overrides or []), allow_failed_gates=allow_failed_gates)


@flow(name="mlops-evaluate")
def evaluate(recipe: str, overrides: list[str] | None = None, model: str | None = None,
             allow_failed_gates: bool = False) -> Evaluation:
    """Evaluate a registered model (`NAME@ALIAS`, `NAME/VERSION`; the recipe's champion by default) on the
    recipe's data and gates, as `mlops evaluate` does. A failed gate fails the flow run."""

    loaded = load_validated(recipe, list(overrides or []))
    result = evaluate_model(loaded, model or f"{loaded.recipe.model_name}@champion", allow_failed_gates)
    if result.gates.outcome == "failed":
        raise GateError("\n".join([f"{result.model} FAILED its gates:",
                                    *(f"  {line}" for line in result.gates.failures)]))
    return result


@flow(name="mlops-monitor")
def monitor(recipe: str, overrides: list[str] | None = None, model: str | None = None) -> MonitorResult:
    """Drift and live metrics of the served model against the recipe's thresholds (`mlops monitor`)."""

    return monitor_recipe(recipe, list(overrides or []), model)


def _retrain_run_name() -> str:
    from pathlib import Path

    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"retrain {Path(params['recipe']).stem}: {params.get('reason') or 'auto'}"[:120]


@flow(name="mlops-retrain", flow_run_name=_retrain_run_name)
def retrain(recipe: str, overrides: list[str] | None = None, reason: str = "auto", by: str | None = None,
            force: bool = False, rollout_options: dict[str, Any] | None = None) -> RetrainOutcome:
    """Trigger, limits, data refresh, training (the `mlops-run` subflow) with gates vs the champion, then
    promote, wait for approval, stop or roll back (`mlops retrain`). `reason` is what fired it: `auto`
    answers the monitor's newest unanswered alert, `schedule` a cron run, an event name
    (`mlops.alert.drift`) an automation; cooldown and daily limits hold whatever fired it."""
    # the parameters stay flat (not a RetrainOptions): they are the deployment's JSON schema
    options = RetrainOptions(by=by, force=force, rollout_options=dict(rollout_options or {}))
    return retrain_recipe(recipe, list(overrides or []), reason, options)


FLOWS = {"train": train, "evaluate": evaluate, "monitor": monitor, "retrain": retrain}
