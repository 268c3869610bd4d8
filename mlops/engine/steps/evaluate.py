"""Every metric of the task (and the recipe's custom ones) on val and test, and plots, from the trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlops.engine.results import EvaluateResult, PreprocessResult
from mlops.engine.steps.common import RunContext
from mlops.engine.steps.trained import load_module, split_arrays
from mlops.evaluate.metrics import compute_metrics, custom_metric_fns
from mlops.evaluate.plots import calibration_png, confusion_matrix_png, residual_png, roc_png
from mlops.evaluate.scored import Scored
from mlops.package.export import torch_outputs
from mlops.train.result import TrainResult


def evaluate(ctx: RunContext, out: Path) -> EvaluateResult:
    """Every metric of the task (and the recipe's custom ones) on val and test, from the trained model."""
    prep = ctx.result("preprocess", PreprocessResult)
    module = load_module(ctx)
    arrays = np.load(ctx.dir("preprocess") / "arrays.npz")  # the labels (y_<split>)
    regression = prep.task == "regression"
    mean, std = prep.target_scale if regression and prep.target_scale else (0.0, 1.0)
    custom = custom_metric_fns(ctx.loaded.recipe.evaluate.custom_metrics)
    metrics: dict[str, float] = {}
    scored: dict[str, Scored] = {}
    for split_name in ("val", "test"):
        y = arrays[f"y_{split_name}"]
        outputs = torch_outputs(module, split_arrays(ctx, split_name), prep.task)
        if regression:
            y, outputs = y * std + mean, outputs * std + mean  # back in the target's own units
        scored[split_name] = Scored(prep.task, y, outputs, prep.labels)
        metrics |= compute_metrics(scored[split_name], split_name, custom)
    test = scored["test"]
    if regression:
        plots = [residual_png(test.y, test.out, out / "residuals.png")]
    else:
        plots = [confusion_matrix_png(test.y, test.pred, prep.labels or [], out / "confusion_matrix.png"),
                 roc_png(test, out / "roc.png"), calibration_png(test, out / "calibration.png")]
    # logged at the step after the last epoch, so a metric's history reads: epochs..., final evaluation
    epochs = ctx.result("train", TrainResult).epochs_run
    return EvaluateResult(metrics=metrics, plots=[p.name for p in plots], step=epochs)
