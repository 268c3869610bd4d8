"""A served request's prediction-log rows, built by the commit that writes them.

The log keeps, per answered row, its inputs as the model saw them (an image's digest and descriptors, a text)
and its outputs (with the embedding of an image or text model). Building those per request costs more than
the model call for a small image (numpy's per-call overhead on one 32x32 image), so a request only hands over
its arrays; the log's commit builds the rows of every request it groups in one pass (see
`mlops.core.predlog.DeferredRows`). The request still waits for that commit: a 200 still means "logged".
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops.core.predlog import prediction_rows
from mlops.package.predictor import Prediction, Predictor, join_feeds


@dataclass(eq=False)
class PendingPrediction:
    """One request's answer, waiting for its log rows."""

    predictor: Predictor  # the arm's: its columns say how each input is logged
    ids: list[str]
    model: str
    version: str | None
    variant: str
    feeds: dict[str, np.ndarray]
    prediction: Prediction
    latency_ms: float

    def group_key(self) -> Hashable:
        # requests of one model whose feeds have the same parts (bytes sent or pixels) stack into one pass
        return id(self.predictor), tuple(sorted(self.feeds))

    @classmethod
    def build(cls, items: Sequence[Any]) -> list[list[tuple[Any, ...]]]:
        pending: list[PendingPrediction] = list(items)
        first = pending[0]
        if len(pending) == 1:
            inputs, outputs = first.predictor.log_rows(first.feeds), first.prediction.log_instances()
        else:
            inputs = first.predictor.log_rows(join_feeds([p.feeds for p in pending]))
            outputs = joined(p.prediction for p in pending).log_instances()
        out, start = [], 0
        for p in pending:
            end = start + p.prediction.rows
            out.append(prediction_rows(p.ids, p.model, p.version, p.variant, inputs[start:end], outputs[start:end],
                                       p.latency_ms))
            start = end
        return out


def joined(predictions: Any) -> Prediction:
    """Several predictions of one model as one (their outputs and embeddings stacked)."""
    parts: list[Prediction] = list(predictions)
    outputs = {name: np.concatenate([np.asarray(p.outputs[name]) for p in parts]) for name in parts[0].outputs}
    embeddings = [p.embedding for p in parts]
    return Prediction(outputs, sum(p.rows for p in parts),
                      None if any(e is None for e in embeddings) else np.concatenate(embeddings))
