"""What a fit leaves for the rest of a run, in a module that imports neither torch nor Lightning: the result
model, the MLflow run a fit streams to and where its checkpoints live. The engine reads these on every run,
also when the train step is reused from the cache and nothing is trained (a rerun then loads no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

RUN_RECORD = "mlflow_run.json"  # beside the checkpoints: the MLflow run a resumed fit goes on streaming to


class TrainResult(BaseModel):
    history: list[dict[str, float]]  # one entry per epoch: {"epoch": n, metric: value, ...}
    epochs_run: int
    best_score: float | None
    fit_seconds: float
    world_size: int
    pruned: bool = False
    state_dict: str  # file name of the best weights, relative to the job's out_dir
    init: dict[str, Any]  # class path and constructor arguments, to rebuild the module for export
    fine_tune: dict[str, Any] | None = None  # model.weights / model.freeze: what was loaded, skipped, frozen
    epoch_times: list[int] = Field(default_factory=list)  # when each history row's epoch ended (ms since the epoch)
    streamed_to: str | None = None  # the MLflow run that received each epoch's metrics as it ended
    resumed_from_epoch: int | None = None  # epochs done by a killed fit this one resumed from its checkpoint


class TrackingLink(BaseModel):
    """The MLflow run a fit streams its epochs to (rank 0 only)."""

    tracking_uri: str
    run_id: str


def checkpoint_dir(out_dir: str | Path) -> Path:
    """Where a fit keeps `last.ckpt` and `best.ckpt`: inside the train step's working directory."""
    return Path(out_dir) / "checkpoints"


def recorded_run(out: Path) -> TrackingLink | None:
    """The MLflow run a killed fit in `out` was streaming to, if it recorded one."""
    try:
        return TrackingLink.model_validate(json.loads((out / RUN_RECORD).read_text()))
    except (OSError, ValueError):
        return None
