"""`mlops monitor`: read the prediction log window by window, judge every rule, fire alerts, record it all,
and regenerate the dashboard and the Evidently report. A plain function: the scheduled Prefect flow calls it.

Live runs resume where the previous one stopped (the cursor in the monitor store) and keep the rules'
hysteresis there. `backtest=True` replays the log (or `since`..`until`) from scratch with a fresh hysteresis,
writes nothing to the store, sends nothing, and reports when each rule would have fired.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.core.atomic import write_text
from mlops.core.errors import MlopsError
from mlops.core.pages import write_page
from mlops.core.predlog import LogFilter, LogReader
from mlops.core.refs import fetch
from mlops.core.registry import tracking_uri
from mlops.core.timespec import iso, parse_duration, parse_time
from mlops.core.workspace import workspace
from mlops.engine.validate import load_validated
from mlops.monitor import evidently_report as ev
from mlops.monitor.alerts import deliver, event_name, flush_prefect_events, write_drift_textfile
from mlops.monitor.dashboard import dashboard_context, page_context, write_dashboard
from mlops.monitor.judge import WindowJudge
from mlops.monitor.logstream import Rows, Window, count_windows, other_traffic, read_chunks, time_windows
from mlops.monitor.operations import error_rate, scrape_requests
from mlops.monitor.reference import (
    CONFIDENCE,
    LABEL,
    VALUE,
    outputs_of,
    production_reference,
    training_reference,
)
from mlops.monitor.rules import RuleState, accuracy_baseline, observe, step
from mlops.monitor.store import MonitorStore
from mlops.package.bundle import read_bundle

if TYPE_CHECKING:
    from mlops.monitor.judge import WindowJudge
    from mlops.monitor.reference import Reference
    from mlops.package.bundle import BundleMeta
    from mlops.recipe import LoadedRecipe
    from mlops.recipe.monitor import MonitorConfig


def monitor_recipe(recipe: str, overrides: list[str], model: str | None, *, log: str | None = None,
                   since: str | None = None, backtest: bool = False, until: str | None = None) -> dict[str, Any]:
    """Monitor `model` (NAME@ALIAS, NAME/VERSION or a bundle directory; default `<model_name>@champion`)
    with the recipe's `monitor:` section. Returns what it judged, fired and wrote."""

    return monitor(load_validated(recipe, overrides), model, log=log, since=since, until=until, backtest=backtest)


def _time(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise MlopsError(f"{flag}: {exc}") from None


class _Counted:
    """Counts the rows that pass through, so a run can say how many wait for the next window."""

    def __init__(self, chunks: Iterator[Rows]) -> None:
        self.chunks = chunks
        self.rows = 0

    def __iter__(self) -> Iterator[Rows]:
        for chunk in self.chunks:
            self.rows += len(chunk)
            yield chunk


def monitor(loaded: LoadedRecipe, model: str | None, *, log: str | None = None, since: str | None = None,
            until: str | None = None, backtest: bool = False) -> dict[str, Any]:

    r = loaded.recipe
    cfg = r.monitor
    since_ts, until_ts = _time("--since", since), _time("--until", until)
    if since_ts is not None and until_ts is not None and since_ts >= until_ts:
        raise MlopsError(f"--since {since} is not before --until {until}")
    ref = model or f"{r.model_name}@champion"
    resolved = fetch(ref, tracking_uri(r.tracking.uri))
    bundle_dir, version = resolved.path, resolved.version
    meta = read_bundle(bundle_dir)
    ws = workspace()
    log_path = Path(log or cfg.log or ws.prediction_log(meta.name)).resolve()
    LogReader(log_path).close()  # a missing or foreign log fails before the reference is built
    judge = WindowJudge(meta, cfg)  # refuses bad per-feature settings before any heavy work
    baseline = accuracy_baseline(cfg, meta.task, meta.metrics)
    flt = LogFilter(meta.name, version, tuple(cfg.variants), since_ts, until_ts)
    reference = build_reference(loaded, meta, bundle_dir, log_path, flt, cfg)
    judge.reference = reference

    store = MonitorStore(ws.monitor_store(meta.name))
    out_dir = ws.monitor_dir(meta.name)
    log_key = str(log_path)
    if backtest:
        after, last_key, states = 0, None, {}
    else:
        after, last_key = store.cursor(meta.name, version, log_key, cfg.window.by)
        states = store.rule_states(meta.name, version)

    chunks = _Counted(read_chunks(log_path, flt, judge.columns, meta.task, after))
    windows: Iterator[Window] = (count_windows(iter(chunks), cfg.window.size) if cfg.window.by == "count" else
                                 time_windows(iter(chunks), parse_duration(cfg.window.duration), last_key))
    summaries: list[dict[str, Any]] = []
    latest: tuple[Window, dict[str, Any]] | None = None  # the last judged window, for the Evidently report
    new_cursor: tuple[int, int | None] | None = None
    for window in windows:
        summary = judge.judge(window)
        summaries.append(summary)
        new_cursor = (window.end_rowid, window.key)
        if summary["judged"]:
            latest = (window, summary)
    windowed_rows = sum(s["rows"] for s in summaries)
    notes = list(reference.notes)
    if chunks.rows == 0:

        others = other_traffic(log_path, flt, after)
        if others:
            notes.append(f"no new rows of model '{meta.name}'" + (f" version {version}" if version else "") +
                         f" ({', '.join(flt.variants)}) in {log_path}; it has " +
                         "; ".join(f"{n} rows of {k}" for k, n in others.items()))

    scrape = None
    e = cfg.error_rate
    if not backtest and e.enabled and e.metrics_url and summaries:
        # judged with the latest window; with no new window the counters wait, so no error goes uncounted

        current = scrape_requests(e.metrics_url, meta.name)
        summaries[-1]["errors"] = error_rate(store.last_scrape(e.metrics_url, meta.name), current, e.count_4xx)
        scrape = (e.metrics_url, current)

    dashboard_path = out_dir / ("backtest.html" if backtest else "dashboard.html")
    alerts = _judge_rules(summaries, states, cfg, meta, version, baseline, log_path, dashboard_path)

    result: dict[str, Any] = {
        "model": meta.name, "version": version, "bundle": str(bundle_dir), "log": str(log_path),
        "backtest": backtest, "reference": reference.describe(), "baseline": baseline, "notes": notes,
        "windows": [_brief(s) for s in summaries], "pending_rows": chunks.rows - windowed_rows,
        "alerts": alerts, "fired": sorted({a["rule"] for a in alerts if a["state"] == "fired"}),
        "store": str(store.path), "dashboard": str(dashboard_path),
    }
    context = _dashboard_context(meta, version, bundle_dir, log_path, reference, cfg, baseline)
    if backtest:
        result["first_fired"] = _first_fired(alerts)
        result["report"], result["report_html"] = _write_backtest(out_dir, result, summaries,
                                                                  context | {"alerts": alerts})

        write_dashboard(dashboard_path, context | {"alerts": alerts}, summaries, alerts)
        return result

    store.commit_run(meta.name, version, log_key, cfg.window.by, after, summaries, alerts, states, new_cursor, scrape)
    for alert in alerts:

        alert["delivery"] = deliver(alert, cfg.alerts)
        store.record_delivery(alert["id"], alert["delivery"])
    if alerts:

        flush_prefect_events()
    if latest is not None:
        if cfg.report.evidently:
            result["evidently"] = evidently_report(latest[0].rows, latest[1], reference, judge, cfg, meta, out_dir)
            context["evidently"] = result["evidently"]["html"]
        if cfg.alerts.prometheus_textfile:

            drift = latest[1].get("drift") or {}
            write_drift_textfile(Path(cfg.alerts.prometheus_textfile), meta.name,
                                 drift.get("columns", []) + drift.get("predictions", []))
    elif (out_dir / "evidently.html").is_file():
        context["evidently"] = str(out_dir / "evidently.html")

    history = store.windows(meta.name, cfg.report.dashboard_windows)
    recorded = store.alerts(meta.name)
    write_dashboard(dashboard_path, context | {"alerts": recorded}, [h["summary"] for h in history], recorded)
    return result


def build_reference(loaded: LoadedRecipe, meta: BundleMeta, bundle_dir: Path, log_path: Path, flt: LogFilter,
                    cfg: MonitorConfig) -> Reference:

    ref = cfg.reference
    seed = loaded.recipe.seed
    if ref.source == "training":
        return training_reference(loaded, meta, bundle_dir, ref.max_rows, seed)
    start, end = parse_time(str(ref.start)), parse_time(str(ref.end))
    columns = {i.name: ("numeric" if i.kind == "numeric" else "categorical") for i in meta.inputs}
    return production_reference(log_path, flt, columns, meta.task, start, end, ref.max_rows, seed,
                                f"{iso(start)} .. {iso(end)}")


def _judge_rules(summaries: list[dict[str, Any]], states: dict[str, RuleState], cfg: MonitorConfig,
                 meta: BundleMeta, version: str | None, baseline: dict[str, Any], log_path: Path,
                 dashboard: Path) -> list[dict[str, Any]]:
    """Every rule on every window in order, through the hysteresis; `states` is updated in place."""

    cooldown = parse_duration(cfg.alerts.cooldown)
    alerts = []
    for s in summaries:
        observations = observe(s, cfg, meta.task, baseline)
        s["rules"] = [o.as_dict() for o in observations]
        for o in observations:
            states[o.rule], transition = step(states.get(o.rule, RuleState()), o, s["end_ts"],
                                              cfg.alerts.consecutive, cooldown)
            if transition is None:
                continue
            alerts.append({
                "rule": o.rule, "state": transition, "event": event_name(o.rule, transition), "model": meta.name,
                "version": version, "value": o.value, "threshold": o.threshold,
                "reason": o.reason if transition == "fired" else f"back within threshold: {o.reason}",
                "window": {"index": s["index"], "start": s["start_ts"], "end": s["end_ts"],
                           "start_iso": s["start_iso"], "end_iso": s["end_iso"], "rows": s["rows"],
                           "first_rowid": s["start_rowid"], "last_rowid": s["end_rowid"]},
                "consecutive": cfg.alerts.consecutive, "detail": o.detail, "dashboard": str(dashboard),
                "log": str(log_path)})
    return alerts


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    """A window in a line: what the CLI prints and the result lists."""
    ds = (s.get("drift") or {}).get("dataset") or {}
    q = s.get("quality") or {}
    return {"index": s["index"], "start": s["start_iso"], "end": s["end_iso"], "rows": s["rows"],
            "judged": s["judged"], "drifted_features": ds.get("drifted_columns", []), "drift_share": ds.get("share"),
            "labelled": q.get("labelled", 0), "metrics": q.get("metrics", {}),
            "latency_ms": (s.get("operations") or {}).get("latency_ms"),
            "schema_violation_rate": (s.get("schema") or {}).get("violation_rate"),
            "breaches": [r["rule"] for r in s.get("rules", []) if r["breach"]]}


def _first_fired(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for a in alerts:
        if a["state"] == "fired" and a["rule"] not in out:
            out[a["rule"]] = {"window": a["window"]["index"], "start": a["window"]["start_iso"],
                              "end": a["window"]["end_iso"], "value": a["value"], "threshold": a["threshold"]}
    return out


def _write_backtest(out_dir: Path, result: dict[str, Any], summaries: list[dict[str, Any]],
                    context: dict[str, Any]) -> tuple[str, str]:
    """`backtest-<time>.json` (every window and alert) and, beside it, `backtest-<time>.html`: the dashboard
    over the replayed windows, headed by when each rule would first have fired. Returns both paths."""

    stem = f"backtest-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path, html_path = out_dir / f"{stem}.json", out_dir / f"{stem}.html"
    _atomic_json(json_path, result | {"report": str(json_path), "report_html": str(html_path),
                                      "summaries": summaries})
    first = [[rule, f["window"], f["start"], f["end"], f["value"], f["threshold"]]
             for rule, f in result["first_fired"].items()]
    backtest = {"json": str(json_path), "notes": result["notes"],
                "first_fired": {"id": "first-fired", "rows": first, "classes": ["fired"] * len(first),
                                "headers": ["rule", "window", "window start", "window end", "value", "threshold"]}}
    page = page_context(context, summaries, result["alerts"])
    write_page(html_path, "backtest.html.j2", **page | {"title": f"mlops backtest: {result['model']}",
                                                         "backtest": backtest})
    return str(json_path), str(html_path)


def _atomic_json(path: Path, data: Any) -> None:
    # numpy values left in window summaries are written as JSON numbers and lists, not as their text
    write_text(path, json.dumps(data, indent=1, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _dashboard_context(meta: BundleMeta, version: str | None, bundle_dir: Path, log_path: Path,
                       reference: Reference, cfg: MonitorConfig, baseline: dict[str, Any]) -> dict[str, Any]:

    w = cfg.window
    window = f"every {w.size} rows" if w.by == "count" else f"every {w.duration} (UTC-aligned)"
    return dashboard_context(model=meta.name, version=version, bundle=str(bundle_dir), log=str(log_path),
                             reference=reference.description, window=f"{window}, judged from {w.min_samples} rows",
                             baseline=baseline, max_drop=cfg.accuracy.max_drop, sla_ms=cfg.latency.sla_ms)


# --- Evidently, for people ---------------------------------------------------------------------------------------


def evidently_report(rows: Rows, summary: dict[str, Any], reference: Reference, judge: WindowJudge,
                     cfg: MonitorConfig, meta: BundleMeta, out_dir: Path) -> dict[str, Any]:
    """Evidently's drift report of the latest judged window (and its quality report where ground truth is
    joined). When neither side had to be sampled its verdicts are checked against the fast path's."""

    limit = cfg.report.max_rows
    rng = np.random.default_rng(0)
    cur_idx = np.sort(rng.choice(len(rows), limit, replace=False)) if len(rows) > limit else np.arange(len(rows))
    ref_idx = (np.sort(rng.choice(reference.n, limit, replace=False)) if reference.n > limit
               else np.arange(reference.n))
    sampled = len(cur_idx) < len(rows) or len(ref_idx) < reference.n
    numeric = [c for c, k in judge.columns.items() if k == "numeric"]
    current_cols = {**rows.numeric, **rows.categorical, **outputs_of(rows, meta.task)}
    reference_cols = {**reference.numeric, **reference.categorical, **reference.outputs}
    fast = {c["column"]: c for c in (summary.get("drift") or {}).get("columns", []) +
            (summary.get("drift") or {}).get("predictions", [])}
    methods = {c: m for c, m in (judge.methods | judge.prediction_methods).items()
               if c in fast and fast[c]["drift"] is not None and c in current_cols and c in reference_cols}
    num = [c for c in methods if c in numeric or c in (CONFIDENCE, VALUE)]
    cat = [c for c in methods if c not in num]
    current = _frame({c: current_cols[c][cur_idx] for c in methods}, num)
    ref_frame = _frame({c: reference_cols[c][ref_idx] for c in methods}, num)
    snapshot = ev.run_drift(ref_frame, current, num, cat, methods, cfg.drift.share)
    paths = ev.save(snapshot, out_dir)
    verdicts = ev.verdicts(snapshot)
    out: dict[str, Any] = paths | {"window": summary["index"], "rows": int(len(cur_idx)),
                                   "reference_rows": int(len(ref_idx)), "sampled": sampled}
    if not sampled:
        disagree = [c for c, v in verdicts.items() if c in fast and v["drift"] != fast[c]["drift"]]
        out["agrees_with_fast_path"] = not disagree
        out["disagreements"] = disagree
        if disagree:
            print(f"mlops monitor: WARNING Evidently and the fast path disagree on {disagree}", flush=True)
    quality = _quality_report(rows, cur_idx, reference, ref_idx, meta, cfg, out_dir)
    if quality:
        out["quality"] = quality
    return out


def _frame(columns: dict[str, np.ndarray], numeric: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame({c: (v.astype(np.float64) if c in numeric else v.astype(object)) for c, v in columns.items()})


def _quality_report(rows: Rows, cur_idx: np.ndarray, reference: Reference, ref_idx: np.ndarray, meta: BundleMeta,
                    cfg: MonitorConfig, out_dir: Path) -> dict[str, str] | None:
    """Evidently's classification or regression preset over the labelled rows, when there are enough."""
    import pandas as pd


    regression = meta.task == "regression"
    truth = rows.truth_value if regression else rows.truth_label
    pred = rows.prediction if regression else rows.label
    if truth is None or pred is None or reference.target is None:
        return None
    labelled = (np.isfinite(truth[cur_idx].astype(np.float64)) if regression
                else np.fromiter((t is not None for t in truth[cur_idx]), bool, len(cur_idx)))
    if labelled.sum() < cfg.accuracy.min_labels:
        return None
    idx = cur_idx[labelled]
    ref_pred = reference.outputs[VALUE if regression else LABEL][ref_idx]
    current = pd.DataFrame({ev.TARGET: truth[idx], ev.PREDICTION: pred[idx]})
    ref_frame = pd.DataFrame({ev.TARGET: reference.target[ref_idx], ev.PREDICTION: ref_pred})
    from evidently import DataDefinition, Dataset, Report

    if regression:
        from evidently import Regression
        from evidently.presets import RegressionPreset

        dd = DataDefinition(numerical_columns=[ev.TARGET, ev.PREDICTION],
                            regression=[Regression(target=ev.TARGET, prediction=ev.PREDICTION)])
        preset: Any = RegressionPreset()
    else:
        from evidently import BinaryClassification, MulticlassClassification
        from evidently.presets import ClassificationPreset

        current = current.astype(str)
        ref_frame = ref_frame.astype(str)
        labels = meta.labels or []
        task: Any = (BinaryClassification(target=ev.TARGET, prediction_labels=ev.PREDICTION, pos_label=labels[1])
                     if meta.task == "binary" else
                     MulticlassClassification(target=ev.TARGET, prediction_labels=ev.PREDICTION))
        dd = DataDefinition(categorical_columns=[ev.TARGET, ev.PREDICTION], classification=[task])
        preset = ClassificationPreset()
    snapshot = Report([preset]).run(Dataset.from_pandas(current, data_definition=dd),
                                    Dataset.from_pandas(ref_frame, data_definition=dd))
    return ev.save(snapshot, out_dir, "evidently-quality")
