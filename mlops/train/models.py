"""The built-in networks' shared training logic, and the built-in tabular MLP.

Any LightningModule named by `model._target_` may replace the MLP: it is built with `input_dim`,
`output_dim`, `task` and the recipe's `model.params`, and its `forward(x)` takes the preprocessed float32
features (that is what the ONNX export wraps). The multi-input network (images, text) lives in
`mlops.train.multimodal` and shares `SupervisedModule` with the MLP.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F


class SupervisedModule(L.LightningModule):
    """Loss, per-epoch metrics and optimiser of the built-in networks. A batch is `(inputs, y)`; `inputs` is
    whatever the subclass's forward takes (a tensor for the MLP, a dict of tensors for the multi-input net),
    so rows are counted from `y`. Subclasses call `save_hyperparameters()` (lr, weight_decay, optimizer) and
    `setup_task` in their own __init__."""

    task: str

    def setup_task(self, task: str, output_dim: int) -> None:
        self.task = task
        if task != "regression":
            from torchmetrics.classification import BinaryAUROC, MulticlassAUROC

            # a Metric object accumulates over the whole epoch and syncs across DDP ranks by itself; its
            # state is not persistent, so it adds no state_dict keys
            self.val_auroc = BinaryAUROC() if output_dim == 2 else MulticlassAUROC(num_classes=output_dim)

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
        self._loss_sum = self._loss_sum + loss.detach() * len(y)
        self._rows += len(y)
        return loss

    def on_train_epoch_end(self) -> None:
        mean = self._loss_sum / max(self._rows, 1)
        self.log("train/loss", mean, on_epoch=True, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        n = len(y)
        # sync_dist so every DDP rank reports the metric over the whole validation set, not its shard
        self.log("val/loss", self.loss(out, y), on_epoch=True, sync_dist=True, batch_size=n)
        if self.task == "regression":
            err = out.squeeze(-1) - y
            self.log("val/rmse", err.pow(2).mean().sqrt(), on_epoch=True, sync_dist=True, batch_size=n)
            self.log("val/mae", err.abs().mean(), on_epoch=True, sync_dist=True, batch_size=n)
        else:
            acc = (out.argmax(-1) == y).float().mean()
            self.log("val/accuracy", acc, on_epoch=True, sync_dist=True, batch_size=n)
            proba = out.softmax(-1)
            self.val_auroc.update(proba[:, 1] if proba.shape[1] == 2 else proba, y)
            self.log("val/auroc", self.val_auroc, on_epoch=True, batch_size=n)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        # frozen parameters (model.freeze) stay out of the optimiser: weight decay and momentum never touch
        # them. With nothing frozen this is every parameter, in the same order as parameters().
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            return torch.optim.SGD(params, lr=hp.lr, weight_decay=hp.weight_decay, momentum=0.9)
        cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=hp.lr, weight_decay=hp.weight_decay)


class TabularMLP(SupervisedModule):
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
        self.setup_task(task, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
