"""The evaluation report: `evaluation.json` for machines and one self-contained `evaluation.html` for people.

The HTML (`evaluation.html.j2`, rendered by `mlops.core.pages`) carries the shared stylesheet and its plots as
data URIs, so it can be attached to a run, mailed or opened offline and still show everything; it needs no
script. The JSON keeps paths to the plots and the latency percentiles but not the raw latency samples, so it
stays small and diffable.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import mimetypes
import os
from pathlib import Path
from typing import Any

from mlops.core.atomic import write_text
from mlops.core.pages import fmt, render_page
from mlops.evaluate.plots import importance_png, latency_histogram_png, load_latency_png

JSON_NAME = "evaluation.json"
HTML_NAME = "evaluation.html"
LATENCY_PLOT = "latency_histogram"
IMPORTANCE_PLOT = "feature_importance"
LOAD_PLOT = "load_test_latency"

_RESULT = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIPPED", "error": "ERROR"}


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Write evaluation.json and evaluation.html under `out_dir` (each atomically); return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = copy.deepcopy(report)
    plots = {str(k): str(v) for k, v in (report.get("plots") or {}).items() if v}
    latencies = ((report.get("performance") or {}).get("onnx") or {}).get("latencies_ms")
    if latencies and LATENCY_PLOT not in plots:
        try:
            path = latency_histogram_png(latencies, out_dir / f"{LATENCY_PLOT}.png", "ONNX serving latency")
            plots[LATENCY_PLOT] = str(path.resolve())
        except ValueError:  # no finite sample: the percentiles table still says what there is
            pass
    importance = report.get("importance") or {}
    if importance.get("columns") and IMPORTANCE_PLOT not in plots:
        plots[IMPORTANCE_PLOT] = str(importance_png(importance, out_dir / f"{IMPORTANCE_PLOT}.png").resolve())
    load = report.get("load_test") or {}
    if load.get("series") and LOAD_PLOT not in plots:
        title = f"load test: {load.get('users')} users, {fmt(load.get('rps'))} rps"
        plots[LOAD_PLOT] = str(load_latency_png(load["series"], out_dir / f"{LOAD_PLOT}.png", title).resolve())
    if plots:
        report["plots"] = plots

    json_path, html_path = out_dir / JSON_NAME, out_dir / HTML_NAME
    write_text(json_path, json.dumps(_for_json(report), indent=2, sort_keys=False, allow_nan=False) + "\n")
    write_text(html_path, render_html(report))
    return {"html": str(html_path), "json": str(json_path)}


# --- JSON -------------------------------------------------------------------------------------------------


def _for_json(report: dict[str, Any]) -> Any:
    out = _plain(report)
    for engine in (out.get("performance") or {}).values():
        if isinstance(engine, dict):
            engine.pop("latencies_ms", None)  # thousands of samples; the percentiles summarise them
    return out


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, paths to str, NaN/inf to null (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | str | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _plain(value.tolist())
    return str(value)


# --- HTML -------------------------------------------------------------------------------------------------


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one HTML document. Sections whose data is absent are left out."""
    return render_page("evaluation.html.j2", **page_context(report))


def page_context(report: dict[str, Any]) -> dict[str, Any]:
    """What `evaluation.html.j2` shows, as plain data; an absent section is an empty value."""
    return {
        "title": f"Evaluation: {_model_title(report.get('model') or {})}",
        "meta": _meta(report),
        "gates": [_gate(g) for g in report.get("gates") or []],
        "metrics": sorted(((str(k), v) for k, v in report["metrics"].items()), key=lambda kv: kv[0])
        if report.get("metrics") else [],
        "slices": _slices(report["slices"]) if report.get("slices") else None,
        "fairness": _fairness(report["fairness"]) if report.get("fairness") else [],
        "robustness": [_robustness(r) for r in report.get("robustness") or []],
        "performance": _performance(report["performance"]) if report.get("performance") else None,
        "load_test": _load_test(report["load_test"]) if report.get("load_test") else None,
        "plots": [_plot(str(name), Path(path)) for name, path in (report.get("plots") or {}).items()],
        "importance": _importance(report["importance"]) if (report.get("importance") or {}).get("columns") else None,
    }


def _model_title(model: dict[str, Any]) -> str:
    version = model.get("version")
    return str(model.get("name", "model")) + (f" v{version}" if version not in (None, "") else "")


def _meta(report: dict[str, Any]) -> list[dict[str, Any]]:
    model = report.get("model") or {}
    rows = [("recipe", report.get("recipe")), ("outcome", None), ("champion", report.get("champion")),
            ("task", model.get("task")), ("decided in run", model.get("run_id")), ("ONNX sha256", model.get("onnx_sha256")),
            ("labels", ", ".join(map(str, model["labels"])) if model.get("labels") else None)]
    out = []
    for term, value in rows:
        if term == "outcome":
            out.append({"term": term, "text": str(report.get("outcome", "unknown")), "badge": True})
        elif value not in (None, ""):
            out.append({"term": term, "text": str(value), "badge": False})
    return out


def _comparison_text(c: dict[str, Any]) -> str:
    level = 1 - 2 * float(c.get("alpha", 0.05))
    lo, hi = (c.get("ci") or [None, None])[:2]
    parts = [f"{c.get('test', 'comparison')}: challenger {fmt(c.get('challenger'))} vs champion "
             f"{fmt(c.get('champion'))}",
             f"estimate {fmt(c.get('estimate'))}",
             f"{level:.0%} CI [{fmt(lo)}, {fmt(hi)}]",
             f"p = {fmt(c.get('p_value'))}",
             f"max drop {fmt(c.get('max_drop'))}" + (" (strict)" if c.get("strict") else ""),
             f"n = {fmt(c.get('n'))}"]
    return "; ".join(parts)


def _gate(g: dict[str, Any]) -> dict[str, Any]:
    comparison = g.get("comparison") or {}
    return {"gate": str(g.get("metric", "")) + (" (vs champion)" if g.get("kind") == "champion" else ""),
            "slice": str(g.get("slice") or ""), "threshold": str(g.get("threshold") or ""), "value": g.get("value"),
            "result": _RESULT.get(str(g.get("status")), str(g.get("status", "")).upper() or "n/a"),
            "detail": str(g.get("detail") or ""),
            "comparison": _comparison_text(comparison) if comparison else "",
            "hypothesis": str(comparison.get("hypothesis") or "")}


def _slices(slices: list[dict[str, Any]]) -> dict[str, Any]:
    names: list[str] = []
    for s in slices:
        names += [k for k in (s.get("metrics") or {}) if k not in names]
    rows = [{"column": str(s.get("column", "")), "slice": str(s.get("slice", "")), "count": s.get("count"),
             "cells": [(s.get("metrics") or {}).get(k) for k in names]} for s in slices]
    return {"metrics": [str(n) for n in names], "rows": rows}


_FAIRNESS_SUMMARY = ("demographic_parity_diff", "demographic_parity_ratio", "equal_opportunity_diff",
                     "equalized_odds_diff")
_FAIRNESS_GROUP = ("count", "selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")


def _fairness(fairness: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for column, f in fairness.items():
        f = f or {}
        label = f.get("positive_label")
        out.append({"column": str(column), "positive_label": None if label is None else str(label),
                    "summary": [(k, f.get(k)) for k in _FAIRNESS_SUMMARY if k in f],
                    "measures": list(_FAIRNESS_GROUP),
                    "groups": [{"group": str(g.get("group", "")), "cells": [g.get(k) for k in _FAIRNESS_GROUP]}
                               for g in f.get("groups") or []]})
    return out


def _robustness(r: dict[str, Any]) -> dict[str, Any]:
    return {"name": str(r.get("name", "")), "kind": str(r.get("kind", "")), "column": str(r.get("column") or ""),
            "result": "ERROR" if r.get("crashed") else ("PASS" if r.get("passed") else "FAIL"),
            "crashed": bool(r.get("crashed")), "finite": r.get("finite"), "value": r.get("value"),
            "detail": str(r.get("detail") or "")}


def _performance(perf: dict[str, Any]) -> dict[str, Any] | None:
    """One column per engine; one row per scalar measure any engine reports (samples are left out)."""
    engines = [(str(name), stats) for name, stats in perf.items() if isinstance(stats, dict)]
    if not engines:
        return None
    keys: list[str] = []
    for _, stats in engines:
        keys += [k for k, v in stats.items() if k not in keys and not isinstance(v, list | dict)]
    return {"engines": [name for name, _ in engines],
            "rows": [(str(k), [stats.get(k) for _, stats in engines]) for k in keys]}


def _load_test(load: dict[str, Any]) -> dict[str, Any]:
    """The load test's figures as rows of a table, and what drove it in one line."""
    pace = f" paced to {fmt(load['rps_target'])} rps" if load.get("rps_target") else ""
    rows = [(k, load.get(k)) for k in ("requests", "failures", "rps", "p50_ms", "p95_ms", "p99_ms", "error_rate",
                                       "peak_memory_mb")]
    rows += [(f"errors: {why}", n) for why, n in (load.get("errors") or {}).items()]
    return {"what": f"{load.get('users')} users{pace} for {fmt(load.get('duration_s'))} s after "
                    f"{fmt(load.get('warmup_s'))} s of warm-up, against {load.get('target')}",
            "rows": rows}


def _plot(name: str, path: Path) -> dict[str, str]:
    """A plot as a data URI, so the page stays one file; a missing file is named instead."""
    caption = name.replace("_", " ")
    if not path.is_file():
        return {"caption": caption, "src": "", "path": str(path)}
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"caption": caption, "src": f"data:{mime};base64,{data}", "path": str(path)}


def _importance(imp: dict[str, Any]) -> dict[str, Any]:
    """The permutation importance table, each image column's overlays as data URIs, each text's tokens shaded
    by their attribution (green toward the predicted class, red away; opacity relative to the row's largest)."""
    level = float(imp.get("confidence", 0.95))
    rows = [{"column": str(c.get("column", "")), "kind": str(c.get("kind", "")), "mean": c.get("mean"),
             "std": c.get("std"), "lo": (c.get("ci") or [None, None])[0], "hi": (c.get("ci") or [None, None])[1]}
            for c in imp.get("columns") or []]
    images, texts, skipped = [], [], []
    for a in imp.get("attributions") or []:
        if a.get("skipped"):
            skipped.append(str(a["skipped"]))
        elif a.get("kind") == "image":
            images.append({"column": str(a.get("column")),
                           "overlays": [_plot(f"row {i}", Path(p)) for i, p in enumerate(a.get("overlays") or [])]})
        elif a.get("kind") == "text":
            texts.append({"column": str(a.get("column")), "rows": [_tokens(r) for r in a.get("rows") or []]})
    return {"metric": str(imp.get("metric", "")), "baseline": imp.get("baseline"), "rows_scored": imp.get("rows"),
            "repeats": imp.get("repeats"), "level": f"{level:.0%}", "rows": rows, "images": images, "texts": texts,
            "skipped": skipped}


def _tokens(row: dict[str, Any]) -> list[dict[str, str]]:
    scores = [float(s) for s in row.get("scores") or []]
    top = max((abs(s) for s in scores), default=0.0) or 1.0
    return [{"token": str(t), "title": f"{s:.4g}",
             "style": f"background: rgba({'0,160,0' if s >= 0 else '200,0,0'},{abs(s) / top:.2f})"}
            for t, s in zip(row.get("tokens") or [], scores, strict=False)]
