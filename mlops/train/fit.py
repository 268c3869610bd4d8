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

from pydantic import BaseModel, Field

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.data.media import ModelInputs, PixelStats
from mlops.data.preprocess import pixel_stats
from mlops.recipe.schema import (
    BUILTIN_MODEL,
    MULTI_INPUT_MODEL,
    AugmentConfig,
    DataModuleConfig,
    ModelConfig,
    TrainerConfig,
)
from mlops.train.datamodule import Split, is_image
from mlops.train.finetune import fine_tune, resolve
from mlops.train.progress import (
    BEST,
    LAST,
    AtomicCheckpointIO,
    Checkpoints,
    EpochHistory,
    MetricStream,
)
from mlops.train.pruning import OptunaPruning, PruneLink
from mlops.train.result import TrackingLink, TrainResult, checkpoint_dir
from mlops.train.system_metrics import SystemMetrics


class TrainJob(BaseModel):
    """Everything a training process needs, serialisable to JSON for the worker subprocess."""

    model: ModelConfig
    datamodule: DataModuleConfig
    trainer: TrainerConfig
    seed: int
    task: str
    input_dim: int
    output_dim: int
    arrays: str  # .npz with x_train, y_train, x_val, y_val (and each image/text input's, see `inputs`)
    out_dir: str
    prune: PruneLink | None = None  # set for a sweep trial: report epochs to Optuna, stop when pruned
    # a recipe with image or text columns: what the network takes (ModelInputs.array_key names its arrays);
    # batches are then ({input: tensor}, y). None: a tabular-only recipe, (x, y) batches as ever
    inputs: ModelInputs | None = None
    # per image column the training split's per-channel mean and std of pixels/255 (the preprocess result's);
    # a column missing here is measured from the training arrays by `fit`
    pixel_stats: dict[str, PixelStats] = Field(default_factory=dict)
    recipe_dir: str | None = None  # where a relative model.weights starts (the recipe's folder)
    tracking: TrackingLink | None = None  # the MLflow run each epoch's metrics stream to while training runs
    system_metrics: bool = True  # MLflow's system metrics (CPU, memory, GPU) in that run while training runs


def dict_inputs(job: TrainJob) -> ModelInputs | None:
    """The network inputs when batches are dicts: data with image or text columns, or the multi-input
    network on tabular data alone. None: `(x, y)` tensor batches, exactly as for the tabular MLP."""
    return network_inputs(job.model.target, job.inputs, job.input_dim)


def network_inputs(target: str, inputs: ModelInputs | None, input_dim: int) -> ModelInputs | None:
    """`dict_inputs` from its parts, for the steps that run a trained module (evaluate, export, assess)."""
    if inputs is not None and not inputs.scalar_only:
        return inputs
    if target == MULTI_INPUT_MODEL:
        return inputs or ModelInputs(tabular=input_dim)
    return None


def model_init(job: TrainJob) -> dict[str, Any]:
    base = {"input_dim": job.input_dim, "output_dim": job.output_dim, "task": job.task}
    m = job.model
    head = {"hidden": list(m.hidden), "dropout": m.dropout, "lr": m.lr, "weight_decay": m.weight_decay,
            "optimizer": m.optimizer}
    inputs = dict_inputs(job)
    if m.target == MULTI_INPUT_MODEL:
        assert inputs is not None
        stats = {c: job.pixel_stats[c].model_dump() for c in inputs.images if c in job.pixel_stats}
        kwargs = {"inputs": inputs.model_dump(mode="json"), "output_dim": job.output_dim, "task": job.task}
        kwargs |= head | {"image": m.image.model_dump(mode="json"), "text": m.text.model_dump(mode="json"),
                          "pixel_stats": stats}
    elif m.target == BUILTIN_MODEL:
        if inputs is not None:
            columns = ", ".join([*inputs.images, *inputs.texts])
            raise MlopsError(f"the data has image or text inputs ({columns}), which the tabular MLP cannot "
                             f"read: set model._target_ to {MULTI_INPUT_MODEL}")
        kwargs = base | head
    else:
        # a custom module on image/text data gets their description, and dict batches
        described = {"inputs": inputs.model_dump(mode="json")} if inputs is not None else {}
        kwargs = base | described | dict(m.params)
    return {"class": m.target, "kwargs": kwargs}


def load_arrays(path: str, inputs: ModelInputs | None) -> dict[str, Split]:
    """{split: (x, y)} for train and val: x the feature matrix, or {input: array} for dict batches."""
    import numpy as np

    data = np.load(path)
    if inputs is None:
        return {s: (data[f"x_{s}"], data[f"y_{s}"]) for s in ("train", "val")}
    return {s: ({n: data[ModelInputs.array_key(n, s)] for n in inputs.names}, data[f"y_{s}"])
            for s in ("train", "val")}


def with_pixel_stats(job: TrainJob, arrays: dict[str, Split]) -> TrainJob:
    """The job with every image input's normalisation: measured here from the training split when the
    preprocess step did not record it."""
    train = arrays["train"][0]
    if not isinstance(train, dict):
        return job
    missing = {n: pixel_stats(a) for n, a in train.items() if is_image(a) and n not in job.pixel_stats}
    return job.model_copy(update={"pixel_stats": job.pixel_stats | missing}) if missing else job


def build_module(init: dict[str, Any]) -> Any:
    """Instantiate `init["class"]` (a dotted path) with `init["kwargs"]`."""
    module_name, _, attr = init["class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(**init["kwargs"])


def quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*LeafSpec.*", ".*isinstance.*treespec.*",
                    ".*exists and is not empty.*"):  # a resumed fit finds its own checkpoints there
        warnings.filterwarnings("ignore", pattern)


def resume_point(out_dir: str | Path) -> tuple[Path, int] | None:
    """The last checkpoint a killed fit left and how many epochs it holds; None to start from scratch. An
    unreadable one (it cannot be half-written, see AtomicCheckpointIO, but a disk can fail) is set aside."""
    import torch

    last = checkpoint_dir(out_dir) / f"{LAST}.ckpt"
    if not last.is_file():
        return None
    try:
        epoch = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
    except Exception as exc:  # noqa: BLE001 - whatever broke it, training from scratch is the remedy
        say(f"checkpoint {last} is unreadable ({type(exc).__name__}): training from the first epoch")
        last.replace(last.with_suffix(".unreadable"))
        return None
    return last, epoch + 1


def fit(job: TrainJob) -> TrainResult | None:
    """Train; return the result on global rank 0 (other ranks return None). A fit killed before it ended
    left `checkpoints/last.ckpt` in the job's out_dir: the same job resumes from it."""
    import lightning as L
    import torch
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.callbacks import EarlyStopping

    quiet_lightning()
    L.seed_everything(job.seed, workers=True, verbose=False)
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = dict_inputs(job)
    arrays = load_arrays(job.arrays, inputs)
    job = with_pixel_stats(job, arrays)
    init = model_init(job)
    module = build_module(init)
    m = job.model
    weights = resolve(m.weights, job.recipe_dir) if m.weights else None
    tuned = fine_tune(module, weights, list(m.freeze))
    say_once = rank_zero_only(say)  # once, not once per DDP rank
    if tuned is not None:
        say_once(tuned.summary())
    t = job.trainer
    history = EpochHistory(max_epochs=t.max_epochs)
    stream = MetricStream(job.tracking, history) if job.tracking is not None else None
    checkpoint = Checkpoints(checkpoint_dir(out), monitor=t.checkpoint.monitor, mode=t.checkpoint.mode,
                             history=history, stream=stream)
    callbacks: list[Any] = [history, checkpoint, *([stream] if stream is not None else [])]
    if job.tracking is not None and job.system_metrics:
        callbacks.append(SystemMetrics(job.tracking))
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
        plugins=[AtomicCheckpointIO()],
    )
    dm_kwargs: dict[str, Any] = {"arrays": arrays, "batch_size": m.batch_size, "seed": job.seed}
    if inputs is not None and inputs.images and m.augment != AugmentConfig():
        # only when asked: a custom datamodule that cannot augment then says so instead of ignoring it
        dm_kwargs["augment"] = m.augment.model_dump()
    dm = build_module({"class": job.datamodule.target, "kwargs": dm_kwargs | dict(job.datamodule.params)})
    resume = resume_point(out)
    if resume is not None:
        say_once(f"resuming training from checkpoint {resume[0]}: {resume[1]} of {t.max_epochs} epochs done")
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume[0]) if resume else None)
    except SystemExit:
        # Lightning answers a Ctrl-C inside fit by tearing down and calling exit(1): the user's interrupt, which
        # the CLI reports as one ("interrupted", exit 130), not a crashed run
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    fit_seconds = time.perf_counter() - started
    if trainer.global_rank != 0:
        return None
    best = checkpoint_dir(out) / f"{BEST}.ckpt"
    if checkpoint.best_model_path and best.is_file():
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    saved = out / "model.pt"
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, saved)
    score = checkpoint.best_model_score
    result = TrainResult(
        history=history.rows, epochs_run=len(history.rows), best_score=float(score) if score is not None else None,
        fit_seconds=fit_seconds, world_size=trainer.world_size, pruned=bool(pruning and pruning.pruned),
        state_dict=saved.name, init=init,
        fine_tune=tuned.model_dump() if tuned is not None else None,
        epoch_times=history.times, streamed_to=job.tracking.run_id if job.tracking and stream and stream.complete else None,
        resumed_from_epoch=resume[1] if resume else None,
    )
    (out / "train_result.json").write_text(result.model_dump_json(indent=2))
    return result


def load_result(out_dir: Path) -> TrainResult:
    return TrainResult.model_validate(json.loads((out_dir / "train_result.json").read_text()))
