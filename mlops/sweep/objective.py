"""The value a trial reports: the sweep metric at the epoch of the checkpoint that was kept."""

from __future__ import annotations

from typing import Any

from mlops.recipe.schema import Recipe


def objective_value(recipe: Recipe, history: list[dict[str, float]]) -> float:
    assert recipe.sweep is not None
    monitor, mode = recipe.trainer.checkpoint.monitor, recipe.trainer.checkpoint.mode
    rows = [r for r in history if monitor in r and recipe.sweep.metric in r]
    if not rows:
        raise ValueError(f"no epoch logged both {monitor} and {recipe.sweep.metric}")
    best = min(rows, key=lambda r: r[monitor]) if mode == "min" else max(rows, key=lambda r: r[monitor])
    return float(best[recipe.sweep.metric])


def last_value(recipe: Recipe, history: list[dict[str, Any]]) -> float | None:
    assert recipe.sweep is not None
    values = [r[recipe.sweep.metric] for r in history if recipe.sweep.metric in r]
    return float(values[-1]) if values else None
