"""`mlops monitor`: read the prediction log window by window, judge every rule, fire alerts, record it all,
and regenerate the dashboard and the Evidently report. A plain function: the scheduled Prefect flow calls it.

Live runs resume where the previous one stopped (the cursor in the monitor store) and keep the rules'
hysteresis there. `backtest=True` replays the log (or `since`..`until`) from scratch with a fresh hysteresis,
writes nothing to the store, sends nothing, and reports when each rule would have fired: a JSON record of every
window and alert and, beside it, one page (the dashboard over the replayed windows, headed by the first firings).
"""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mlops.core.atomic import write_text
from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.pages import write_page
from mlops.core.predlog import LogFilter, Traffic
from mlops.core.predlog_store import log_name, log_target, open_reader
from mlops.core.refs import fetch
from mlops.core.registry import tracking_uri
from mlops.core.timespec import iso, parse_duration, parse_time, time_option
from mlops.core.workspace import workspace
from mlops.engine.validate import load_validated
from mlops.monitor import evidently_report as ev
from mlops.monitor.alerts import deliver, event_name, flush_prefect_events, write_drift_textfile
from mlops.monitor.dashboard import dashboard_context, page_context, write_dashboard
from mlops.monitor.embedding import evidently_embedding_drift
from mlops.monitor.judge import WindowJudge
from mlops.monitor.logstream import (
    EMBEDDING_COLUMN,
    NUMERIC_KINDS,
    Rows,
    Window,
    monitored_columns,
    other_traffic,
    read_windows,
)
from mlops.monitor.operations import error_rate, scrape_requests, server_memory
from mlops.monitor.reference import (
    CONFIDENCE,
    LABEL,
    VALUE,
    outputs_of,
    production_reference,
    training_reference,
)
from mlops.monitor.results import (
    AlertRecord,
    AlertWindow,
    BacktestResult,
    EvidentlyReport,
    FirstFiring,
    LiveResult,
    MonitorResult,
    Observation,
    WindowSummary,
)
from mlops.monitor.rules import RuleState, accuracy_baseline, observe, step
from mlops.monitor.store import MonitorStore, open_store
from mlops.package.bundle import read_bundle

if TYPE_CHECKING:
    from mlops.monitor.reference import Reference
    from mlops.package.bundle import BundleMeta
    from mlops.recipe import LoadedRecipe
    from mlops.recipe.monitor import MonitorConfig

R = TypeVar("R", bound=MonitorResult)


def monitor_recipe(recipe: str, overrides: list[str], model: str | None, *, log: str | None = None,
                   since: str | None = None, backtest: bool = False, until: str | None = None) -> MonitorResult:
    """Monitor `model` (NAME@ALIAS, NAME/VERSION or a bundle directory; default `<model_name>@champion`)
    with the recipe's `monitor:` section. Returns what it judged, fired and wrote."""

    return monitor(load_validated(recipe, overrides), model, log=log, since=since, until=until, backtest=backtest)


def monitor(loaded: LoadedRecipe, model: str | None, *, log: str | None = None, since: str | None = None,
            until: str | None = None, backtest: bool = False) -> MonitorResult:
    """Judge the log's new windows (a backtest: all of them, afresh), fire alerts through the rules' hysteresis,
    record and send them (a backtest does neither), and write the pages."""
    target = _target(loaded, model, log, since, until)
    try:
        return _backtest(target, _read(target, 0, None)) if backtest else _live(target)
    finally:
        target.store.close()  # on PostgreSQL, its connection (and with it any lock it still held)


def _live(target: _Target) -> LiveResult:
    # the cursor is read and advanced under the model's hold (on PostgreSQL, an advisory lock shared by every
    # host), so two monitors started together never judge one window twice
    with target.store.exclusive(target.meta.name):
        after, last_key = target.store.cursor(target.meta.name, target.version, target.log_key,
                                              target.cfg.window.by)
        states = target.store.rule_states(target.meta.name, target.version)
        read = _read(target, after, last_key)
        scrape = _error_rate(target, read.summaries)
        _memory(target, read.summaries)
        dashboard = target.out_dir / "dashboard.html"
        alerts = _judge_rules(read.summaries, states, target, dashboard)
        result = _result(LiveResult, target, read, alerts, dashboard)
        target.store.commit_run(target.meta.name, target.version, target.log_key, target.cfg.window.by, after,
                                read.summaries, alerts, states, read.cursor, scrape)
    _send(target, alerts)
    result.evidently = _latest_window_reports(target, read)
    _write_dashboard(target, dashboard, read, result.evidently)
    return result


# --- what a run monitors, and the windows it reads --------------------------------------------------------------


@dataclass
class _Target:
    """What one run monitors and how: the model's bundle, its log, the judge, the rules' baseline, the store."""

    cfg: MonitorConfig
    meta: BundleMeta
    version: str | None
    bundle_dir: Path
    log_path: str | Path  # a file, or a postgresql:// URL
    flt: LogFilter
    judge: WindowJudge
    baseline: dict[str, Any]
    reference: Reference
    store: MonitorStore
    out_dir: Path

    @property
    def log_key(self) -> str:
        return log_name(self.log_path)  # the cursor's key: never a password


def _target(loaded: LoadedRecipe, model: str | None, log: str | None, since: str | None,
            until: str | None) -> _Target:
    """Every argument checked and the reference built; each mistake fails before the work it would spoil."""
    r = loaded.recipe
    cfg = r.monitor
    since_ts, until_ts = time_option("--since", since), time_option("--until", until)
    if since_ts is not None and until_ts is not None and since_ts >= until_ts:
        raise MlopsError(f"--since {since} is not before --until {until}")
    resolved = fetch(model or f"{r.model_name}@champion", tracking_uri(r.tracking.uri))
    meta = read_bundle(resolved.path)
    ws = workspace()
    log_path = log_target(log or cfg.log or ws.prediction_log(meta.name), resolve=True)
    open_reader(log_path, archive=False).close()  # a missing or foreign log fails before the reference is built
    judge = WindowJudge(meta, cfg)  # refuses bad per-feature settings before any heavy work
    baseline = accuracy_baseline(cfg, meta.task, meta.metrics)
    flt = LogFilter(meta.name, resolved.version, tuple(cfg.variants), since_ts, until_ts)
    reference = build_reference(loaded, meta, resolved.path, log_path, flt, cfg)
    judge.reference = reference
    return _Target(cfg, meta, resolved.version, resolved.path, log_path, flt, judge, baseline, reference,
                   open_store(ws.monitor_store(meta.name), log_path), ws.monitor_dir(meta.name))


@dataclass
class _Read:
    """The windows one run read after rowid `after`, each judged."""

    summaries: list[WindowSummary]
    rows: int  # every row read, in a window or waiting for the next one
    cursor: tuple[int, int | None] | None  # (last rowid, time-window key) of the last window; None: no window
    latest: tuple[Window, WindowSummary] | None  # the last judged window, kept for the Evidently report
    notes: list[str]


def _read(target: _Target, after: int, last_key: int | None) -> _Read:
    """Every complete window after rowid `after` (by time: after window `last_key`), summarised."""
    cfg = target.cfg
    by_count = cfg.window.by == "count"
    # the database cuts the windows; their rows are read one window at a time
    windows = read_windows(target.log_path, target.flt, target.judge.columns, target.meta.task, after,
                           size=cfg.window.size if by_count else None,
                           duration=None if by_count else parse_duration(cfg.window.duration),
                           after_key=None if by_count else last_key)
    summaries: list[WindowSummary] = []
    latest: tuple[Window, WindowSummary] | None = None
    cursor: tuple[int, int | None] | None = None
    for window in windows:
        summary = target.judge.judge(window)
        summaries.append(summary)
        cursor = (window.end_rowid, window.key)
        if summary.judged:
            latest = (window, summary)
    notes = list(target.reference.notes)
    if windows.rows == 0:
        notes += _other_traffic_note(target, after)
    return _Read(summaries, windows.rows, cursor, latest, notes)


def _other_traffic_note(target: _Target, after: int) -> list[str]:
    """Why a run saw no row: the log holds other models', versions' or variants' rows (a filter that misses)."""
    others = other_traffic(target.log_path, target.flt, after)
    if not others:
        return []
    return [filter_miss_note(target.meta.name, target.version, target.flt.variants, log_name(target.log_path),
                             others)]


def filter_miss_note(model: str, version: str | None, variants: tuple[str, ...], where: object,
                     others: dict[Traffic, int]) -> str:
    """What the log holds instead (`others`: `LogReader.traffic`'s counts) and, where this model's rows are under a
    variant the filter leaves out (`stream`, from `mlops stream`, is the usual one), the override that adds it."""
    at = f" version {version}" if version else ""
    note = (f"no new rows of model '{model}'{at} ({', '.join(variants)}) in {where}; it has "
            + "; ".join(f"{n} rows of model {t.model} version {t.version or '-'} variant {t.variant}"
                        for t, n in others.items()))
    missed = {t.variant for t in others
              if t.model == model and version in (None, t.version) and t.variant not in variants}
    if missed:
        note += (f". To judge the {', '.join(sorted(missed))} rows too, list the variant in monitor.variants, e.g. "
                 f"monitor.variants=[{','.join([*variants, *sorted(missed)])}]")
    return note


def _error_rate(target: _Target, summaries: list[WindowSummary]) -> tuple[str, dict[str, float]] | None:
    """The server's error rate since the last run, judged with the latest window; the scrape to record."""
    e = target.cfg.error_rate
    if not (e.enabled and e.metrics_url and summaries):
        # with no new window the counters wait for the next run, so no error goes uncounted
        return None
    current = scrape_requests(e.metrics_url, target.meta.name)
    summaries[-1].errors = error_rate(target.store.last_scrape(e.metrics_url, target.meta.name), current,
                                      e.count_4xx)
    return e.metrics_url, current


def _memory(target: _Target, summaries: list[WindowSummary]) -> None:
    """The server's resident memory and its growth since earlier runs' samples (kept in their latest windows),
    judged with the latest window."""
    r = target.cfg.resources
    url = r.metrics_url or target.cfg.error_rate.metrics_url
    if r.enabled and url and summaries:
        stored = target.store.windows(target.meta.name, target.cfg.report.dashboard_windows)
        summaries[-1].operations["memory"] = server_memory(url, parse_duration(r.window), stored)


def build_reference(loaded: LoadedRecipe, meta: BundleMeta, bundle_dir: Path, log_path: Path, flt: LogFilter,
                    cfg: MonitorConfig) -> Reference:
    ref = cfg.reference
    seed = loaded.recipe.seed
    if ref.source == "training":
        return training_reference(loaded, meta, bundle_dir, ref.max_rows, seed)
    start, end = parse_time(str(ref.start)), parse_time(str(ref.end))
    return production_reference(log_path, flt, monitored_columns(meta), meta.task, start, end, ref.max_rows, seed,
                                f"{iso(start)} .. {iso(end)}")


# --- the rules, the alerts and the result ------------------------------------------------------------------------


def _judge_rules(summaries: list[WindowSummary], states: dict[str, RuleState], target: _Target,
                 dashboard: Path) -> list[AlertRecord]:
    """Every rule on every window in order, through the hysteresis; `states` is updated in place and each
    summary gets its rules' observations."""
    cfg = target.cfg
    cooldown = parse_duration(cfg.alerts.cooldown)
    alerts = []
    for s in summaries:
        s.rules = observe(s, cfg, target.meta.task, target.baseline)
        for o in s.rules:
            states[o.rule], transition = step(states.get(o.rule, RuleState()), o, s.end_ts,
                                              cfg.alerts.consecutive, cooldown)
            if transition is not None:
                alerts.append(_alert(o, transition, s, target, dashboard))
    return alerts


def _alert(o: Observation, transition: str, s: WindowSummary, target: _Target, dashboard: Path) -> AlertRecord:
    return AlertRecord(
        rule=o.rule, state=transition, event=event_name(o.rule, transition), model=target.meta.name,
        version=target.version, value=o.value, threshold=o.threshold,
        reason=o.reason if transition == "fired" else f"back within threshold: {o.reason}",
        window=AlertWindow(index=s.index, start=s.start_ts, end=s.end_ts, start_iso=s.start_iso, end_iso=s.end_iso,
                           rows=s.rows, first_rowid=s.start_rowid, last_rowid=s.end_rowid),
        consecutive=target.cfg.alerts.consecutive, detail=o.detail, dashboard=str(dashboard),
        log=log_name(target.log_path))


def _result(kind: type[R], target: _Target, read: _Read, alerts: list[AlertRecord], dashboard: Path,
            **only: Any) -> R:
    """The result every run has, with what only its `kind` has."""
    return kind(
        model=target.meta.name, version=target.version, bundle=str(target.bundle_dir), log=log_name(target.log_path),
        backtest=kind is BacktestResult, reference=target.reference.describe(), baseline=target.baseline,
        notes=read.notes, windows=[s.brief() for s in read.summaries],
        pending_rows=read.rows - sum(s.rows for s in read.summaries), alerts=alerts,
        fired=sorted({a.rule for a in alerts if a.state == "fired"}), store=target.store.name,
        dashboard=str(dashboard), **only)


def _first_fired(alerts: list[AlertRecord]) -> dict[str, FirstFiring]:
    out: dict[str, FirstFiring] = {}
    for a in alerts:
        if a.state == "fired" and a.rule not in out:
            out[a.rule] = FirstFiring(window=a.window.index, start=a.window.start_iso, end=a.window.end_iso,
                                      value=a.value, threshold=a.threshold)
    return out


# --- a live run's record, channels and pages ---------------------------------------------------------------------


def _send(target: _Target, alerts: list[AlertRecord]) -> None:
    """Each recorded alert to every channel, and each channel's outcome to the store."""
    for alert in alerts:
        alert.delivery = deliver(alert, target.cfg.alerts)
        assert alert.id is not None  # numbered by commit_run, which ran first
        target.store.record_delivery(alert.id, alert.delivery)
    if alerts:
        flush_prefect_events()


def _latest_window_reports(target: _Target, read: _Read) -> EvidentlyReport | None:
    """Evidently's report and the Prometheus drift textfile of the latest judged window, where configured."""
    if read.latest is None:
        return None
    window, summary = read.latest
    cfg = target.cfg
    report = None
    if cfg.report.evidently:
        report = evidently_report(window.rows, summary, target.reference, target.judge, cfg, target.meta,
                                  target.out_dir)
    if cfg.alerts.prometheus_textfile:
        drift = summary.drift or {}
        write_drift_textfile(Path(cfg.alerts.prometheus_textfile), target.meta.name,
                             drift.get("columns", []) + drift.get("predictions", []))
    return report


def _write_dashboard(target: _Target, path: Path, read: _Read, evidently: EvidentlyReport | None) -> None:
    """The dashboard over the store's history: the latest windows and every recorded alert."""
    context = _dashboard_context(target)
    if evidently is not None:
        context["evidently"] = evidently.html
    elif read.latest is None and (target.out_dir / "evidently.html").is_file():
        # no new judged window: an earlier run's report is still of the latest one
        context["evidently"] = str(target.out_dir / "evidently.html")
    name = target.meta.name
    history = target.store.windows(name, target.cfg.report.dashboard_windows)
    recorded = target.store.alerts(name)
    write_dashboard(path, context | {"alerts": recorded}, [h["summary"] for h in history], recorded)


def _dashboard_context(target: _Target) -> dict[str, Any]:
    w = target.cfg.window
    window = f"every {w.size} rows" if w.by == "count" else f"every {w.duration} (UTC-aligned)"
    return dashboard_context(model=target.meta.name, version=target.version, bundle=str(target.bundle_dir),
                             log=log_name(target.log_path), reference=target.reference.description,
                             window=f"{window}, judged from {w.min_samples} rows", baseline=target.baseline,
                             max_drop=target.cfg.accuracy.max_drop, sla_ms=target.cfg.latency.sla_ms)


# --- a backtest's record and page --------------------------------------------------------------------------------


def _backtest(target: _Target, read: _Read) -> BacktestResult:
    """The rules over every window with a fresh hysteresis; nothing recorded or sent. Its alerts, its result's
    `dashboard` and `report_html` all name the one page, `backtest-<time>.html` beside `backtest-<time>.json`."""
    json_path, page = _backtest_paths(target.out_dir)
    alerts = _judge_rules(read.summaries, {}, target, page)
    result = _result(BacktestResult, target, read, alerts, page, first_fired=_first_fired(alerts),
                     report=str(json_path), report_html=str(page))
    record = asdict(result)
    _write_backtest(target.out_dir, record, [s.record() for s in read.summaries],
                    _dashboard_context(target) | {"alerts": record["alerts"]}, paths=(json_path, page))
    return result


def _backtest_paths(out_dir: Path) -> tuple[Path, Path]:
    stem = f"backtest-{time.strftime('%Y%m%d-%H%M%S')}"
    return out_dir / f"{stem}.json", out_dir / f"{stem}.html"


def _write_backtest(out_dir: Path, result: dict[str, Any], summaries: list[dict[str, Any]],
                    context: dict[str, Any], paths: tuple[Path, Path] | None = None) -> tuple[str, str]:
    """`backtest-<time>.json` (the result as `--json` prints it, with every window's summary) and, beside it,
    `backtest-<time>.html`: the dashboard over the replayed windows, headed by when each rule would first have
    fired. `paths`: the two, when the run named them first. Returns both paths."""

    json_path, html_path = paths or _backtest_paths(out_dir)
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


# --- Evidently, for people ---------------------------------------------------------------------------------------


def evidently_report(rows: Rows, summary: WindowSummary, reference: Reference, judge: WindowJudge,
                     cfg: MonitorConfig, meta: BundleMeta, out_dir: Path) -> EvidentlyReport:
    """Evidently's drift report of the latest judged window (and its quality report where ground truth is
    joined). When neither side had to be sampled its verdicts are checked against the fast path's."""

    limit = cfg.report.max_rows
    rng = np.random.default_rng(0)
    cur_idx = np.sort(rng.choice(len(rows), limit, replace=False)) if len(rows) > limit else np.arange(len(rows))
    ref_idx = (np.sort(rng.choice(reference.n, limit, replace=False)) if reference.n > limit
               else np.arange(reference.n))
    sampled = len(cur_idx) < len(rows) or len(ref_idx) < reference.n
    numeric = [c for c, k in judge.columns.items() if k in NUMERIC_KINDS]
    current_cols = {**rows.numeric, **rows.categorical, **outputs_of(rows, meta.task)}
    reference_cols = {**reference.numeric, **reference.categorical, **reference.outputs}
    drift = summary.drift or {}
    fast = {c["column"]: c for c in drift.get("columns", []) + drift.get("predictions", [])}
    methods = {c: m for c, m in (judge.methods | judge.prediction_methods).items()
               if c in fast and fast[c]["drift"] is not None and c in current_cols and c in reference_cols}
    num = [c for c in methods if c in numeric or c in (CONFIDENCE, VALUE)]
    cat = [c for c in methods if c not in num]
    current = _frame({c: current_cols[c][cur_idx] for c in methods}, num)
    ref_frame = _frame({c: reference_cols[c][ref_idx] for c in methods}, num)
    snapshot = ev.run_drift(ref_frame, current, num, cat, methods, cfg.drift.share)
    paths = ev.save(snapshot, out_dir)
    verdicts = ev.verdicts(snapshot)
    out = EvidentlyReport(html=paths["html"], json=paths["json"], window=summary.index, rows=int(len(cur_idx)),
                          reference_rows=int(len(ref_idx)), sampled=sampled)
    if not sampled:
        disagree = [c for c, v in verdicts.items() if c in fast and v["drift"] != fast[c]["drift"]]
        out.agrees_with_fast_path = not disagree
        out.disagreements = disagree
        if disagree:
            say(f"WARNING Evidently and the fast path disagree on {disagree}", "mlops monitor")
    out.quality, unknown = _quality_report(rows, cur_idx, reference, ref_idx, meta, cfg, out_dir)
    out.unknown_labels = unknown or None
    if out.unknown_labels:
        shown = ", ".join(f"{label!r} {n}" for label, n in list(out.unknown_labels.items())[:5])
        say(f"{sum(out.unknown_labels.values())} labelled rows of window {summary.index} have a label that is no "
            f"class of the model ({shown}; its classes: {', '.join(meta.labels or [])}): left out of Evidently's "
            "quality report, which judges the rest", "mlops monitor")
    out.embedding = _embedding_report(rows, cur_idx, reference, ref_idx, fast.get(EMBEDDING_COLUMN), cfg)
    return out


def _embedding_report(rows: Rows, cur_idx: np.ndarray, reference: Reference, ref_idx: np.ndarray,
                      fast: dict[str, Any] | None, cfg: MonitorConfig) -> dict[str, Any] | None:
    """Evidently's own embedding drift on the report's rows, beside the fast path's verdict on the window."""
    if fast is None or rows.embedding is None or reference.embedding is None:
        return None
    cur, ref = rows.embedding[cur_idx], reference.embedding[ref_idx]
    cur, ref = cur[np.isfinite(cur).all(axis=1)], ref[np.isfinite(ref).all(axis=1)]
    method = cfg.drift.embedding.method
    try:
        score, drift = evidently_embedding_drift(ref, cur, method, cfg.drift.embedding.threshold)
    except MlopsError as exc:  # too large for Evidently's kernel matrix, say: the fast path's verdict stands
        return {"method": method, "skipped": str(exc)}
    return {"method": method, "threshold": fast["threshold"], "score": score, "drift": drift,
            "fast_path_score": fast["score"], "agrees_with_fast_path": drift == fast["drift"]}


def _frame(columns: dict[str, np.ndarray], numeric: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame({c: (v.astype(np.float64) if c in numeric else v.astype(object)) for c, v in columns.items()})


def _quality_report(rows: Rows, cur_idx: np.ndarray, reference: Reference, ref_idx: np.ndarray, meta: BundleMeta,
                    cfg: MonitorConfig, out_dir: Path) -> tuple[dict[str, str] | None, dict[str, int]]:
    """Evidently's classification or regression preset over the labelled rows, when there are enough; and the
    labelled rows left out because their truth is no class of the model (feedback may say anything: '7'), by
    label, most first. Evidently cannot score a class the model does not have (it raises, "Cannot compute
    TPR"), and the live metrics (`live_quality`) leave such rows out too."""
    import pandas as pd


    regression = meta.task == "regression"
    truth = rows.truth_value if regression else rows.truth_label
    pred = rows.prediction if regression else rows.label
    if truth is None or pred is None or reference.target is None:
        return None, {}
    unknown: Counter[str] = Counter()
    if regression:
        labelled = np.isfinite(truth[cur_idx].astype(np.float64))
    else:
        classes = set(meta.labels or [])
        labelled = np.fromiter((t is not None for t in truth[cur_idx]), bool, len(cur_idx))
        known = np.fromiter((t in classes for t in truth[cur_idx]), bool, len(cur_idx))
        unknown.update(str(t) for t in truth[cur_idx][labelled & ~known])
        labelled &= known
    if labelled.sum() < cfg.accuracy.min_labels:
        return None, dict(unknown.most_common())
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
    from sklearn.exceptions import UndefinedMetricWarning  # with Evidently's, which imports it anyway

    with warnings.catch_warnings():
        # a class the window's truth or predictions lack (all labels '1'): Evidently's sklearn calls warn that
        # recall or precision is ill-defined, and its own ratios divide by zero; the report shows those as 0 or
        # empty, which is its answer, not a fault to print beside the monitor's lines
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        warnings.filterwarnings("ignore", "divide by zero", RuntimeWarning)
        snapshot = Report([preset]).run(Dataset.from_pandas(current, data_definition=dd),
                                        Dataset.from_pandas(ref_frame, data_definition=dd))
    return ev.save(snapshot, out_dir, "evidently-quality"), dict(unknown.most_common())
