"""Check what the network needs of image and text columns, then the recipe's data expectations, before
training."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mlops.data.expectations import check_expectations, check_media
from mlops.data.sources import IMAGE_FILES
from mlops.engine.results import CheckDataResult, LoadDataResult
from mlops.engine.steps.common import RunContext


def check_data(ctx: RunContext, out: Path) -> CheckDataResult:
    frame = pd.read_parquet(ctx.dir("load_data") / "data.parquet")
    source = ctx.result("load_data", LoadDataResult).source
    files = ctx.dir("load_data") / IMAGE_FILES
    image_files = json.loads(files.read_text()) if files.is_file() else {}
    media = check_media(frame, ctx.loaded.recipe.data, source, image_files)
    checked = check_expectations(frame, ctx.loaded.recipe.evaluate.expectations, source)
    return CheckDataResult.model_validate(checked | {"media": media})
