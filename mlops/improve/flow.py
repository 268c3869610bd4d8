"""`mlops retrain` as a Prefect flow (`mlops-retrain`): the pipeline of `mlops.improve.retrain`, with training as
its `mlops-run` subflow (one task per step)."""

from __future__ import annotations

from typing import Any

from mlops.engine.runner import configure_prefect

configure_prefect()

from prefect import flow  # noqa: E402  (configured first: Prefect reads settings at import)


def _name() -> str:
    from pathlib import Path

    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"retrain {Path(params['recipe']).stem}: {params.get('reason') or 'auto'}"[:120]


@flow(name="mlops-retrain", flow_run_name=_name, validate_parameters=False)
def retrain_flow(recipe: str, overrides: list[str] | None = None, reason: str = "auto", by: str | None = None,
                 force: bool = False, rollout_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trigger, limits, data refresh, training with gates vs the champion, then promote, wait, stop or roll back."""
    from mlops.improve.retrain import retrain_recipe

    return retrain_recipe(recipe, list(overrides or []), reason, by=by, force=force, rollout_options=rollout_options)
