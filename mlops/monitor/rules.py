"""Alert rules judged per window, and the hysteresis that decides when one fires and when it resolves.

A rule breaches on a window when its value crosses its threshold. It FIRES when it has breached `consecutive`
judged windows in a row and it is not cooling down (`cooldown` after its last firing, measured in log time,
so a backtest replays exactly what live monitoring would have done). It RESOLVES on the first judged window
that does not breach. A window no rule can judge (too few rows, no labels yet) neither counts nor resets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlops.core.errors import MlopsError
from mlops.monitor.drift import drifted
from mlops.monitor.logstream import EMBEDDING_COLUMN
from mlops.monitor.results import Observation, WindowSummary
from mlops.recipe.monitor import LIVE_METRICS, DriftConfig, MonitorConfig

RULES = ("drift", "prediction_drift", "schema", "missing_values", "accuracy_drop", "latency", "error_rate",
         "memory_growth")
EVENT_PREFIX = "mlops.alert."
RESOLVED_PREFIX = "mlops.resolved."  # not under mlops.alert.*: a trigger on `mlops.alert.*` must not fire on it


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


def _small(summary: WindowSummary, cfg: MonitorConfig) -> str:
    return f"{summary.rows} rows < min_samples {cfg.window.min_samples}"


def drift_rule(summary: WindowSummary, cfg: MonitorConfig, baseline: dict[str, Any]) -> Observation:
    """The share of drifted features against `drift.share`; a drifted key feature breaches on its own."""
    d, drift = cfg.drift, summary.drift
    if not d.enabled:
        return _skip("drift", "disabled")
    if not summary.judged or drift is None:
        return _skip("drift", _small(summary, cfg), d.share)
    ds = drift["dataset"]
    keys = [c["column"] for c in drift["columns"] if c["drift"] and (
        (c["column"] == EMBEDDING_COLUMN and d.embedding.key)
        or (d.features.get(c["column"]) and d.features[c["column"]].key))]
    severe = severe_columns(drift["columns"], d)
    why = (f"{ds['drifted']} of {ds['columns']} features drifted" + (f"; key features {keys}" if keys else "")
           + ("; severe: " + ", ".join(f"{c['column']} ({c['method']} {c['score']:.3g}, severe at {t:g})"
                                        for c, t in severe) if severe else ""))
    return Observation("drift", ds["share"], d.share, ds["drift"] or bool(keys) or bool(severe), why,
                       {"drifted": [c for c in drift["columns"] if c["drift"]], "key_features": keys,
                        "severe_features": [c["column"] for c, _ in severe]})


def severe_columns(columns: list[dict[str, Any]], d: DriftConfig) -> list[tuple[dict[str, Any], float]]:
    """Drifted columns whose score also passes their method's severe threshold, each with that threshold."""
    out = []
    for c in columns:
        if not c.get("drift") or c.get("score") is None:
            continue
        own = d.features.get(c["column"])
        threshold = d.severe.threshold(c["method"], own.severe if own else None)
        if threshold is not None and drifted(c["method"], c["score"], threshold):
            out.append((c, threshold))
    return out


def prediction_drift_rule(summary: WindowSummary, cfg: MonitorConfig, baseline: dict[str, Any]) -> Observation:
    """Any prediction column (label, confidence or value) drifted."""
    d, drift = cfg.drift, summary.drift
    if not d.enabled:
        return _skip("prediction_drift", "disabled")
    if not summary.judged or drift is None:
        return _skip("prediction_drift", _small(summary, cfg), 1)
    preds = drift.get("predictions") or []
    judged = [p for p in preds if p["drift"] is not None]
    if not d.predictions or not judged:
        return _skip("prediction_drift", "disabled" if not d.predictions else "no prediction to compare")
    n = sum(1 for p in judged if p["drift"])
    return Observation("prediction_drift", float(n), 1.0, n >= 1, f"{n} of {len(judged)} prediction columns drifted",
                       {"columns": preds})


def schema_rule(summary: WindowSummary, cfg: MonitorConfig, baseline: dict[str, Any]) -> Observation:
    """The share of rows that violate the bundle's data schema."""
    s, schema = cfg.schema_checks, summary.schema
    if not s.enabled or schema is None:
        return _skip("schema", "disabled")
    if not summary.judged:
        return _skip("schema", _small(summary, cfg), s.max_violation_rate)
    rate = schema["violation_rate"]
    return Observation("schema", rate, s.max_violation_rate, rate > s.max_violation_rate,
                       f"{schema['violating_rows']} of {summary.rows} rows violate the schema",
                       {"problems": schema["problems"]})


def missing_values_rule(summary: WindowSummary, cfg: MonitorConfig, baseline: dict[str, Any]) -> Observation:
    """The largest increase of a column's missing rate over training."""
    s, schema = cfg.schema_checks, summary.schema
    if not s.enabled or schema is None:
        return _skip("missing_values", "disabled")
    if not summary.judged:
        return _skip("missing_values", _small(summary, cfg), s.max_missing_increase)
    m = schema["missing"]
    return Observation("missing_values", m["max_increase"], s.max_missing_increase,
                       m["max_increase"] > s.max_missing_increase,
                       f"largest missing-rate increase over training: {m['max_increase']:+.3f} ('{m['worst_column']}')",
                       {"columns": m["columns"]})


def accuracy_rule(summary: WindowSummary, cfg: MonitorConfig, baseline: dict[str, Any]) -> Observation:
    """The live metric's drop from its baseline, on windows with enough ground truth."""
    a, quality = cfg.accuracy, summary.quality
    metric, base, direction = baseline.get("metric"), baseline.get("value"), baseline.get("direction", "higher")
    if not a.enabled:
        return _skip("accuracy_drop", "disabled")
    if base is None:
        return _skip("accuracy_drop", f"no baseline for {metric}: the bundle records no test/{metric} "
                                      "(set monitor.accuracy.baseline)", a.max_drop)
    if not summary.judged:
        return _skip("accuracy_drop", _small(summary, cfg), a.max_drop)
    if quality.get("labelled", 0) < a.min_labels or metric not in quality.get("metrics", {}):
        return _skip("accuracy_drop", f"{quality.get('labelled', 0)} labelled rows < min_labels {a.min_labels}",
                     a.max_drop)
    live = quality["metrics"][metric]
    drop = base - live if direction == "higher" else live - base
    return Observation("accuracy_drop", drop, a.max_drop, drop > a.max_drop,
                       f"live {metric} {live:.4f} vs baseline {base:.4f}",
                       {"metric": metric, "live": live, "baseline": base, "labelled": quality["labelled"]})


def latency_rule(summary: WindowSummary, cfg: MonitorConfig, baseline: dict[str, Any]) -> Observation:
    """The recipe's latency percentile against the SLA."""
    lat, ops = cfg.latency, summary.operations
    if not lat.enabled:
        return _skip("latency", "disabled")
    if not summary.judged or "latency_ms" not in ops:
        return _skip("latency", _small(summary, cfg), lat.sla_ms)
    key = f"p{lat.percentile:g}"
    value = ops["latency_ms"][key]
    return Observation("latency", value, lat.sla_ms, value > lat.sla_ms,
                       f"{key} latency {value:.1f} ms (SLA {lat.sla_ms:g} ms)",
                       {"percentile": lat.percentile, "latency_ms": ops["latency_ms"], "requests": ops.get("requests")})


def error_rate_rule(summary: WindowSummary, cfg: MonitorConfig, baseline: dict[str, Any]) -> Observation:
    """The server's failed requests since the last run, against baseline + max_increase."""
    e, errors = cfg.error_rate, summary.errors
    limit = e.baseline + e.max_increase
    if not e.enabled or not e.metrics_url:
        return _skip("error_rate", "disabled" if not e.enabled else "no monitor.error_rate.metrics_url")
    if errors is None:
        return _skip("error_rate", "judged on the latest window of a run only", limit)
    if errors["rate"] is None or errors["requests"] < e.min_requests:
        return _skip("error_rate", f"{errors['requests']:g} requests since the last run < min_requests "
                                   f"{e.min_requests}", limit)
    return Observation("error_rate", errors["rate"], limit, errors["rate"] > limit,
                       f"{errors['errors']:g} of {errors['requests']:g} requests failed ({errors['counted']})", errors)


def memory_growth_rule(summary: WindowSummary, cfg: MonitorConfig, baseline: dict[str, Any]) -> Observation:
    """The server's resident memory growth over `resources.window` (its /metrics, scraped on each run; the
    latest window of a run carries the sample in `operations.memory`), against `max_memory_growth_mb`."""
    r = cfg.resources
    memory = summary.operations.get("memory")
    if not r.enabled or not (r.metrics_url or cfg.error_rate.metrics_url):
        return _skip("memory_growth", "disabled" if not r.enabled else "no monitor.resources.metrics_url")
    if memory is None:
        return _skip("memory_growth", "judged on the latest window of a run only", r.max_memory_growth_mb)
    if memory.get("growth_mb") is None:
        return _skip("memory_growth", memory.get("skipped", "the first scrape of this server process: growth is "
                                                 "measured from the next run"), r.max_memory_growth_mb)
    growth = memory["growth_mb"]
    return Observation("memory_growth", growth, r.max_memory_growth_mb, growth > r.max_memory_growth_mb,
                       f"resident memory {memory['since_rss_mb']:.0f} -> {memory['rss_mb']:.0f} MB over "
                       f"{memory['span_s']:.0f} s: {growth:+.1f} MB within {r.window} (bound "
                       f"{r.max_memory_growth_mb:g} MB)",
                       memory)


Rule = Callable[[WindowSummary, MonitorConfig, dict[str, Any]], Observation]
# in the order of RULES: the order the dashboard's rule table and the alerts of one window follow
JUDGED: dict[str, Rule] = {"drift": drift_rule, "prediction_drift": prediction_drift_rule, "schema": schema_rule,
                           "missing_values": missing_values_rule, "accuracy_drop": accuracy_rule,
                           "latency": latency_rule, "error_rate": error_rate_rule,
                           "memory_growth": memory_growth_rule}


def observe(summary: WindowSummary, cfg: MonitorConfig, task: str, baseline: dict[str, Any]) -> list[Observation]:
    """Every rule on one window's summary. `baseline`: the accuracy rule's metric, value and direction."""
    return [JUDGED[rule](summary, cfg, baseline) for rule in RULES]


def accuracy_baseline(cfg: MonitorConfig, task: str, bundle_metrics: dict[str, float]) -> dict[str, Any]:
    metric = cfg.accuracy.metric or ("rmse" if task == "regression" else "accuracy")
    direction = LIVE_METRICS[task].get(metric)
    if direction is None:
        raise MlopsError(f"monitor.accuracy.metric '{metric}' is not computed for a {task} model (use one of "
                         f"{', '.join(LIVE_METRICS[task])})")
    value = cfg.accuracy.baseline if cfg.accuracy.baseline is not None else bundle_metrics.get(f"test/{metric}")
    source = "monitor.accuracy.baseline" if cfg.accuracy.baseline is not None else f"bundle test/{metric}"
    return {"metric": metric, "value": value, "direction": direction, "source": source}
