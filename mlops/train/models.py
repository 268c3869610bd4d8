"""The built-in tabular MLP. Any LightningModule named by `model._target_` may replace it: it is built
with `input_dim`, `output_dim`, `task` and the recipe's `model.params`, and its `forward(x)` takes the
preprocessed float32 features (that is what the ONNX export wraps)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F


class TabularMLP(L.LightningModule):
    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        task: str,
        hidden: list[int],
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, output_dim))
        self.net = nn.Sequential(*layers)
        self.task = task
        if task != "regression":
            from torchmetrics.classification import BinaryAUROC, MulticlassAUROC

            # a Metric object accumulates over the whole epoch and syncs across DDP ranks by itself
            self.val_auroc = BinaryAUROC() if output_dim == 2 else MulticlassAUROC(num_classes=output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "regression":
            return F.mse_loss(out.squeeze(-1), y)
        return F.cross_entropy(out, y)

    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._rows = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        # summed here and logged once per epoch: Lightning's per-step self.log costs more than a tiny
        # model's whole step
        self._loss_sum = self._loss_sum + loss.detach() * len(x)
        self._rows += len(x)
        return loss

    def on_train_epoch_end(self) -> None:
        mean = self._loss_sum / max(self._rows, 1)
        self.log("train/loss", mean, on_epoch=True, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        # sync_dist so every DDP rank reports the metric over the whole validation set, not its shard
        self.log("val/loss", self.loss(out, y), on_epoch=True, sync_dist=True, batch_size=len(x))
        if self.task == "regression":
            err = out.squeeze(-1) - y
            self.log("val/rmse", err.pow(2).mean().sqrt(), on_epoch=True, sync_dist=True, batch_size=len(x))
            self.log("val/mae", err.abs().mean(), on_epoch=True, sync_dist=True, batch_size=len(x))
        else:
            acc = (out.argmax(-1) == y).float().mean()
            self.log("val/accuracy", acc, on_epoch=True, sync_dist=True, batch_size=len(x))
            proba = out.softmax(-1)
            self.val_auroc.update(proba[:, 1] if proba.shape[1] == 2 else proba, y)
            self.log("val/auroc", self.val_auroc, on_epoch=True, batch_size=len(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        params = self.parameters()
        if hp.optimizer == "sgd":
            return torch.optim.SGD(params, lr=hp.lr, weight_decay=hp.weight_decay, momentum=0.9)
        cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=hp.lr, weight_decay=hp.weight_decay)
