"""Alert rules judged per window, and the hysteresis that decides when one fires and when it resolves.

A rule breaches on a window when its value crosses its threshold. It FIRES when it has breached `consecutive`
judged windows in a row and it is not cooling down (`cooldown` after its last firing, measured in log time,
so a backtest replays exactly what live monitoring would have done). It RESOLVES on the first judged window
that does not breach. A window no rule can judge (too few rows, no labels yet) neither counts nor resets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlops.core.errors import MlopsError
from mlops.recipe.monitor import LIVE_METRICS, MonitorConfig

RULES = ("drift", "prediction_drift", "schema", "missing_values", "accuracy_drop", "latency", "error_rate")
EVENT_PREFIX = "mlops.alert."
RESOLVED_PREFIX = "mlops.resolved."  # not under mlops.alert.*: a trigger on `mlops.alert.*` must not fire on it


@dataclass
class Observation:
    rule: str
    value: float | None
    threshold: float | None
    breach: bool | None  # None: not judged on this window
    reason: str = ""  # why not judged, or what breached
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RuleState:
    consecutive: int = 0
    firing: bool = False
    last_fired: float | None = None  # log time (end of the window it fired on)


def step(state: RuleState, obs: Observation, window_end: float, consecutive: int,
         cooldown_s: float) -> tuple[RuleState, str | None]:
    """The rule's next state after one window, and 'fired', 'resolved' or None."""
    if obs.breach is None:
        return state, None
    if not obs.breach:
        resolved = state.firing
        return RuleState(0, False, state.last_fired), "resolved" if resolved else None
    run = state.consecutive + 1
    cooling = state.last_fired is not None and window_end - state.last_fired < cooldown_s
    if not state.firing and run >= consecutive and not cooling:
        return RuleState(run, True, window_end), "fired"
    return RuleState(run, state.firing, state.last_fired), None


def _skip(rule: str, reason: str, threshold: float | None = None) -> Observation:
    return Observation(rule, None, threshold, None, reason)


def observe(summary: dict[str, Any], cfg: MonitorConfig, task: str, baseline: dict[str, Any]) -> list[Observation]:
    """Every rule on one window's summary. `baseline`: the accuracy rule's metric, value and direction."""
    rows, judged = summary["rows"], summary["judged"]
    small = f"{rows} rows < min_samples {cfg.window.min_samples}"
    out: list[Observation] = []

    drift = summary.get("drift")
    d = cfg.drift
    if not d.enabled:
        out += [_skip("drift", "disabled"), _skip("prediction_drift", "disabled")]
    elif not judged or drift is None:
        out += [_skip("drift", small, d.share), _skip("prediction_drift", small, 1)]
    else:
        ds = drift["dataset"]
        keys = [c["column"] for c in drift["columns"] if c["drift"] and d.features.get(c["column"])
                and d.features[c["column"]].key]
        breach = ds["drift"] or bool(keys)
        why = (f"{ds['drifted']} of {ds['columns']} features drifted" + (f"; key features {keys}" if keys else ""))
        out.append(Observation("drift", ds["share"], d.share, breach, why,
                               {"drifted": [c for c in drift["columns"] if c["drift"]], "key_features": keys}))
        preds = drift.get("predictions") or []
        judged_preds = [p for p in preds if p["drift"] is not None]
        if not d.predictions or not judged_preds:
            out.append(_skip("prediction_drift", "disabled" if not d.predictions else "no prediction to compare"))
        else:
            n = sum(1 for p in judged_preds if p["drift"])
            out.append(Observation("prediction_drift", float(n), 1.0, n >= 1,
                                   f"{n} of {len(judged_preds)} prediction columns drifted", {"columns": preds}))

    schema = summary.get("schema")
    s = cfg.schema_checks
    if not s.enabled or schema is None:
        out += [_skip("schema", "disabled"), _skip("missing_values", "disabled")]
    elif not judged:
        out += [_skip("schema", small, s.max_violation_rate), _skip("missing_values", small, s.max_missing_increase)]
    else:
        rate = schema["violation_rate"]
        out.append(Observation("schema", rate, s.max_violation_rate, rate > s.max_violation_rate,
                               f"{schema['violating_rows']} of {rows} rows violate the schema",
                               {"problems": schema["problems"]}))
        m = schema["missing"]
        out.append(Observation("missing_values", m["max_increase"], s.max_missing_increase,
                               m["max_increase"] > s.max_missing_increase,
                               f"largest missing-rate increase over training: {m['max_increase']:+.3f} "
                               f"('{m['worst_column']}')",
                               {"columns": m["columns"]}))

    a = cfg.accuracy
    quality = summary.get("quality") or {}
    metric, base, direction = baseline.get("metric"), baseline.get("value"), baseline.get("direction", "higher")
    if not a.enabled:
        out.append(_skip("accuracy_drop", "disabled"))
    elif base is None:
        out.append(_skip("accuracy_drop", f"no baseline for {metric}: the bundle records no test/{metric} "
                                          "(set monitor.accuracy.baseline)", a.max_drop))
    elif not judged:
        out.append(_skip("accuracy_drop", small, a.max_drop))
    elif quality.get("labelled", 0) < a.min_labels or metric not in quality.get("metrics", {}):
        out.append(_skip("accuracy_drop", f"{quality.get('labelled', 0)} labelled rows < min_labels {a.min_labels}",
                         a.max_drop))
    else:
        live = quality["metrics"][metric]
        drop = base - live if direction == "higher" else live - base
        out.append(Observation("accuracy_drop", drop, a.max_drop, drop > a.max_drop,
                               f"live {metric} {live:.4f} vs baseline {base:.4f}",
                               {"metric": metric, "live": live, "baseline": base, "labelled": quality["labelled"]}))

    lat = cfg.latency
    ops = summary.get("operations") or {}
    key = f"p{lat.percentile:g}"
    if not lat.enabled:
        out.append(_skip("latency", "disabled"))
    elif not judged or "latency_ms" not in ops:
        out.append(_skip("latency", small, lat.sla_ms))
    else:
        value = ops["latency_ms"][key]
        out.append(Observation("latency", value, lat.sla_ms, value > lat.sla_ms,
                               f"{key} latency {value:.1f} ms (SLA {lat.sla_ms:g} ms)",
                               {"percentile": lat.percentile, "latency_ms": ops["latency_ms"],
                                "requests": ops.get("requests")}))

    e = cfg.error_rate
    errors = summary.get("errors")
    limit = e.baseline + e.max_increase
    if not e.enabled or not e.metrics_url:
        out.append(_skip("error_rate", "disabled" if not e.enabled else "no monitor.error_rate.metrics_url"))
    elif errors is None:
        out.append(_skip("error_rate", "judged on the latest window of a run only", limit))
    elif errors["rate"] is None or errors["requests"] < e.min_requests:
        out.append(_skip("error_rate", f"{errors['requests']:g} requests since the last run < min_requests "
                                       f"{e.min_requests}", limit))
    else:
        out.append(Observation("error_rate", errors["rate"], limit, errors["rate"] > limit,
                               f"{errors['errors']:g} of {errors['requests']:g} requests failed ({errors['counted']})",
                               errors))
    return out


def accuracy_baseline(cfg: MonitorConfig, task: str, bundle_metrics: dict[str, float]) -> dict[str, Any]:
    metric = cfg.accuracy.metric or ("rmse" if task == "regression" else "accuracy")
    direction = LIVE_METRICS[task].get(metric)
    if direction is None:

        raise MlopsError(f"monitor.accuracy.metric '{metric}' is not computed for a {task} model (use one of "
                         f"{', '.join(LIVE_METRICS[task])})")
    value = cfg.accuracy.baseline if cfg.accuracy.baseline is not None else bundle_metrics.get(f"test/{metric}")
    source = "monitor.accuracy.baseline" if cfg.accuracy.baseline is not None else f"bundle test/{metric}"
    return {"metric": metric, "value": value, "direction": direction, "source": source}
