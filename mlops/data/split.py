"""Deterministic train/val/test splits: same seed and data give the same rows, recorded by hash."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from mlops.core.errors import DataError
from mlops.recipe.schema import SplitConfig

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def split_indices(
    frame: pd.DataFrame, target: str, cfg: SplitConfig, seed: int, classification: bool
) -> dict[str, np.ndarray]:
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(frame))
    y = frame[target].astype(str).to_numpy() if classification and cfg.stratify else None
    try:
        train, rest = train_test_split(idx, train_size=cfg.train, random_state=seed, stratify=y)
        rest_y = y[rest] if y is not None else None
        val, test = train_test_split(rest, train_size=cfg.val / (cfg.val + cfg.test), random_state=seed, stratify=rest_y)
    except ValueError as exc:  # e.g. a class with a single row cannot be stratified
        raise DataError(f"cannot split {len(frame)} rows as asked: {exc}") from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def split_digest(parts: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        h.update(name.encode())
        h.update(parts[name].astype("int64").tobytes())
    return h.hexdigest()[:16]
