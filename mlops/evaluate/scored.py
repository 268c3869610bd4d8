"""What every evaluation reads: true targets and a model's outputs on the same rows.

`Scored` is the same whether the outputs came from the trained torch module or from the exported ONNX
model, so metrics, slices, fairness and the champion comparison are computed one way only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlops.data.schema import encode_labels
from mlops.package.bundle import BundleMeta, read_bundle
from mlops.package.predictor import Predictor


@dataclass(frozen=True)
class Scored:
    task: str  # binary | multiclass | regression
    y: np.ndarray  # class indices (int) or targets in their own units (float)
    out: np.ndarray  # probabilities [N, C], or predictions [N] in the target's units
    labels: list[str] | None = None

    @property
    def classification(self) -> bool:
        return self.task != "regression"

    @property
    def pred(self) -> np.ndarray:
        """Predicted class index, or the regression prediction."""
        return self.out.argmax(axis=1) if self.classification else self.out

    def take(self, rows: np.ndarray) -> Scored:
        return Scored(self.task, self.y[rows], self.out[rows], self.labels)

    def __len__(self) -> int:
        return len(self.y)


def encode_targets(values: Any, task: str, labels: list[str] | None) -> np.ndarray:
    """Raw target column -> class indices of `labels` (as the bundle names them), or float targets."""
    import pandas as pd

    series = pd.Series(values)
    if task == "regression":
        return series.to_numpy(np.float64)

    return encode_labels(series, labels or [])


def onnx_outputs(session: Any, feeds: dict[str, np.ndarray], task: str, batch: int = 4096) -> np.ndarray:
    """Probabilities [N, C] or predictions [N] from an ONNX session over raw-column feeds, in chunks."""
    names = [o.name for o in session.get_outputs()]
    want = "prediction" if task == "regression" else "probabilities"
    taken = {i.name for i in session.get_inputs()}  # a decoded request's feeds hold more (its numbers' block)
    feeds = {k: v for k, v in feeds.items() if k in taken}
    n = len(next(iter(feeds.values())))
    parts = []
    for start in range(0, n, batch):
        chunk = {k: v[start:start + batch] for k, v in feeds.items()}
        parts.append(dict(zip(names, session.run(None, chunk), strict=True))[want])
    return np.concatenate(parts).astype(np.float64)


def bundle_feeds(bundle_dir: Path, frame: Any) -> dict[str, np.ndarray]:
    """Raw rows as the bundle's graph takes them, through its Predictor: the checks and transforms of a request
    (scalar columns as raw columns, images decoded, texts tokenized), so scoring here is scoring as served."""
    predictor = Predictor(bundle_dir, max_batch=max(len(frame), 1))
    return predictor.graph_feeds(predictor.frame_feeds(frame))


def with_descriptors(bundle_dir: Path, frame: Any) -> Any:
    """The rows with their image and text inputs' descriptors as columns of their own (`review.chars`,
    `image.brightness`, ...: mlops.data.descriptors), computed as the server logs them, so a slice or a
    mistake can be told by them."""
    if not len(frame):
        return frame
    predictor = Predictor(bundle_dir, max_batch=len(frame))
    described = predictor.descriptors(predictor.frame_feeds(frame))
    return frame.assign(**{k: v for k, v in described.items()})


def media_slices(meta: BundleMeta) -> list[dict[str, Any]]:
    """The slices an image or text model is evaluated on when the recipe declares none: its texts by length,
    its images by brightness and by size, each in quartiles (none for a tabular model)."""
    out = []
    for i in meta.inputs:
        if i.kind == "text":
            out.append({"column": f"{i.name}.chars", "bins": 4})
        elif i.kind == "image":
            out += [{"column": f"{i.name}.brightness", "bins": 4}, {"column": f"{i.name}.width", "bins": 4}]
    return out


def score_bundle(bundle_dir: Path, frame: Any, target: str) -> Scored:
    """Score a model bundle (ONNX only) on raw rows that carry the target column."""
    import onnxruntime as ort


    meta = read_bundle(bundle_dir)
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    out = onnx_outputs(session, bundle_feeds(bundle_dir, frame), meta.task)
    return Scored(meta.task, encode_targets(frame[target], meta.task, meta.labels), out, meta.labels)
