"""Promotion gates: each gate reads one computed metric and says passed, failed, skipped or error.

A gate never passes silently: a metric that was not computed is an error (and an error fails the model).
A `vs: champion` gate scores the registered champion on the same rows and decides with a statistical test.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from mlops.evaluate.metrics import MetricFn, metric_fns
from mlops.evaluate.scored import Scored
from mlops.evaluate.stats import compare
from mlops.recipe.metrics import Direction, task_metrics
from mlops.recipe.schema import Gate
from mlops.recipe.suggest import closest

Status = Literal["passed", "failed", "skipped", "error"]
Outcome = Literal["passed", "failed", "allowed"]  # allowed: failed, but --allow-failed-gates gave it aliases
FAILING = ("failed", "error")


class GateVerdict(BaseModel):
    """One gate's verdict. Field names are the keys of the evaluation report's `gates` and `--json`."""

    metric: str
    kind: Literal["absolute", "champion"]
    slice: str | None = None
    threshold: str
    value: float | None = None
    comparison: dict[str, Any] | None = None  # a champion gate's test: estimate, interval, p-value (stats.compare)
    champion: str | None = None  # the champion compared with: champion gates only
    status: Status
    detail: str

    @model_serializer(mode="wrap")
    def _without_champion_on_absolute(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # an absolute gate's verdict never had a `champion` key: the report and --json keep their shape
        data: dict[str, Any] = handler(self)
        if self.kind == "absolute":
            data.pop("champion", None)
        return data


class GateDecision(BaseModel):
    """What the gates decided for one model: `decide`'s result and the gate step's."""

    outcome: Outcome
    gates: list[GateVerdict]  # every gate's verdict, in the recipe's order (`gates`: the JSON's key all along)
    failures: list[str]  # one line per failing gate (failure_lines)
    champion: str | None  # the champion compared with, when a `vs: champion` gate found one
    report: dict[str, str]  # the evaluation report's files, by format (html, json): names inside the output dir


def threshold_text(gate: Gate) -> str:
    if gate.vs is not None:
        return f"drop vs {gate.vs} <= {gate.max_drop:g} ({gate.test}, alpha {gate.alpha:g}" + (
            ", strict)" if gate.strict else ")")
    parts = []
    if gate.min is not None:
        parts.append(f">= {gate.min:g}")
    if gate.max is not None:
        parts.append(f"<= {gate.max:g}")
    return " and ".join(parts)


def metric_value(gate: Gate, results: dict[str, Any]) -> tuple[float | None, str]:
    """The value a gate reads, or None and why it is not there."""
    family, _, name = gate.metric.partition("/")
    if family == "fairness":
        fairness = results.get("fairness") or {}
        if not fairness:
            return None, "fairness was not computed (set evaluate.fairness.sensitive)"
        column = gate.slice or (next(iter(fairness)) if len(fairness) == 1 else None)
        if column is None:
            return None, f"several sensitive columns ({', '.join(fairness)}): name one with 'slice'"
        if column not in fairness:
            return None, f"'{column}' is not a sensitive column (evaluate.fairness.sensitive: {', '.join(fairness)})"
        value = fairness[column].get(name)
        return (float(value), "") if value is not None else (None, f"{name} is undefined for '{column}'")
    if gate.slice is not None:
        column, _, label = gate.slice.partition("=")
        rows = [s for s in results.get("slices", []) if s["column"] == column and s["slice"] == label]
        if not rows:
            known = sorted({f"{s['column']}={s['slice']}" for s in results.get("slices", [])})
            return None, f"no slice '{gate.slice}' (slices: {', '.join(known[:12]) or 'none computed'})"
        value = rows[0]["metrics"].get(name)
        return (float(value), "") if value is not None else (None, f"{name} is undefined on slice '{gate.slice}'")
    value = results.get("metrics", {}).get(gate.metric)
    if value is None and family == "importance" and (results.get("importance") or {}).get("columns"):
        columns = [str(c["column"]) for c in results["importance"]["columns"]]
        hint = closest(name, columns)
        return None, f"'{name}' is not an input column of this model" + (
            f": did you mean 'importance/{hint}'?" if hint else f" (columns: {', '.join(columns[:12])})")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, f"'{gate.metric}' was not computed for this model"
    return float(value), ""


def absolute_verdict(gate: Gate, results: dict[str, Any]) -> GateVerdict:
    value, why = metric_value(gate, results)

    def verdict(status: Status, detail: str) -> GateVerdict:
        return GateVerdict(metric=gate.metric, kind="absolute", slice=gate.slice, threshold=threshold_text(gate),
                           value=value, status=status, detail=detail)

    if value is None:
        return verdict("error", why)
    low_ok = gate.min is None or value >= gate.min
    high_ok = gate.max is None or value <= gate.max
    if low_ok and high_ok:
        return verdict("passed", f"{value:.6g} {threshold_text(gate)}")
    broken = f"below the minimum {gate.min:g}" if not low_ok else f"above the maximum {gate.max:g}"
    return verdict("failed", f"{value:.6g} is {broken}")


def champion_verdict(gate: Gate, challenger: dict[str, Scored], champion: dict[str, Scored] | None,
                     champion_ref: str | None, custom: dict[str, MetricFn], directions: dict[str, Direction],
                     seed: int) -> GateVerdict:
    """Score both models on the same rows of the gate's split and test the difference."""

    split, _, name = gate.metric.partition("/")

    def verdict(status: Status, detail: str, value: float | None = None,
                comparison: dict[str, Any] | None = None) -> GateVerdict:
        return GateVerdict(metric=gate.metric, kind="champion", slice=gate.slice, threshold=threshold_text(gate),
                           value=value, comparison=comparison, champion=champion_ref, status=status, detail=detail)

    if champion is None:
        return verdict("skipped", "no champion is registered yet: nothing to compare with")
    ours, theirs = challenger[split], champion[split]
    fn = metric_fns(ours.task, custom).get(name)
    if fn is None:
        return verdict("error", f"'{name}' is not a {ours.task} metric")
    if theirs.task != ours.task or theirs.labels != ours.labels:
        return verdict("error", f"the champion ({champion_ref}) predicts {theirs.task} "
                       f"{theirs.labels or ''}, this model {ours.task} {ours.labels or ''}: not comparable")
    try:
        result = compare(fn, ours, theirs, test=gate.test, higher_is_better=directions.get(name, "higher") == "higher",
                         max_drop=gate.max_drop, alpha=gate.alpha, n_resamples=gate.n_resamples, seed=seed,
                         strict=gate.strict)
    except ValueError as exc:  # e.g. the metric is undefined on these rows: undecidable is not a pass
        return verdict("error", f"cannot compare with the champion: {exc}")
    lo, hi = result["ci"]
    detail = (f"{result['challenger']:.6g} vs champion {result['champion']:.6g}: difference {result['estimate']:+.4g} "
              f"[{lo:+.4g}, {hi:+.4g}], p = {result['p_value']:.3g}")
    return verdict("passed" if result["passed"] else "failed", detail, result["challenger"], result)


def evaluate_gates(gates: list[Gate], results: dict[str, Any], challenger: dict[str, Scored],
                   champion: dict[str, Scored] | None, champion_ref: str | None,
                   custom: dict[str, MetricFn], custom_directions: dict[str, Direction],
                   seed: int) -> list[GateVerdict]:
    task = next(iter(challenger.values())).task if challenger else "auto"
    directions = task_metrics(task) | custom_directions
    verdicts: list[GateVerdict] = []
    for gate in gates:
        if gate.vs is None:
            verdicts.append(absolute_verdict(gate, results))
        else:
            verdicts.append(champion_verdict(gate, challenger, champion, champion_ref, custom, directions, seed))
    return verdicts


def outcome(verdicts: list[GateVerdict]) -> Outcome:
    return "failed" if any(v.status in FAILING for v in verdicts) else "passed"


def failure_lines(verdicts: list[GateVerdict]) -> list[str]:
    """One line per failed gate: which gate, the value and the threshold."""
    out = []
    for v in verdicts:
        if v.status in FAILING:
            where = f" [{v.slice}]" if v.slice else ""
            out.append(f"gate {v.metric}{where} {v.threshold}: {v.status.upper()}: {v.detail}")
    return out
