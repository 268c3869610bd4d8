"""Ground truth from the prediction log: each served prediction joined with its latest feedback, by id.

Feedback (`POST /v1/feedback`, `mlops feedback FILE`) is stored with its whole payload. It becomes a truth in
this order:

1. explicit: a corrected `label` (classification) or `value` (regression);
2. explicit: `thumbs` (`up`/`down`, or true/false) when `improve.feedback.thumbs`: up means the served answer
   was right; down means it was wrong, which names the truth only for a binary task (the other class);
3. implicit: the declared outcome field (`improve.feedback.outcome.field`, at the top of the payload or under
   `outcome`), mapped to a label by `improve.feedback.outcome.labels`.

Reads only, through the log's one reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops.core.predlog import SERVED, finite_float, json_object
from mlops.core.predlog_store import open_reader
from mlops.recipe.improve import FeedbackConfig


@dataclass
class Joined:
    id: str
    ts: float
    version: str | None
    variant: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    latency_ms: float
    truth: Any = None  # the label (str) or value (float) when known
    correct: bool | None = None  # classification: whether the served label was right, when known
    source: str | None = None  # label | value | thumbs | outcome
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted(self) -> Any:
        if "label" in self.outputs:
            return str(self.outputs["label"])
        return self.outputs.get("prediction")

    @property
    def true_value(self) -> float | None:
        """A regression answer's truth as a number: a feedback `value`, or a `label` that reads as one (`12.5` from
        a CSV's label column); None for a class name (`high`: `mlops feedback FILE` takes one whatever the task),
        from which no error can be taken."""
        if isinstance(self.truth, str):
            try:
                number = float(self.truth)
            except ValueError:
                return None
            return number if math.isfinite(number) else None
        return finite_float(self.truth)

    @property
    def error(self) -> float | None:
        """A regression answer's signed error (prediction - truth); None when either is no finite number."""
        truth, predicted = self.true_value, finite_float(self.outputs.get("prediction"))
        return None if truth is None or predicted is None else predicted - truth


def read_joined(path: str | Path, model: str | None = None, *, since: float | None = None,
                variants: tuple[str, ...] = SERVED, feedback: FeedbackConfig | None = None,
                labels: list[str] | None = None, version: str | None = None) -> list[Joined]:
    """One row per prediction id and variant (the latest), with the truth its latest feedback gives.

    `labels` (the model's classes) lets a thumbs-down name the truth of a binary task.
    """
    feedback = feedback or FeedbackConfig()
    with open_reader(path) as reader:
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for r in reader.predictions(variants, model, since, version):  # a re-sent id keeps its latest answer
            latest[(r["id"], r["variant"])] = r
        notes = reader.latest_feedback([k[0] for k in latest])
    out = []
    for (pid, _), r in latest.items():
        j = Joined(id=pid, ts=float(r["ts"]), version=r["version"], variant=r["variant"],
                   inputs=json_object(r["inputs"]), outputs=json_object(r["outputs"]),
                   latency_ms=float(r["latency_ms"]))
        note = notes.get(pid)
        if note is not None:
            interpret(j, note, feedback, labels)
        out.append(j)
    return sorted(out, key=lambda j: (j.ts, j.id))


def interpret(j: Joined, note: dict[str, Any], cfg: FeedbackConfig, labels: list[str] | None) -> None:
    """Set the row's truth (and whether the served answer was right) from one feedback record."""
    payload = note.get("payload") or {}
    j.payload = payload
    predicted = j.predicted
    if note.get("label") is not None:
        j.truth, j.source = str(note["label"]), "label"
    elif note.get("value") is not None:
        j.truth, j.source = float(note["value"]), "value"
    elif cfg.thumbs and (thumb := thumbs(payload)) is not None:
        j.source = "thumbs"
        if thumb:
            j.truth = predicted
        elif labels is not None and len(labels) == 2 and predicted in labels:
            j.truth = labels[1 - labels.index(predicted)]
        j.correct = thumb
    elif cfg.outcome is not None and cfg.outcome.labels:
        observed = outcome_value(payload, cfg.outcome.field)
        if observed is not None:
            label = {k.strip().lower(): v for k, v in cfg.outcome.labels.items()}.get(_key(observed))
            if label is not None:
                j.truth, j.source = str(label), "outcome"
    if j.correct is None and j.truth is not None and "label" in j.outputs:
        j.correct = str(j.truth) == predicted


def thumbs(payload: dict[str, Any]) -> bool | None:
    value = payload.get("thumbs")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("up", "down"):
        return value.strip().lower() == "up"
    return None


def outcome_value(payload: dict[str, Any], name: str) -> Any:
    if name in payload and name not in ("id", "label", "value"):
        return payload[name]
    nested = payload.get("outcome")
    return nested.get(name) if isinstance(nested, dict) else None


def business_value(payload: dict[str, Any], name: str) -> float | None:
    """A feedback field as a number (true/false count as 1/0), or None when absent or not a number."""
    value = outcome_value(payload, name)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes"):
            return 1.0
        if text in ("false", "no"):
            return 0.0
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()
