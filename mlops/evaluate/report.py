"""The evaluation report: `evaluation.json` for machines and one self-contained `evaluation.html` for people.

The HTML carries its own CSS and its plots as data URIs, so it can be attached to a run, mailed or opened
offline and still show everything; it needs no script. The JSON keeps paths to the plots and the latency
percentiles but not the raw latency samples, so it stays small and diffable.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import mimetypes
import numbers
import os
import tempfile
from html import escape
from pathlib import Path
from typing import Any

JSON_NAME = "evaluation.json"
HTML_NAME = "evaluation.html"
LATENCY_PLOT = "latency_histogram"

_RESULT = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIPPED", "error": "ERROR"}


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Write evaluation.json and evaluation.html under `out_dir` (each atomically); return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = copy.deepcopy(report)
    plots = {str(k): str(v) for k, v in (report.get("plots") or {}).items() if v}
    latencies = ((report.get("performance") or {}).get("onnx") or {}).get("latencies_ms")
    if latencies and LATENCY_PLOT not in plots:
        from mlops.evaluate.plots import latency_histogram_png

        try:
            path = latency_histogram_png(latencies, out_dir / f"{LATENCY_PLOT}.png", "ONNX serving latency")
            plots[LATENCY_PLOT] = str(path.resolve())
        except ValueError:  # no finite sample: the percentiles table still says what there is
            pass
    if plots:
        report["plots"] = plots

    json_path, html_path = out_dir / JSON_NAME, out_dir / HTML_NAME
    _atomic_write(json_path, json.dumps(_for_json(report), indent=2, sort_keys=False, allow_nan=False) + "\n")
    _atomic_write(html_path, render_html(report))
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


def _atomic_write(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- HTML -------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
     color:#1f2328;padding:0 1rem;line-height:1.4}
h1{font-size:1.5rem;margin-bottom:.3rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de;
     padding-bottom:.2rem} h3{font-size:1rem;margin-top:1.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem} th,td{border:1px solid #d0d7de;
     padding:.3rem .6rem;text-align:left;vertical-align:top} th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.8rem;font-weight:600;font-size:.85rem}
.passed,.PASS{background:#dafbe1;color:#116329} .failed,.FAIL,.ERROR{background:#ffebe9;color:#82071e}
.allowed,.SKIPPED{background:#fff8c5;color:#7d4e00}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;margin:.5rem 0}
dl.meta dt{font-weight:600} dl.meta dd{margin:0;font-family:monospace;word-break:break-all}
.detail{font-size:.85rem} .hyp{color:#59636e;font-size:.8rem}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top}
figure img{max-width:520px;border:1px solid #d0d7de} figcaption{font-size:.85rem;color:#59636e}
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one HTML document. Sections whose data is absent are left out."""
    parts = [_header(report), _gates(report.get("gates") or [])]
    for key, section in (("metrics", _metrics), ("slices", _slices), ("fairness", _fairness),
                         ("robustness", _robustness), ("performance", _performance), ("plots", _plots)):
        if report.get(key):
            parts.append(section(report[key]))
    model = report.get("model") or {}
    title = f"Evaluation: {_model_title(model)}"
    head = f'<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>'
    body = "\n".join(p for p in parts if p)
    return f'<!DOCTYPE html>\n<html lang="en">\n{head}\n<body>\n{body}\n</body>\n</html>\n'


def _model_title(model: dict[str, Any]) -> str:
    version = model.get("version")
    return str(model.get("name", "model")) + (f" v{version}" if version not in (None, "") else "")


def _fmt(value: Any) -> str:
    """Display text (unescaped): 4 significant digits, n/a for missing or undefined numbers."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):  # float or a numpy scalar
        v = float(value)
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    return str(value)


def _td(value: Any, cls: str = "") -> str:
    numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
    classes = " ".join(c for c in (cls, "num" if numeric else "") if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{escape(_fmt(value))}</td>"


def _table(headers: list[str], rows: list[str], table_id: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    ident = f' id="{escape(table_id)}"' if table_id else ""
    body = "\n".join(rows)
    return f"<table{ident}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _badge(text: str) -> str:
    return f'<span class="badge {escape(text)}">{escape(text)}</span>'


def _header(report: dict[str, Any]) -> str:
    model = report.get("model") or {}
    outcome = str(report.get("outcome", "unknown"))
    meta = [("recipe", report.get("recipe")), ("outcome", None), ("champion", report.get("champion")),
            ("task", model.get("task")),
            ("run id", model.get("run_id")), ("ONNX sha256", model.get("onnx_sha256")),
            ("labels", ", ".join(map(str, model["labels"])) if model.get("labels") else None)]
    rows = []
    for key, value in meta:
        if key == "outcome":
            rows.append(f"<dt>outcome</dt><dd>{_badge(outcome)}</dd>")
        elif value not in (None, ""):
            rows.append(f"<dt>{escape(key)}</dt><dd>{escape(str(value))}</dd>")
    return (f"<header>\n<h1>Evaluation: {escape(_model_title(model))}</h1>\n"
            f'<dl class="meta">{"".join(rows)}</dl>\n</header>')


def _comparison_text(c: dict[str, Any]) -> str:
    level = 1 - 2 * float(c.get("alpha", 0.05))
    lo, hi = (c.get("ci") or [None, None])[:2]
    parts = [f"{c.get('test', 'comparison')}: challenger {_fmt(c.get('challenger'))} vs champion "
             f"{_fmt(c.get('champion'))}",
             f"estimate {_fmt(c.get('estimate'))}",
             f"{level:.0%} CI [{_fmt(lo)}, {_fmt(hi)}]",
             f"p = {_fmt(c.get('p_value'))}",
             f"max drop {_fmt(c.get('max_drop'))}" + (" (strict)" if c.get("strict") else ""),
             f"n = {_fmt(c.get('n'))}"]
    return "; ".join(parts)


def _gates(gates: list[dict[str, Any]]) -> str:
    rows = []
    for g in gates:
        result = _RESULT.get(str(g.get("status")), str(g.get("status", "")).upper() or "n/a")
        detail = escape(str(g.get("detail") or ""))
        comparison = g.get("comparison")
        if comparison:
            detail += ("<br>" if detail else "") + escape(_comparison_text(comparison))
            if comparison.get("hypothesis"):
                detail += f'<br><span class="hyp">{escape(str(comparison["hypothesis"]))}</span>'
        kind = " (vs champion)" if g.get("kind") == "champion" else ""
        rows.append(f"<tr><td>{escape(str(g.get('metric', '')) + kind)}</td>"
                    f"<td>{escape(str(g.get('slice') or ''))}</td>"
                    f"<td>{escape(str(g.get('threshold') or ''))}</td>{_td(g.get('value'))}"
                    f"<td>{_badge(result)}</td><td class=\"detail\">{detail}</td></tr>")
    if not rows:
        rows.append('<tr><td colspan="6">no gates declared</td></tr>')
    return "<section>\n<h2>Gates</h2>\n" + _table(
        ["gate", "slice", "threshold", "value", "result", "detail"], rows, table_id="gates") + "\n</section>"


def _metrics(metrics: dict[str, Any]) -> str:
    rows = [f"<tr><td>{escape(str(k))}</td>{_td(v)}</tr>" for k, v in sorted(metrics.items())]
    return "<section>\n<h2>Metrics</h2>\n" + _table(["metric", "value"], rows, "metrics") + "\n</section>"


def _slices(slices: list[dict[str, Any]]) -> str:
    names: list[str] = []
    for s in slices:
        names += [k for k in (s.get("metrics") or {}) if k not in names]
    rows = []
    for s in slices:
        m = s.get("metrics") or {}
        rows.append(f"<tr><td>{escape(str(s.get('column', '')))}</td>"
                    f"<td>{escape(str(s.get('slice', '')))}</td>"
                    + _td(s.get("count")) + "".join(_td(m.get(k)) for k in names) + "</tr>")
    table = _table(["column", "slice", "count", *names], rows, "slices")
    return f"<section>\n<h2>Slices</h2>\n{table}\n</section>"


_FAIRNESS_SUMMARY = ("demographic_parity_diff", "demographic_parity_ratio", "equal_opportunity_diff",
                     "equalized_odds_diff")
_FAIRNESS_GROUP = ("count", "selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")


def _fairness(fairness: dict[str, Any]) -> str:
    out = ["<section>\n<h2>Fairness</h2>"]
    for column, f in fairness.items():
        f = f or {}
        out.append(f"<h3>{escape(str(column))}</h3>")
        if f.get("positive_label") is not None:
            out.append(f"<p>positive label: {escape(str(f['positive_label']))}</p>")
        summary = [f"<tr><td>{escape(k)}</td>{_td(f.get(k))}</tr>" for k in _FAIRNESS_SUMMARY if k in f]
        if summary:
            out.append(_table(["measure", "value"], summary))
        groups = [f"<tr><td>{escape(str(g.get('group', '')))}</td>"
                  + "".join(_td(g.get(k)) for k in _FAIRNESS_GROUP) + "</tr>" for g in f.get("groups") or []]
        if groups:
            out.append(_table(["group", *_FAIRNESS_GROUP], groups, f"fairness-{column}"))
    return "\n".join(out) + "\n</section>"


def _robustness(checks: list[dict[str, Any]]) -> str:
    rows = []
    for r in checks:
        result = "ERROR" if r.get("crashed") else ("PASS" if r.get("passed") else "FAIL")
        crashed = " (the model crashed)" if r.get("crashed") else ""
        rows.append(f"<tr><td>{escape(str(r.get('name', '')))}</td><td>{escape(str(r.get('kind', '')))}</td>"
                    f"<td>{escape(str(r.get('column') or ''))}</td><td>{_badge(result)}{crashed}</td>"
                    f"{_td(r.get('finite'))}{_td(r.get('value'))}"
                    f"<td class=\"detail\">{escape(str(r.get('detail') or ''))}</td></tr>")
    headers = ["check", "kind", "column", "result", "finite outputs", "value", "detail"]
    table = _table(headers, rows, "robustness")
    return f"<section>\n<h2>Robustness</h2>\n{table}\n</section>"


def _performance(perf: dict[str, Any]) -> str:
    engines = [(name, stats) for name, stats in perf.items() if isinstance(stats, dict)]
    if not engines:
        return ""
    keys: list[str] = []
    for _, stats in engines:
        keys += [k for k, v in stats.items() if k not in keys and not isinstance(v, list | dict)]
    rows = [f"<tr><td>{escape(k)}</td>" + "".join(_td(stats.get(k)) for _, stats in engines) + "</tr>"
            for k in keys]
    return "<section>\n<h2>Performance</h2>\n" + _table(
        ["measure", *(name for name, _ in engines)], rows, "performance") + "\n</section>"


def _plots(plots: dict[str, str]) -> str:
    figures = []
    for name, path in plots.items():
        p = Path(path)
        caption = escape(str(name).replace("_", " "))
        if not p.is_file():
            missing = f"{caption}: file not found ({escape(str(p))})"
            figures.append(f"<figure><figcaption>{missing}</figcaption></figure>")
            continue
        mime = mimetypes.guess_type(p.name)[0] or "image/png"
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        figures.append(f'<figure><img alt="{caption}" src="data:{mime};base64,{data}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    return "<section>\n<h2>Plots</h2>\n" + "\n".join(figures) + "\n</section>"
