"""A DataModule over already-preprocessed arrays (the preprocessing belongs to the exported graph)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


class ArrayDataModule(L.LightningDataModule):
    def __init__(self, arrays: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int, seed: int) -> None:
        super().__init__()
        self.arrays = arrays
        self.batch_size = batch_size
        self.seed = seed

    def _dataset(self, split: str) -> TensorDataset:
        x, y = self.arrays[split]
        target = torch.from_numpy(y.astype(np.float32) if y.dtype.kind == "f" else y.astype(np.int64))
        return TensorDataset(torch.from_numpy(x.astype(np.float32)), target)

    def train_dataloader(self) -> DataLoader:
        # A seeded generator keeps the shuffle order identical run to run (reproducibility)
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self._dataset("train"), batch_size=self.batch_size, shuffle=True, generator=gen)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("val"), batch_size=max(self.batch_size, 256))
