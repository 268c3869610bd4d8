"""What every step shares: the run's context and the split frames. Kept small on purpose: it is part of
every step's code version, so whatever it imports reruns every step when it changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from mlops.engine.results import R, StepOutput
from mlops.recipe import LoadedRecipe


@dataclass
class RunContext:
    loaded: LoadedRecipe
    run_id: str | None
    tracking_uri: str
    prune: Any = None  # a PruneLink when this run is a sweep trial
    allow_failed_gates: bool = False
    # the champion the gate compares with: True, look it up when the gate runs; else the `NAME/VERSION` the
    # engine found when it keyed the gate's cache entry on it (None: the model has no champion yet)
    champion: str | None | bool = True
    run_dir: Path | None = None  # the run's own folder: the evaluation report ends there (the gate names it)
    results: dict[str, BaseModel] = field(default_factory=dict)  # each step's result, by step name
    dirs: dict[str, Path] = field(default_factory=dict)  # the directory holding each step's files

    def record(self, step: str, output: StepOutput[Any]) -> None:
        self.results[step] = output.result
        self.dirs[step] = output.dir

    def result(self, step: str, kind: type[R]) -> R:
        """Step `step`'s result as the model that step returns."""
        found = self.results[step]
        if not isinstance(found, kind):
            raise TypeError(f"step {step} returned a {type(found).__name__}, not a {kind.__name__}")
        return found

    def dir(self, step: str) -> Path:
        return self.dirs[step]


StepFn = Callable[[RunContext, Path], BaseModel]


def frames(ctx: RunContext) -> dict[str, pd.DataFrame]:
    frame = pd.read_parquet(ctx.dir("load_data") / "data.parquet")
    idx = np.load(ctx.dir("split") / "split.npz")
    return {name: frame.iloc[idx[name]].reset_index(drop=True) for name in ("train", "val", "test")}
