"""What every step shares: the run's context and the split frames. Kept small on purpose: it is part of
every step's code version, so whatever it imports reruns every step when it changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.recipe import LoadedRecipe


@dataclass
class RunContext:
    loaded: LoadedRecipe
    run_id: str | None
    tracking_uri: str
    prune: Any = None  # a PruneLink when this run is a sweep trial
    allow_failed_gates: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def dir(self, step: str) -> Path:
        return Path(self.results[step]["dir"])


StepFn = Callable[[RunContext, Path], dict[str, Any]]


def frames(ctx: RunContext) -> dict[str, Any]:
    frame = pd.read_parquet(ctx.dir("load_data") / "data.parquet")
    idx = np.load(ctx.dir("split") / "split.npz")
    return {name: frame.iloc[idx[name]].reset_index(drop=True) for name in ("train", "val", "test")}
