"""A DataModule over already-preprocessed arrays (the preprocessing belongs to the exported graph).

A tabular-only recipe's split is `(x, y)`: float32 features, served as `(x, y)` tensor batches. A recipe with
image or text columns gives each split as `(inputs, y)` with `inputs` a dict of arrays by network input
(`tabular` float32 [N, F], each image column uint8 [N, H, W, C], each text column int64 [N, L]), served as
`(dict of tensors, y)` batches; training images may be augmented, validation ones never are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mlops.data.media import TABULAR
from mlops.recipe.schema import AugmentConfig

Split = tuple[np.ndarray | dict[str, np.ndarray], np.ndarray]
Transform = Callable[[torch.Tensor], torch.Tensor]


def is_image(array: np.ndarray) -> bool:
    """Images are the only uint8 [N, H, W, C] arrays a preprocess step writes."""
    return array.dtype == np.uint8 and array.ndim == 4


def image_augmenter(augment: AugmentConfig, size: tuple[int, int]) -> Transform | None:
    """A random change per call to a uint8 [H, W, C] image, as `augment` says; None when it asks for none."""
    from torchvision.transforms import v2

    steps: list[Any] = []
    if augment.flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if augment.crop:
        steps.append(v2.RandomCrop(size, padding=augment.crop))
    if augment.rotate:
        steps.append(v2.RandomRotation(augment.rotate))
    if augment.brightness or augment.contrast:
        steps.append(v2.ColorJitter(brightness=augment.brightness or None, contrast=augment.contrast or None))
    if not steps:
        return None
    compose = v2.Compose(steps)

    def apply(image: torch.Tensor) -> torch.Tensor:
        # torchvision works on [C, H, W]; the network takes [H, W, C] like serving sends it
        return compose(image.permute(2, 0, 1)).permute(1, 2, 0).contiguous()

    return apply


class InputsDataset(Dataset):
    """Row i of every input array, as `({name: tensor}, y)`; training images pass through their augmenter."""

    def __init__(self, inputs: dict[str, np.ndarray], y: torch.Tensor,
                 augment: dict[str, Transform] | None = None) -> None:
        self.inputs = {name: torch.from_numpy(_network_dtype(name, arr)) for name, arr in inputs.items()}
        self.y = y
        self.augment = augment or {}

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        row = {name: t[i] for name, t in self.inputs.items()}
        for name, transform in self.augment.items():
            row[name] = transform(row[name])
        return row, self.y[i]


def _network_dtype(name: str, arr: np.ndarray) -> np.ndarray:
    if name == TABULAR or arr.dtype.kind == "f":
        return np.ascontiguousarray(arr, dtype=np.float32)
    if is_image(arr):
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr, dtype=np.int64)  # token ids: what nn.Embedding takes


class ArrayDataModule(L.LightningDataModule):
    def __init__(self, arrays: dict[str, Split], batch_size: int, seed: int,
                 augment: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.arrays = arrays
        self.batch_size = batch_size
        self.seed = seed
        self.augment = AugmentConfig.model_validate(augment or {})

    def _dataset(self, split: str) -> Dataset:
        x, y = self.arrays[split]
        target = torch.from_numpy(y.astype(np.float32) if y.dtype.kind == "f" else y.astype(np.int64))
        if isinstance(x, dict):
            augment: dict[str, Transform] = {}
            if split == "train":  # validation (and everything after training) sees images as they are
                for name, arr in x.items():
                    transform = image_augmenter(self.augment, arr.shape[1:3]) if is_image(arr) else None
                    if transform is not None:
                        augment[name] = transform
            return InputsDataset(x, target, augment)
        return TensorDataset(torch.from_numpy(x.astype(np.float32)), target)

    def train_dataloader(self) -> DataLoader:
        # A seeded generator keeps the shuffle order identical run to run (reproducibility)
        gen = torch.Generator().manual_seed(self.seed)
        dataset = self._dataset("train")
        # batch norm cannot train on a last batch of one row once the image is down to one pixel (a
        # torchvision net on small images): that row waits for the next epoch's shuffle instead
        rows = len(dataset)
        drop_last = isinstance(dataset, InputsDataset) and rows % self.batch_size == 1 and rows > 1
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, generator=gen,
                          drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("val"), batch_size=max(self.batch_size, 256))
