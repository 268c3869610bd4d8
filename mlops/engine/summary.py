"""What a run, a partial run and an evaluation return: the models behind `summary.json` and `--json`.

Field names are the JSON keys those have always had (tests, `examples/demo_loop.py` and users' scripts read
them). Apart from the step results (`mlops.engine.results`): no step imports this module, so reshaping a
summary changes no step's code version and reruns nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from mlops.evaluate.gates import GateDecision, GateVerdict, Outcome, Status


class VerdictBrief(BaseModel):
    """A gate's verdict as the run summary shows it (the evaluation report keeps the comparison's details)."""

    metric: str
    slice: str | None
    threshold: str
    value: float | None
    status: Status
    detail: str

    @classmethod
    def of(cls, verdict: GateVerdict) -> VerdictBrief:
        return cls(metric=verdict.metric, slice=verdict.slice, threshold=verdict.threshold, value=verdict.value,
                   status=verdict.status, detail=verdict.detail)


class GateSummary(BaseModel):
    outcome: Outcome
    failures: list[str]
    champion: str | None
    verdicts: list[VerdictBrief]
    report: str  # the evaluation report (HTML) in the run's directory; evaluation.json beside it


class RunSummary(BaseModel):
    """One complete run: `execute`'s result, the run directory's `summary.json`, `mlops run --json`."""

    run_id: str
    recipe: str
    model_name: str
    model_version: str | None  # None when the registry is disabled
    aliases: list[str]
    metrics: dict[str, float | int]  # evaluate's and assess's, and train/epochs (a count: an int in the JSON)
    bundle: str  # the bundle copied into the run's directory
    weights: str | None = None  # the trained state dict beside it (model.pt): `model.weights` of a fine-tuning run
    data_fingerprint: str
    recipe_hash: str
    overrides: list[str]
    split_sizes: dict[str, int]
    parity_max_abs_diff: float
    gates: GateSummary
    world_size: int
    cache: dict[str, Literal["reused", "ran"]]  # by step, in plan order
    run_dir: str
    tracking_uri: str
    experiment: str
    seconds: float


class TrialRun(BaseModel):
    """A run stopped after a step (`execute_until`): a sweep trial (complete, or pruned by Optuna while
    training) or a reproduction."""

    run_id: str
    state: Literal["complete", "pruned"]
    history: list[dict[str, float]]  # one row per epoch trained: {"epoch": n, metric: value, ...}
    metrics: dict[str, float]  # the evaluate step's, when the run got that far
    cache: dict[str, bool] = {}  # by step: whether its cached result was reused (empty when pruned)
    onnx_sha256: str | None = None  # when the run got as far as export


class MultirunSummary(BaseModel):
    parent_run_id: str
    jobs: list[RunSummary]


class Evaluation(BaseModel):
    """`mlops evaluate`: a registered model (or bundle) scored on a recipe's data, its gates applied."""

    model: str  # the model evaluated, as resolved (`name/version`, or the bundle's path)
    run_id: str
    metrics: dict[str, float]
    gates: GateDecision
    report: str  # the evaluation report (HTML)
    tracking_uri: str
