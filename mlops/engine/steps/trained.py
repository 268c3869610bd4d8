"""The trained LightningModule, rebuilt from the train step's result. Its own module, not `common`: only
the steps that load the model (evaluate, export, assess) should carry torch and `mlops.train` in their
code version."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mlops.data.media import ModelInputs
from mlops.engine.results import PreprocessResult
from mlops.engine.steps.common import RunContext
from mlops.train.fit import build_module, network_inputs
from mlops.train.result import TrainResult


def load_module(ctx: RunContext) -> Any:
    result = ctx.result("train", TrainResult)
    module = build_module(result.init)
    module.load_state_dict(torch.load(ctx.dir("train") / result.state_dict, map_location="cpu", weights_only=True))
    return module.eval()


def dict_inputs(ctx: RunContext) -> ModelInputs | None:
    """The trained module's inputs when it takes a dict (images, text, or the multi-input network); None for a
    module that takes the preprocessed matrix."""
    prep = ctx.result("preprocess", PreprocessResult)
    return network_inputs(ctx.loaded.recipe.model.target, prep.inputs, prep.n_features)


def split_arrays(ctx: RunContext, split: str) -> np.ndarray | dict[str, np.ndarray]:
    """What the trained module takes for a split: the preprocessed matrix, or {input: array}."""
    arrays = np.load(ctx.dir("preprocess") / "arrays.npz")
    inputs = dict_inputs(ctx)
    if inputs is None:
        return arrays[f"x_{split}"]
    return {name: arrays[ModelInputs.array_key(name, split)] for name in inputs.names}
