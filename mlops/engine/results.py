"""What each step returns, as a model: the step cache writes it as its entry's `result.json`, reads it back.

Field names are the JSON keys the cache has always written (a field added later has a default, so an older
entry still loads). Every step module imports this one, so it is part of every step's code version
(`mlops.engine.plan`): it stays small and imports nothing of mlops but the data models of the network's inputs
(`mlops.data.media`, which the data steps reach anyway). The train
step returns `mlops.train.result.TrainResult` and the gate step `mlops.evaluate.gates.GateDecision`, each
defined where it is produced, so that only the steps that read them carry those modules in their version.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, model_validator

from mlops.core.lazymodel import LazyModel
from mlops.data.media import ModelInputs, PixelStats

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class StepOutput(Generic[R]):
    """A step's result and the directory holding its files: the cache entry, or the run's own for a step
    that is never cached."""

    result: R
    dir: Path


def result_type(fn: Callable[..., R]) -> type[R]:
    """The model a step function returns, read from its return annotation: the cache parses `result.json`
    into it, so a step states its result type once."""
    kind = typing.get_type_hints(fn).get("return")
    if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
        raise TypeError(f"step {fn.__module__}.{fn.__name__} must be annotated to return a pydantic model")
    return kind  # type: ignore[return-value]


class LoadDataResult(LazyModel):
    fingerprint: str  # the content fingerprint of the rows' bytes ("sha256:...")
    dvc: dict[str, Any] | None  # what DVC recorded for the file, when DVC tracks it
    source: str  # the recipe's data path, or `<package>:<name>` for a built-in data set
    rows: int
    columns: list[str]


class CheckDataResult(LazyModel):
    rows: int
    checked: int  # how many expectations held (a violated one raises instead)
    media: dict[str, int] = Field(default_factory=dict)  # image/text column -> rows found fit for the network


class SplitResult(LazyModel):
    task: str  # the task the target implies ("binary", "multiclass", "regression"), 'auto' resolved
    sizes: dict[str, int]  # rows per split: train, val, test
    digest: str  # a hash of the row indices of every split
    seed: int


class PreprocessResult(LazyModel):
    task: str
    n_features: int  # width of the encoded scalar feature matrix (the `tabular` input)
    labels: list[str] | None  # class labels in output order; None for regression
    target_scale: tuple[float, float] | None  # regression: (mean, std) the target was standardised with
    # what the network takes, by input, with each input's arrays in arrays.npz under ModelInputs.array_key; a
    # text's tokenizer file is in the step's directory. An entry from before images and text: tabular only
    inputs: ModelInputs = Field(default_factory=ModelInputs)
    pixel_stats: dict[str, PixelStats] = Field(default_factory=dict)  # image column -> training pixel stats

    @model_validator(mode="before")
    @classmethod
    def _tabular_only_before(cls, value: Any) -> Any:
        if isinstance(value, dict) and "inputs" not in value and "n_features" in value:
            return value | {"inputs": {"tabular": value["n_features"]}}
        return value


class EvaluateResult(LazyModel):
    metrics: dict[str, float]  # every metric of the task on val and test ("test/auroc": ...)
    plots: list[str]  # file names inside the step's directory
    step: int  # the MLflow step the metrics are logged at: the one after the last epoch


class Parity(LazyModel):
    """The ONNX model's outputs against the trained module's on the test rows (package.export.check_parity)."""

    max_abs_diff: float
    rows: int
    batch_sizes: list[int]
    atol: float


class ExportResult(LazyModel):
    bundle: str  # the bundle's directory, relative to the step's directory
    parity: Parity
    onnx_sha256: str
    onnx_bytes: int


class AssessResult(LazyModel):
    """What `mlops.evaluate.assess.assess_bundle` computes; the same dict is in the entry's `assess.json`."""

    metrics: dict[str, float]  # perf/*, robustness/*, fairness/*
    slices: list[dict[str, Any]]
    fairness: dict[str, dict[str, Any]]  # by sensitive column
    robustness: list[dict[str, Any]]
    performance: dict[str, Any]  # the onnx (and torch) inference benchmarks
    importance: dict[str, Any] = {}  # permutation importance and attributions (mlops.evaluate.importance)
    load_test: dict[str, Any] | None = None  # mlops.evaluate.loadtest.LoadTestResult, when evaluate.load_test is on

    def gate_inputs(self, metrics: dict[str, float]) -> dict[str, Any]:
        """What the gates read (mlops.evaluate.gates.metric_value): these results, with `metrics` added."""
        return {"metrics": metrics | self.metrics, "slices": self.slices, "fairness": self.fairness,
                "robustness": self.robustness, "performance": self.performance, "importance": self.importance,
                "load_test": self.load_test}


class RegisterResult(LazyModel):
    model_name: str
    model_version: str | None  # None when the registry is disabled
    aliases: list[str]
    reused: bool = False  # the same bundle (by checksum) was registered before: that version is reported
    gates: Literal["passed", "failed", "allowed"] | None = None  # the tag the version carries
