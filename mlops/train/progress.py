"""Per-epoch history and one readable line per epoch when output is not a terminal (CI, Prefect logs)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback


class EpochHistory(Callback):
    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        row = {"epoch": float(trainer.current_epoch)}
        row |= {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if "/" in k}
        self.rows.append(row)
        if trainer.is_global_zero:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
            print(f"epoch {trainer.current_epoch + 1}/{self.max_epochs}  {shown}", flush=True)


class BestWeights(Callback):
    """The weights of the best epoch by `monitor`, kept in memory (a copy per improvement), not written
    to disk each time: for tabular models a checkpoint write costs more than an epoch. Every DDP rank
    holds the same weights, so each keeps its own copy and rank 0's is saved."""

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor = monitor
        self.mode = mode
        self.best_score: float | None = None
        self.best_state: dict[str, Any] | None = None

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        better = self.best_score is None or (score < self.best_score if self.mode == "min" else score > self.best_score)
        if better:
            self.best_score = score
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
