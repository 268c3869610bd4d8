"""`mlops errors NAME`: where the served model is wrong, from predictions joined with ground truth.

* slices: every input column, by value (categorical) or by quantile bin (numeric, plus `missing`), with rows,
  errors, error rate and its Wilson interval; highest error rates first (slices of at least `min_rows`);
* most confident mistakes: wrong answers ranked by the probability the model gave its answer (regression:
  the largest absolute errors);
* clusters: a shallow decision tree fitted to "was this row an error" on the raw inputs; its leaves whose
  error rate is above the overall rate, each a readable rule over feature ranges.

An image or text model's rows are analysed by what the log keeps of them: its inputs' descriptors
(`review.chars`, `image.brightness`, ...) are columns like any other, and its logged embeddings are grouped
into regions (k-means, column `embedding.region`), so a slice or a rule can name the region where the model
errs; a mistake shows its image (when the log kept it) or its text.

A regression answer counts as an error when its absolute error is above `tolerance` (default: the 90th
percentile of the absolute errors analysed). Its truth is a feedback `value` (or a label that reads as a number);
a regression answer whose feedback names a class instead (`"label": "high"`) is skipped, counted under `skipped`
with its id, and said. Written as `errors.json` and one self-contained `errors.html`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mlops.core.atomic import write_text
from mlops.core.errors import MlopsError
from mlops.core.pages import image_data_url, render_page, write_page
from mlops.core.predlog import finite_float
from mlops.core.predlog_store import log_name
from mlops.data.descriptors import described_input
from mlops.improve.feedback import read_joined
from mlops.improve.intervals import wilson
from mlops.package.predictor import DESCRIPTORS, EMBEDDING
from mlops.recipe.improve import FeedbackConfig


def analyse_errors(log: Path, model: str, *, since: float | None = None, version: str | None = None,
                   variants: tuple[str, ...] = ("champion", "challenger"), feedback: FeedbackConfig | None = None,
                   bins: int = 4, top: int = 10, min_rows: int = 10, tolerance: float | None = None,
                   alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    import numpy as np


    rows, unusable = [], []
    for j in read_joined(log, model, since=since, variants=variants, feedback=feedback, version=version):
        if j.correct is not None:
            rows.append(j)
        elif j.truth is not None and finite_float(j.outputs.get("prediction")) is not None:  # a regression's answer
            if j.true_value is None:  # a class name sent as its label: skipped, and said, rather than a ValueError
                unusable.append(j)
            else:
                rows.append(j)
    if not rows and unusable:
        raise MlopsError(f"none of the {len(unusable)} predictions of '{model}' with feedback in {log_name(log)} has a "
                         f"true value to score: {_unusable_note(unusable)}")
    if not rows:
        raise MlopsError(f"no prediction of '{model}' in {log_name(log)} has ground truth yet: record feedback by prediction id "
                         "(POST /v1/feedback or mlops feedback FILE)")
    # the model's outputs say the task: a thumb on a regression's answer sets `correct` too, and a log that mixes
    # thumbs with true values must still be scored by its values (each value row read as wrong, before)
    regression = all("label" not in j.outputs for j in rows)
    frame, media = _frame([j.inputs for j in rows])
    regions = _embedding_regions([j.outputs.get(EMBEDDING) for j in rows], min_rows, seed)
    if regions is not None:
        frame[REGION] = regions
    if regression:
        abs_err = np.array([_abs_error(j) for j in rows])
        # the tolerance is read off true values; a thumbs-up's error is 0 by construction and would pull it down
        measured = np.array([e for e, j in zip(abs_err, rows, strict=True) if j.source != "thumbs" and e == e])
        if tolerance is None:
            tolerance = float(np.percentile(measured, 90)) if measured.size else 0.0
        # a thumbs-down names no value: wrong as its sender says, its error unknown (NaN: ranked last)
        wrong = np.where(np.isnan(abs_err), np.array([j.correct is False for j in rows]), abs_err > tolerance)
        confidence = abs_err
    else:
        wrong = np.array([not j.correct for j in rows])
        confidence = np.array([_confidence(j) for j in rows])
    n, k = len(rows), int(wrong.sum())
    lo, hi = wilson(k, n, alpha)
    overall = {"rows": n, "errors": k, "error_rate": k / n, "ci": [lo, hi]}
    slices = _slices(frame, wrong, bins, min_rows, alpha, overall["error_rate"])
    order = np.argsort(-confidence, kind="stable")
    mistakes = []
    for i in order:
        if not wrong[i]:
            continue
        j = rows[i]
        score = float(confidence[i])
        mistakes.append({"id": j.id, "predicted": j.predicted, "truth": j.truth, "confidence" if not regression
                         else "abs_error": score if math.isfinite(score) else None, "version": j.version,
                         "variant": j.variant, "inputs": j.inputs}
                        | ({"region": str(regions[i])} if regions is not None else {})
                        | _shown_media(j.inputs, media))
        if len(mistakes) >= top:
            break
    clusters = _clusters(frame, wrong, min_rows, alpha, overall["error_rate"], seed) if k and k < n else []
    return {"model": model, "log": log_name(log), "since": since, "version": version, "task":
            "regression" if regression else "classification", "tolerance": tolerance if regression else None,
            "overall": overall, "slices": slices[:top], "all_slices": len(slices), "confident_mistakes": mistakes,
            "clusters": clusters[:top], "min_rows": min_rows, "alpha": alpha,
            "skipped": {"rows": len(unusable), "reason": _unusable_note(unusable) if unusable else None,
                        "ids": [j.id for j in unusable[:top]]}}


def _abs_error(j: Any) -> float:
    """A regression answer's absolute error, NaN when its truth is no number (a thumbs-down) or its prediction
    none (a thumb on a row whose prediction the log holds as no finite number)."""
    return math.nan if j.error is None else abs(j.error)


def _unusable_note(unusable: list[Any]) -> str:
    """Which predictions' truth is no number, by id and feedback field, and how to give it."""
    first = unusable[0]
    field = {"outcome": "outcome (mapped by improve.feedback.outcome.labels)"}.get(first.source, first.source)
    return (f"{len(unusable)} whose truth is no number, e.g. prediction {first.id!r}: {field} {first.truth!r} "
            f"(the model answers a number: give its true 'value', e.g. {{\"id\": \"{first.id}\", \"value\": 12.5}})")


REGION = "embedding.region"
REGIONS = 8  # at most; fewer when there are too few rows for each to hold min_rows


def _frame(inputs: list[dict[str, Any]]) -> tuple[Any, dict[str, str]]:
    """The analysed columns: scalar inputs as logged and each image's or text's descriptors, without the
    image or text itself (every value is unique: no slice or rule can use it); and the media inputs' kinds."""
    import pandas as pd

    flat = []
    media: dict[str, str] = {}
    for row in inputs:
        described = row.get(DESCRIPTORS) if isinstance(row.get(DESCRIPTORS), dict) else {}
        for column in described:
            base = described_input(column)
            media.setdefault(base, "image" if isinstance(row.get(base), dict) else "text")
        flat.append({k: _analysable(v) for k, v in row.items() if k != DESCRIPTORS} | described)
    frame = pd.DataFrame(flat)
    return frame.drop(columns=[c for c in media if c in frame.columns]), media


def _analysable(value: Any) -> Any:
    """A logged value as a column can hold it: an integer past a float's range (JSON may hold 400 digits; pandas
    raises OverflowError on it) as its digits, a value no numeric bin takes and a category that still shows it."""
    if type(value) is int and finite_float(value) is None:
        return str(value)
    return value


def _embedding_regions(vectors: list[Any], min_rows: int, seed: int) -> Any:
    """k-means regions of the logged embeddings, as labels "region k" (None without enough embeddings)."""
    import numpy as np

    width = next((len(v) for v in vectors if isinstance(v, list) and v), 0)
    if not width:
        return None
    x = np.asarray([v if isinstance(v, list) and len(v) == width else [np.nan] * width for v in vectors], np.float64)
    ok = np.isfinite(x).all(axis=1)
    k = min(REGIONS, int(ok.sum()) // max(min_rows, 1))
    if k < 2:
        return None
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise MlopsError("regions of embeddings need scikit-learn: pip install 'mlops[train]'") from None
    labels = np.full(len(x), None, dtype=object)
    fitted = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x[ok])
    labels[ok] = [f"region {c}" for c in fitted]
    return labels


def _shown_media(inputs: dict[str, Any], media: dict[str, str]) -> dict[str, Any]:
    """A mistake's image (a data: URL, when the log kept its bytes) and text, for the page."""
    out: dict[str, Any] = {}
    for name, kind in media.items():
        value = inputs.get(name)
        if kind == "image" and isinstance(value, dict) and isinstance(value.get("b64"), str):
            out.setdefault("images", []).append(image_data_url(value["b64"]))
        elif kind == "text" and isinstance(value, str):
            out.setdefault("texts", []).append(value[:500])
    return out


def _confidence(j: Any) -> float:
    """The probability the model gave the label it answered; NaN when a logged probability is no finite number
    (nothing to rank by)."""
    probs = j.outputs.get("probabilities")
    if not isinstance(probs, list) or not probs:
        return math.nan
    numbers = [n for n in map(finite_float, probs) if n is not None]
    return max(numbers) if len(numbers) == len(probs) else math.nan


def _slices(frame: Any, wrong: Any, bins: int, min_rows: int, alpha: float, overall: float) -> list[dict[str, Any]]:
    import numpy as np
    import pandas as pd

    out = []
    for column in frame.columns:
        values = frame[column]
        numeric = pd.to_numeric(values, errors="coerce")
        groups: list[tuple[str, Any]] = []
        if numeric.notna().sum() >= max(1, 0.9 * values.notna().sum()) and numeric.nunique() > bins:
            edges = np.unique(np.quantile(numeric.dropna(), np.linspace(0, 1, bins + 1)))
            cut = pd.cut(numeric, edges, include_lowest=True, duplicates="drop")
            for interval in cut.cat.categories:
                groups.append((f"[{interval.left:.4g}, {interval.right:.4g}]", (cut == interval).to_numpy()))
            if numeric.isna().any():
                groups.append(("missing", numeric.isna().to_numpy()))
        else:
            text = values.astype(object).where(values.notna(), None)
            counts = text.value_counts(dropna=False)
            for value in counts.index[:20]:
                mask = text.isna().to_numpy() if value is None else (text == value).to_numpy()
                groups.append(("missing" if value is None else str(value), mask))
        for label, mask in groups:
            rows = int(mask.sum())
            if rows < min_rows:
                continue
            errors = int(wrong[mask].sum())
            lo, hi = wilson(errors, rows, alpha)
            out.append({"column": str(column), "slice": label, "rows": rows, "errors": errors,
                        "error_rate": errors / rows, "ci": [lo, hi], "above_overall": lo > overall})
    return sorted(out, key=lambda s: (-s["error_rate"], -s["rows"]))


def _clusters(frame: Any, wrong: Any, min_rows: int, alpha: float, overall: float, seed: int) -> list[dict[str, Any]]:
    """Leaves of a depth-3 tree on the raw inputs (one-hot for text) that hold more errors than average."""
    import numpy as np
    import pandas as pd

    try:
        from sklearn.tree import DecisionTreeClassifier
    except ImportError:
        raise MlopsError("clusters of errors need scikit-learn: pip install 'mlops[train]'") from None

    numeric_cols = [c for c in frame.columns if pd.to_numeric(frame[c], errors="coerce").notna().sum()
                    >= max(1, 0.9 * frame[c].notna().sum())]
    x = pd.DataFrame({c: pd.to_numeric(frame[c], errors="coerce") for c in numeric_cols})
    text_cols = [c for c in frame.columns if c not in numeric_cols]
    if text_cols:
        dummies = pd.get_dummies(frame[text_cols].astype(object).where(frame[text_cols].notna(), "missing"),
                                 prefix_sep="=").astype(float)
        x = pd.concat([x, dummies], axis=1)
    if x.shape[1] == 0:
        return []
    x = x.fillna(x.median(numeric_only=True)).fillna(0.0)
    tree = DecisionTreeClassifier(max_depth=3, min_samples_leaf=max(min_rows, len(x) // 100), random_state=seed)
    tree.fit(x.to_numpy(np.float64), wrong.astype(int))
    leaves = tree.apply(x.to_numpy(np.float64))
    out = []
    for leaf in np.unique(leaves):
        mask = leaves == leaf
        rows, errors = int(mask.sum()), int(wrong[mask].sum())
        if errors / rows <= overall:
            continue
        lo, hi = wilson(errors, rows, alpha)
        out.append({"rule": _rule(tree, int(leaf), list(x.columns), text_cols), "rows": rows, "errors": errors,
                    "error_rate": errors / rows, "ci": [lo, hi]})
    return sorted(out, key=lambda c: (-c["error_rate"], -c["rows"]))


def _rule(tree: Any, leaf: int, names: list[str], text_cols: list[str]) -> str:
    """The path from the root to `leaf` as feature ranges: `city = a and 59.96 < income <= 79.75`."""
    t = tree.tree_
    parent: dict[int, tuple[int, bool]] = {}
    for node in range(t.node_count):
        if t.children_left[node] != -1:
            parent[int(t.children_left[node])] = (node, True)
            parent[int(t.children_right[node])] = (node, False)
    ranges: dict[str, list[float]] = {}  # numeric column -> [lower (exclusive), upper (inclusive)]
    equal: dict[str, str] = {}
    unequal: dict[str, list[str]] = {}
    order: list[str] = []
    node = leaf
    while node in parent:
        up, left = parent[node]
        name, threshold = names[t.feature[up]], float(t.threshold[up])
        column, _, value = name.partition("=")
        if value and column in text_cols:  # a one-hot column (threshold 0.5): is, or is not, that value
            (unequal.setdefault(column, []).append(value) if left else equal.__setitem__(column, value))
        else:
            column = name
            bounds = ranges.setdefault(column, [-math.inf, math.inf])
            if left:
                bounds[1] = min(bounds[1], threshold)
            else:
                bounds[0] = max(bounds[0], threshold)
        if column not in order:
            order.append(column)
        node = up
    parts = []
    for column in reversed(order):  # root first
        if column in equal:
            parts.append(f"{column} = {equal[column]}")
        elif column in unequal:
            parts.append(f"{column} not in {{{', '.join(sorted(unequal[column]))}}}" if len(unequal[column]) > 1
                         else f"{column} != {unequal[column][0]}")
        else:
            lo, hi = ranges[column]
            parts.append(f"{lo:.4g} < {column} <= {hi:.4g}" if math.isfinite(lo) and math.isfinite(hi)
                         else f"{column} > {lo:.4g}" if math.isfinite(lo) else f"{column} <= {hi:.4g}")
    return " and ".join(parts) or "all rows"


# --- the report ------------------------------------------------------------------------------------------------


def write_report(analysis: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """errors.json and errors.html under `out_dir`, each written whole or not at all."""
    paths = {"json": out_dir / "errors.json", "html": out_dir / "errors.html"}
    write_text(paths["json"], json.dumps(analysis, indent=2, default=str, allow_nan=False) + "\n")
    write_page(paths["html"], "errors.html.j2", **page_context(analysis))
    return {k: str(v) for k, v in paths.items()}


def _scalars(inputs: dict[str, Any]) -> dict[str, Any]:
    """A logged row without its image objects, texts and descriptors (shown apart, or too long for a cell)."""
    return {k: v for k, v in inputs.items() if k != DESCRIPTORS and not isinstance(v, dict)}


def render_html(a: dict[str, Any]) -> str:
    """The analysis as one self-contained HTML document."""
    return render_page("errors.html.j2", **page_context(a))


def page_context(a: dict[str, Any]) -> dict[str, Any]:
    """What `errors.html.j2` shows, as plain data."""
    key = "abs_error" if a["task"] == "regression" else "confidence"

    def rates(r: dict[str, Any]) -> dict[str, Any]:
        return {"rows": r["rows"], "errors": r["errors"], "error_rate": r["error_rate"], "ci": r["ci"],
                "bar_px": round(100 * r["error_rate"])}

    return {
        "model": str(a["model"]), "log": str(a["log"]), "overall": a["overall"],
        "confidence": round(100 * (1 - a["alpha"])),
        "tolerance": a["tolerance"] if a["task"] == "regression" else None,
        "min_rows": a["min_rows"], "all_slices": a["all_slices"],
        "slices": [rates(s) | {"column": str(s["column"]), "slice": str(s["slice"])} for s in a["slices"]],
        "clusters": [rates(c) | {"rule": str(c["rule"])} for c in a["clusters"]],
        "score": key,
        "mistakes": [{"id": str(m["id"]), "predicted": str(m["predicted"]), "truth": str(m["truth"]),
                      "score": m[key], "images": [u for u in m.get("images", []) if u],
                      "texts": m.get("texts", []), "region": m.get("region"),
                      "inputs": json.dumps(_scalars(m["inputs"]), default=str)[:300]}
                     for m in a["confident_mistakes"]],
    }
