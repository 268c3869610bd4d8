"""The evaluation of one exported model, end to end: what `mlops run` does after export, and what
`mlops evaluate --model` does for any registered model.

`assess_bundle` computes what does not depend on other models (slices, fairness, robustness, inference
speed); `decide` adds the champion comparison, applies the gates and writes the report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.refs import CHAMPION, fetch_if_registered
from mlops.data.media import ModelInputs
from mlops.evaluate.adversarial import adversarial_checks
from mlops.evaluate.fairness import fairness_report
from mlops.evaluate.gates import GateDecision, GateVerdict, Outcome, evaluate_gates, failure_lines, outcome
from mlops.evaluate.importance import feature_importance
from mlops.evaluate.loadtest import Settings, run_load_test
from mlops.evaluate.metrics import custom_metric_fns
from mlops.evaluate.performance import benchmark_onnx, benchmark_torch, perf_metrics
from mlops.evaluate.report import write_report
from mlops.evaluate.robustness import robustness_checks, robustness_summary
from mlops.evaluate.scored import media_slices, score_bundle, with_descriptors
from mlops.evaluate.slices import slice_metrics
from mlops.package.bundle import read_bundle
from mlops.recipe.schema import Recipe, SliceConfig


def assess_bundle(recipe: Recipe, bundle_dir: Path, test: Any, train: Any, module: Any = None,
                  features: Any = None, network: ModelInputs | None = None, out: Path | None = None) -> dict[str, Any]:
    """`module` (the trained torch module, optional) is benchmarked and attacked; `features` are the test rows
    as it takes them (for the benchmark); `network` what it takes when its forward takes a dict, None when
    it takes the preprocessed feature matrix. With `out`, the feature importance's files are written there."""
    ev = recipe.evaluate
    scored = score_bundle(bundle_dir, test, recipe.data.target)
    custom = custom_metric_fns(ev.custom_metrics)
    meta = read_bundle(bundle_dir)
    # an image's or text's descriptors are columns to slice by; a tabular model's rows are sliced as they are
    sliced = test if all(i.scalar for i in meta.inputs) else with_descriptors(bundle_dir, test)
    declared = ev.slices or [SliceConfig.model_validate(s) for s in media_slices(meta)]
    slices = slice_metrics(sliced, scored, declared, custom) if declared else []
    fairness = fairness_report(test, scored, ev.fairness) if ev.fairness else {}
    robustness = robustness_checks(bundle_dir, test, train, ev.robustness, recipe.eval_seed) if ev.robustness.enabled else []
    if ev.robustness.enabled and ev.robustness.adversarial.enabled and module is not None:
        say("attacking the trained module (FGSM/PGD), scoring the attacks with the bundle")
        robustness += adversarial_checks(bundle_dir, test, train, module, network, ev.robustness.adversarial,
                                         recipe.eval_seed)
    metrics: dict[str, float] = {}
    performance: dict[str, Any] = {}
    if ev.performance.enabled:
        say("benchmarking inference of the exported model")
        performance["onnx"] = benchmark_onnx(bundle_dir, test, ev.performance)
        use_torch = module is not None and features is not None and ev.performance.torch
        performance["torch"] = benchmark_torch(module, features, ev.performance) if use_torch else None
        metrics |= perf_metrics(performance["onnx"], performance["torch"])
    if robustness:
        metrics |= robustness_summary(robustness)
    load_test = None
    if ev.load_test.enabled:  # the served model under concurrent requests: mlops serve on loopback, Locust
        load = run_load_test(bundle_dir, test, Settings.of(ev.load_test))
        say(f"load test: {load.line()}")
        metrics |= load.metrics()
        load_test = load.model_dump()
    for column, report in fairness.items():
        for name in ("demographic_parity_diff", "demographic_parity_ratio", "equal_opportunity_diff",
                     "equalized_odds_diff"):
            if report.get(name) is not None:
                metrics[f"fairness/{metric_key(column)}/{name}"] = float(report[name])
    importance: dict[str, Any] = {}
    if ev.importance.enabled:
        importance = feature_importance(bundle_dir, test, train, recipe.data.target, ev.importance,
                                        recipe.eval_seed, module, network, out)
        metrics |= {f"importance/{metric_key(c['column'])}": c["mean"] for c in importance["columns"]
                    if c["mean"] == c["mean"]}  # NaN (a score undefined on these rows) is no metric
    return {"metrics": metrics, "slices": slices, "fairness": fairness, "robustness": robustness,
            "performance": performance, "importance": importance, "load_test": load_test}


def metric_key(text: str) -> str:
    """A column name as an MLflow metric name allows it."""
    return re.sub(r"[^\w\-. ]", "_", text)


def champion_bundle(uri: str, model_name: str, pinned: str | None = None) -> tuple[str, Path] | None:
    """The registered champion's bundle (the version `pinned` names, when the caller looked the champion up
    already), downloaded once; None when the model has no champion yet."""
    found = fetch_if_registered(pinned or f"{model_name}@{CHAMPION}", uri)
    return (found.label, found.path) if found else None


def decide(recipe: Recipe, bundle_dir: Path, frames: dict[str, Any], results: dict[str, Any],
           plots: dict[str, str], tracking_uri: str, out: Path, model: dict[str, Any],
           allow_failed: bool = False, champion: str | bool | None = True,
           report_at: Path | None = None) -> GateDecision:
    """Apply the recipe's gates and write the report into `out`. `champion=True` looks it up in the registry;
    a `NAME/VERSION` is the champion the caller found there; None: there is none. `report_at`: the folder the
    caller copies the report into, named instead of `out` (a run's step writes into a cache entry's staging
    folder, gone once the entry is stored)."""

    ev = recipe.evaluate
    target = recipe.data.target
    custom = custom_metric_fns(ev.custom_metrics)
    directions = {n: c.direction for n, c in ev.custom_metrics.items()}
    challenger: dict[str, Any] = {}
    theirs: dict[str, Any] | None = None
    ref = None
    champion_error = None
    if any(g.vs is not None for g in ev.gates):
        challenger = {split: score_bundle(bundle_dir, frame, target) for split, frame in frames.items()}
        pinned = champion if isinstance(champion, str) else None
        found = champion_bundle(tracking_uri, recipe.model_name, pinned) if champion else None
        if found:
            ref, champ_dir = found
            say(f"scoring the champion {ref} on the same {len(frames['test'])} test rows")
            try:
                theirs = {split: score_bundle(champ_dir, frame, target) for split, frame in frames.items()}
            except MlopsError as exc:
                champion_error = f"the champion {ref} cannot score this data: {exc}"
    verdicts = evaluate_gates(ev.gates, results, challenger, theirs, ref, custom, directions, recipe.eval_seed)
    if champion_error:  # a champion that cannot score this data decides nothing: its gates are errors
        verdicts = [v.model_copy(update={"status": "error", "detail": champion_error}) if v.kind == "champion" else v
                    for v in verdicts]
    result: Outcome = outcome(verdicts)
    if result == "failed" and allow_failed:
        result = "allowed"
    meta = read_bundle(bundle_dir)
    report = {"model": {"name": meta.name, "task": meta.task, "labels": meta.labels,
                        "onnx_sha256": meta.onnx_sha256} | model,
              "recipe": recipe.name, "outcome": result, "champion": ref,
              "gates": [v.model_dump() for v in verdicts]} | results | {"plots": plots}
    paths = write_report(report, out)
    _print_verdicts(verdicts, result, str(report_at / Path(paths["html"]).name) if report_at else paths["html"])
    return GateDecision(outcome=result, gates=verdicts, failures=failure_lines(verdicts), champion=ref,
                        report={k: Path(v).name for k, v in paths.items()})


def _print_verdicts(verdicts: list[GateVerdict], result: Outcome, html: str) -> None:
    for v in verdicts:
        where = f" [{v.slice}]" if v.slice else ""
        say(f"gate {v.metric}{where} {v.threshold}: {v.status.upper()} ({v.detail})")
    if result == "allowed":
        say("WARNING: gates FAILED and --allow-failed-gates was given: the model is registered WITH "
            "aliases anyway (tag gates=allowed)")
    say(f"evaluation report {html}")
