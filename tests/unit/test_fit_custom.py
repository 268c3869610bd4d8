"""A recipe's `_target_` LightningModule and DataModule are what `fit` trains with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mlops.recipe.schema import DataModuleConfig, ModelConfig, TrainerConfig
from mlops.train.fit import TrainJob, fit


def test_fit_uses_custom_module_and_datamodule(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "arrays.npz", x_train=x[:60], y_train=y[:60], x_val=x[60:], y_val=y[60:])
    marker = tmp_path / "marker.txt"
    job = TrainJob(
        model=ModelConfig.model_validate({"_target_": "tests.fixtures.custom_modules.LogisticModule",
                                          "batch_size": 16, "params": {"lr": 0.2, "bias": False}}),
        datamodule=DataModuleConfig.model_validate({"_target_": "tests.fixtures.custom_modules.CountingDataModule",
                                                    "params": {"marker": str(marker)}}),
        trainer=TrainerConfig(max_epochs=3, early_stopping=None), seed=1, task="binary", input_dim=3, output_dim=2,
        arrays=str(tmp_path / "arrays.npz"), out_dir=str(tmp_path / "out"),
    )
    result = fit(job)
    assert result is not None and result.epochs_run == 3
    assert result.init == {"class": "tests.fixtures.custom_modules.LogisticModule",
                           "kwargs": {"input_dim": 3, "output_dim": 2, "task": "binary", "lr": 0.2, "bias": False}}
    assert marker.read_text().count("train_dataloader") >= 1
    weights = torch.load(tmp_path / "out" / result.state_dict, weights_only=True)
    assert set(weights) == {"linear.weight"}  # bias=False reached the constructor
    assert [row["epoch"] for row in result.history] == [0.0, 1.0, 2.0]
    saved = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert saved["best_score"] == result.best_score
