"""Deterministic train/val/test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlops.core.errors import RecipeError
from mlops.data.schema import infer_task
from mlops.data.split import split_digest, split_indices
from mlops.engine.results import SplitResult
from mlops.engine.steps.common import RunContext
from mlops.recipe.checks import gate_problems


def split(ctx: RunContext, out: Path) -> SplitResult:
    r = ctx.loaded.recipe
    frame = pd.read_parquet(ctx.dir("load_data") / "data.parquet")
    task = infer_task(frame[r.data.target].dropna(), r.data.task)
    _check_gates_for(ctx, task)
    parts = split_indices(frame, r.data.target, r.data.split, r.split_seed, classification=task != "regression")
    np.savez(out / "split.npz", **parts)
    return SplitResult(task=task, sizes={k: int(len(v)) for k, v in parts.items()}, digest=split_digest(parts),
                       seed=r.split_seed)


def _check_gates_for(ctx: RunContext, task: str) -> None:
    """Validate time could not know an 'auto' task; now that it is known, refuse gates it cannot compute
    before minutes of training, never a silent pass at the end."""
    problems = gate_problems(ctx.loaded.recipe, task)
    if problems:
        raise RecipeError(f"{ctx.loaded.path} (task {task})", problems)
