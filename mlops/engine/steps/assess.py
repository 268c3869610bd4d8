"""Slices, fairness, robustness and the inference benchmark, all on the exported ONNX model."""

from __future__ import annotations

import json
from pathlib import Path

from mlops.engine.results import AssessResult
from mlops.engine.steps.common import RunContext, frames
from mlops.engine.steps.trained import dict_inputs, load_module, split_arrays
from mlops.evaluate.assess import assess_bundle


def assess(ctx: RunContext, out: Path) -> AssessResult:
    """Slices, fairness, robustness and the inference benchmark, all on the exported ONNX model."""
    parts = frames(ctx)
    ev = ctx.loaded.recipe.evaluate
    attack = ev.robustness.enabled and ev.robustness.adversarial.enabled
    takes = dict_inputs(ctx)
    # Captum attributes an image or text model's module (evaluate.importance)
    explain = ev.importance.enabled and ev.importance.samples > 0 and takes is not None and not takes.scalar_only
    module = load_module(ctx) if ev.performance.torch or attack or explain else None
    features = split_arrays(ctx, "test") if module is not None and ev.performance.torch else None
    network = takes if module is not None else None
    result = assess_bundle(ctx.loaded.recipe, ctx.dir("export") / "bundle", parts["test"], parts["train"],
                           module, features, network, out=out)
    (out / "assess.json").write_text(json.dumps(result, indent=2))
    return AssessResult.model_validate(result)
