"""Train one model as a recipe says. The same function runs in-process (one device) and inside
`mlops.train.worker` (DDP and multi-node), so both paths train identically."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mlops.recipe.schema import BUILTIN_MODEL, DataModuleConfig, ModelConfig, TrainerConfig
from mlops.train.progress import BestWeights, EpochHistory
from mlops.train.pruning import OptunaPruning, PruneLink


class TrainJob(BaseModel):
    """Everything a training process needs, serialisable to JSON for the worker subprocess."""

    model: ModelConfig
    datamodule: DataModuleConfig
    trainer: TrainerConfig
    seed: int
    task: str
    input_dim: int
    output_dim: int
    arrays: str  # .npz with x_train, y_train, x_val, y_val
    out_dir: str
    prune: PruneLink | None = None  # set for a sweep trial: report epochs to Optuna, stop when pruned


class TrainResult(BaseModel):
    history: list[dict[str, float]]  # one entry per epoch: {"epoch": n, metric: value, ...}
    epochs_run: int
    best_score: float | None
    fit_seconds: float
    world_size: int
    pruned: bool = False
    state_dict: str  # file name of the best weights, relative to the job's out_dir
    init: dict[str, Any]  # class path and constructor arguments, to rebuild the module for export


def model_init(job: TrainJob) -> dict[str, Any]:
    base = {"input_dim": job.input_dim, "output_dim": job.output_dim, "task": job.task}
    if job.model.target == BUILTIN_MODEL:
        m = job.model
        kwargs = base | {"hidden": list(m.hidden), "dropout": m.dropout, "lr": m.lr,
                         "weight_decay": m.weight_decay, "optimizer": m.optimizer}
    else:
        kwargs = base | dict(job.model.params)
    return {"class": job.model.target, "kwargs": kwargs}


def build_module(init: dict[str, Any]) -> Any:
    """Instantiate `init["class"]` (a dotted path) with `init["kwargs"]`."""
    module_name, _, attr = init["class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(**init["kwargs"])


def quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*LeafSpec.*", ".*isinstance.*treespec.*"):
        warnings.filterwarnings("ignore", pattern)


def fit(job: TrainJob) -> TrainResult | None:
    """Train; return the result on global rank 0 (other ranks return None)."""
    import lightning as L
    import numpy as np
    import torch
    from lightning.pytorch.callbacks import EarlyStopping


    quiet_lightning()
    L.seed_everything(job.seed, workers=True, verbose=False)
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = np.load(job.arrays)
    arrays = {s: (data[f"x_{s}"], data[f"y_{s}"]) for s in ("train", "val")}
    init = model_init(job)
    module = build_module(init)
    t = job.trainer
    checkpoint = BestWeights(monitor=t.checkpoint.monitor, mode=t.checkpoint.mode)
    history = EpochHistory(max_epochs=t.max_epochs)
    callbacks: list[Any] = [checkpoint, history]
    pruning = None
    if job.prune is not None:
        pruning = OptunaPruning(job.prune)
        callbacks.append(pruning)
    if t.early_stopping is not None:
        es = t.early_stopping
        callbacks.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta))
    interactive = sys.stdout.isatty()
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=t.precision, max_epochs=t.max_epochs, min_epochs=t.min_epochs, deterministic=t.deterministic,
        gradient_clip_val=t.gradient_clip_val, callbacks=callbacks, logger=False, default_root_dir=str(out),
        enable_progress_bar=interactive, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        enable_checkpointing=False,  # BestWeights keeps the best epoch in memory
    )
    dm = build_module({"class": job.datamodule.target,
                       "kwargs": {"arrays": arrays, "batch_size": job.model.batch_size, "seed": job.seed}
                       | dict(job.datamodule.params)})
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_seconds = time.perf_counter() - started
    if trainer.global_rank != 0:
        return None
    if checkpoint.best_state is not None:
        module.load_state_dict(checkpoint.best_state)
    weights = out / "model.pt"
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, weights)
    score = checkpoint.best_score
    result = TrainResult(
        history=history.rows, epochs_run=len(history.rows), best_score=float(score) if score is not None else None,
        fit_seconds=fit_seconds, world_size=trainer.world_size, pruned=bool(pruning and pruning.pruned), state_dict=weights.name, init=init,
    )
    (out / "train_result.json").write_text(result.model_dump_json(indent=2))
    return result


def load_result(out_dir: Path) -> TrainResult:
    return TrainResult.model_validate(json.loads((out_dir / "train_result.json").read_text()))
