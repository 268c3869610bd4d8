"""The trained LightningModule, rebuilt from the train step's result. Its own module, not `common`: only
the steps that load the model (evaluate, export, assess) should carry torch and `mlops.train` in their
code version."""

from __future__ import annotations

from typing import Any

import torch

from mlops.engine.steps.common import RunContext
from mlops.train.fit import TrainResult, build_module


def load_module(ctx: RunContext) -> Any:
    result = ctx.result("train", TrainResult)
    module = build_module(result.init)
    module.load_state_dict(torch.load(ctx.dir("train") / result.state_dict, map_location="cpu", weights_only=True))
    return module.eval()
