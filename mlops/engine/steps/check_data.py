"""Check the recipe's data expectations before training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mlops.data.expectations import check_expectations
from mlops.engine.results import CheckDataResult, LoadDataResult
from mlops.engine.steps.common import RunContext


def check_data(ctx: RunContext, out: Path) -> CheckDataResult:
    frame = pd.read_parquet(ctx.dir("load_data") / "data.parquet")
    source = ctx.result("load_data", LoadDataResult).source
    checked = check_expectations(frame, ctx.loaded.recipe.evaluate.expectations, source)
    return CheckDataResult.model_validate(checked)
