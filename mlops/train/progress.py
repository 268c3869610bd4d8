"""What a fit reports while it runs and keeps to resume: one readable line per epoch, every epoch's metrics
streamed to the MLflow run as the epoch ends, and checkpoints (last and best) written whole or not at all.

The epoch history travels inside each checkpoint (a callback's state), so a fit resumed after a kill still
returns every epoch's row, and the stream knows which epochs MLflow already holds.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from mlops.core.log import say
from mlops.train.result import TrackingLink

LAST = "last"  # checkpoints/last.ckpt: where a killed fit resumes
BEST = "best"  # checkpoints/best.ckpt: the best epoch by trainer.checkpoint.monitor, the weights kept


class EpochHistory(Callback):
    """One row of metrics per epoch, with the wall-clock time (ms) it ended at."""

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.rows: list[dict[str, float]] = []
        self.times: list[int] = []

    def record(self, trainer: Any) -> None:
        """Called by `Checkpoints` when the epoch ends, after the module's own `on_train_epoch_end` logged its
        epoch metrics (train/loss): a plain callback's hook runs before it and would see the epoch before's."""
        row = {"epoch": float(trainer.current_epoch)}
        row |= {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if "/" in k}
        self.rows.append(row)
        self.times.append(int(time.time() * 1000))
        if trainer.is_global_zero:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
            say(f"epoch {trainer.current_epoch + 1}/{self.max_epochs}  {shown}")

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "times": self.times}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        self.times = list(state_dict.get("times", []))


class MetricStream(Callback):
    """Each epoch's row to the MLflow run when the epoch ends, at its real time, from global rank 0.

    It runs before the epoch's checkpoint is written (see `Checkpoints`), so a kill in between re-runs that
    epoch: an epoch MLflow already holds is not logged twice. A tracking server that
    cannot be reached does not stop the training: its epochs are sent again at the next epoch's end, and
    `complete` says whether every epoch got through in the end.
    """

    def __init__(self, link: TrackingLink, history: EpochHistory) -> None:
        self.link = link
        self.history = history
        self._client: Any = None
        self._logged: set[int] = set()
        self._warned = False

    @property
    def complete(self) -> bool:
        return {int(row["epoch"]) for row in self.history.rows} <= self._logged

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        from mlflow import MlflowClient  # only where a run is streamed to: the bare GPU worker lacks mlflow

        self._client = MlflowClient(self.link.tracking_uri)
        keys = {k for row in self.history.rows for k in row if k != "epoch"}
        try:
            for key in keys:  # a resumed fit: the epochs the killed one streamed
                self._logged |= {int(m.step) for m in self._client.get_metric_history(self.link.run_id, key)}
        except Exception as exc:  # noqa: BLE001 - see the class: never fatal to the training
            self._unreachable(exc)
        self._send()  # epochs checkpointed but killed before they were streamed

    def epoch_ended(self, trainer: Any) -> None:
        """Called by `Checkpoints` right after the epoch's row is recorded, before it is checkpointed."""
        if trainer.is_global_zero:
            self._send()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self._send()

    def _send(self) -> None:
        from mlflow.entities import Metric

        if self._client is None:
            return
        for row, at in zip(self.history.rows, self.history.times, strict=False):
            epoch = int(row["epoch"])
            if epoch in self._logged:
                continue
            metrics = [Metric(k, v, at, epoch) for k, v in row.items() if k != "epoch"]
            try:
                if metrics:
                    self._client.log_batch(self.link.run_id, metrics=metrics)
            except Exception as exc:  # noqa: BLE001 - see the class
                self._unreachable(exc)
                return
            self._logged.add(epoch)

    def _unreachable(self, exc: Exception) -> None:
        if not self._warned:
            say(f"cannot stream epoch metrics to MLflow run {self.link.run_id} ({type(exc).__name__}: {exc}); "
                "training goes on and sends them later")
            self._warned = True


class Checkpoints(ModelCheckpoint):
    """`last.ckpt` every epoch and `best.ckpt` (overwritten in place) when the monitored metric improves.

    A module that does not log the monitored metric trains on and keeps its final weights, as before
    checkpoints were written, instead of failing the fit."""

    def __init__(self, dirpath: Path, monitor: str, mode: str, history: EpochHistory,
                 stream: MetricStream | None = None) -> None:
        super().__init__(dirpath=str(dirpath), filename=BEST, monitor=monitor, mode=mode, save_top_k=1,
                         save_last=True, save_on_train_epoch_end=True, enable_version_counter=False,
                         auto_insert_metric_name=False)
        self.history = history
        self.stream = stream

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # one place orders what an epoch's end does: a checkpoint callback's hook runs after the module's
        # (which logs train/loss), then the row is recorded, streamed, and only then checkpointed
        self.history.record(trainer)
        if self.stream is not None:
            self.stream.epoch_ended(trainer)
        super().on_train_epoch_end(trainer, pl_module)

    def _save_topk_checkpoint(self, trainer: Any, monitor_candidates: dict[str, Any]) -> None:
        if self.monitor in monitor_candidates:
            super()._save_topk_checkpoint(trainer, monitor_candidates)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A checkpoint file is the old one or the new one, never half of one, even under `kill -9`:
    written to a temporary file beside it and renamed over it (fsspec's local transaction moves a file from
    /tmp, which is a copy when /tmp is another file system)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        import torch

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
            os.replace(name, target)
        finally:
            Path(name).unlink(missing_ok=True)
