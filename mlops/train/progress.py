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
