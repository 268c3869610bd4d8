"""Check the recipe's data expectations before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mlops.data.expectations import check_expectations
from mlops.engine.steps.common import RunContext


def check_data(ctx: RunContext, out: Path) -> dict[str, Any]:
    frame = pd.read_parquet(ctx.dir("load_data") / "data.parquet")
    return check_expectations(frame, ctx.loaded.recipe.evaluate.expectations, ctx.results["load_data"]["source"])
