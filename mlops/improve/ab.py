"""`mlops ab report NAME`: the A/B test read from the prediction log (arms `champion` and `challenger`, as
`mlops serve --ab` logs them) joined with feedback by prediction id.

For the chosen metric it reports each arm's value, the difference challenger - champion with its interval
and p-value (two independent groups: `mlops.improve.intervals`), whether the sample is large enough to detect
`min_effect` with the asked power, the smallest effect the current sample can detect, and, when a business
metric is declared (a feedback field such as `converted` or `revenue`), the same for it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.predlog_store import log_name
from mlops.improve.feedback import business_value, read_joined
from mlops.improve.intervals import (
    detectable_effect,
    mean_difference,
    proportion_difference,
    required_per_arm,
)
from mlops.recipe.improve import AbConfig, FeedbackConfig

ARMS = ("champion", "challenger")
LOWER_IS_BETTER = {"error_rate", "mae", "mse"}


def ab_report(log: Path, model: str, cfg: AbConfig | None = None, feedback: FeedbackConfig | None = None,
              since: float | None = None) -> dict[str, Any]:
    cfg = cfg or AbConfig()
    rows = read_joined(log, model, since=since, feedback=feedback)
    if not rows:
        raise MlopsError(f"no predictions of model '{model}' in {log_name(log)}" + (" in the window asked" if since else ""))
    arms = {arm: [j for j in rows if j.variant == arm] for arm in ARMS}
    if not arms["challenger"]:
        raise MlopsError(f"no challenger arm in {log_name(log)}: serve an A/B test with `mlops serve {model}@champion --ab "
                         f"{model}@challenger:PERCENT`")
    report: dict[str, Any] = {"model": model, "log": log_name(log), "since": since, "alpha": cfg.alpha, "power": cfg.power,
                              "min_effect": cfg.min_effect,
                              "arms": {arm: {"requests": len(js), "versions": sorted({str(j.version) for j in js}),
                                             "labelled": sum(j.truth is not None or j.correct is not None for j in js)}
                                       for arm, js in arms.items()}}
    report["metric"] = compare_arms(cfg.metric, [_metric_value(cfg.metric, j) for j in arms["champion"]],
                                    [_metric_value(cfg.metric, j) for j in arms["challenger"]], cfg)
    if cfg.business_metric:
        values = {arm: [business_value(j.payload, cfg.business_metric) if j.payload else None for j in js]
                  for arm, js in arms.items()}
        report["business"] = compare_arms(cfg.business_metric, values["champion"], values["challenger"], cfg,
                                          higher_is_better=True)
    return report


def _metric_value(metric: str, j: Any) -> float | None:
    if metric in ("accuracy", "error_rate"):
        if j.correct is None:
            return None
        return float(j.correct) if metric == "accuracy" else float(not j.correct)
    err = j.error  # None for a truth that is no number (a class name a feedback file gave) or such a prediction
    if err is None:
        return None
    return abs(err) if metric == "mae" else err * err


def compare_arms(name: str, champion: list[float | None], challenger: list[float | None], cfg: AbConfig,
                 higher_is_better: bool | None = None) -> dict[str, Any]:
    """One metric, per row, in two arms (None: not measured on that row) -> the difference and its evidence."""

    a = [v for v in champion if v is not None]
    b = [v for v in challenger if v is not None]
    higher = (name not in LOWER_IS_BETTER) if higher_is_better is None else higher_is_better
    out: dict[str, Any] = {"name": name, "higher_is_better": higher, "n": {"champion": len(a), "challenger": len(b)}}
    if len(a) < 2 or len(b) < 2:
        return out | {"enough": False, "verdict": f"not enough measured rows yet ({len(a)} champion, {len(b)} "
                      "challenger): record feedback for served predictions"}
    binary = all(v in (0.0, 1.0) for v in a + b)
    if binary:
        diff = proportion_difference(int(sum(b)), len(b), int(sum(a)), len(a), cfg.alpha)
        pooled = (sum(a) + sum(b)) / (len(a) + len(b))
        var_a = var_b = max(pooled * (1 - pooled), 1e-12)
    else:
        diff = mean_difference(b, a, cfg.alpha)
        var_a, var_b = _var(a), _var(b)
    need = required_per_arm(var_a, var_b, cfg.min_effect, cfg.alpha, cfg.power)
    mde = detectable_effect(var_a, var_b, len(a), len(b), cfg.alpha, cfg.power)
    lo, hi = diff["ci"]
    good_lo, good_hi = (lo, hi) if higher else (-hi, -lo)
    enough = min(len(a), len(b)) >= need
    if good_lo > 0:
        verdict = "challenger better"
    elif good_hi < 0:
        verdict = "challenger worse"
    elif enough:
        verdict = f"no difference as large as {cfg.min_effect:g} (the sample is large enough to have seen one)"
    else:
        verdict = f"undecided: keep the test running (about {need} rows per arm needed, have {min(len(a), len(b))})"
    return out | {"champion": diff["a"], "challenger": diff["b"], "difference": diff["difference"], "ci": diff["ci"],
                  "p_value": diff["p_value"], "method": diff["method"], "required_per_arm": need,
                  "detectable_effect": mde, "enough": enough, "verdict": verdict}


def _var(values: list[float]) -> float:
    m = sum(values) / len(values)
    return max(sum((v - m) ** 2 for v in values) / (len(values) - 1), 1e-12)


def render(report: dict[str, Any]) -> str:
    arms = report["arms"]
    lines = [f"A/B test of {report['model']} ({report['log']})",
             "  arm         requests  labelled  versions"]
    for arm in ARMS:
        a = arms[arm]
        lines.append(f"  {arm:<11} {a['requests']:>8}  {a['labelled']:>8}  {', '.join(a['versions'])}")
    for key in ("metric", "business"):
        m = report.get(key)
        if not m:
            continue
        lines.append(f"{'metric' if key == 'metric' else 'business metric'} {m['name']} "
                     f"({'higher' if m['higher_is_better'] else 'lower'} is better):")
        if "difference" in m:
            lo, hi = m["ci"]
            conf = round(100 * (1 - report["alpha"]))
            lines.append(f"  champion {m['champion']:.4g} (n={m['n']['champion']})   challenger {m['challenger']:.4g} "
                         f"(n={m['n']['challenger']})")
            lines.append(f"  difference {m['difference']:+.4g}  {conf}% CI [{lo:+.4g}, {hi:+.4g}]  p = {m['p_value']:.3g}")
            mde = "inf" if math.isinf(m["detectable_effect"]) else f"{m['detectable_effect']:.3g}"
            lines.append(f"  sample: {'large enough' if m['enough'] else 'NOT yet large enough'} to detect "
                         f"{report['min_effect']:g} with power {report['power']:g} (needs {m['required_per_arm']} per "
                         f"arm; detects {mde} now)")
        lines.append(f"  verdict: {m['verdict']}")
    return "\n".join(lines) + "\n"
