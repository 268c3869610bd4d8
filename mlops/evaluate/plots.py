"""PNG plots logged with each run and embedded in the evaluation report: confusion matrix or residuals,
ROC and calibration curves, and the serving-latency histogram."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mlops.evaluate.scored import Scored


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_png(y: np.ndarray, pred: np.ndarray, labels: list[str], path: Path) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4 + 0.3 * len(labels), 4 + 0.3 * len(labels)))
    ConfusionMatrixDisplay.from_predictions(y, pred, labels=list(range(len(labels))), display_labels=labels, ax=ax,
                                            colorbar=False)
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def residual_png(y: np.ndarray, pred: np.ndarray, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(pred, y - pred, s=8, alpha=0.6)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual - predicted")
    ax.set_title("test residuals")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _class_names(scored: Scored) -> list[str]:
    n = scored.out.shape[1]
    return list(scored.labels) if scored.labels and len(scored.labels) == n else [str(k) for k in range(n)]


def _require_classification(scored: Scored, what: str) -> None:
    if not scored.classification or scored.out.ndim != 2:
        raise ValueError(f"a {what} needs class probabilities; this is a {scored.task} model")


def roc_png(scored: Scored, path: Path) -> Path:
    """ROC curve of the positive class, or one-vs-rest curves per class (multiclass)."""
    from sklearn.metrics import RocCurveDisplay

    _require_classification(scored, "ROC curve")
    names = _class_names(scored)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    if scored.out.shape[1] == 2:
        curves = [(1, f"positive class ({names[1]})")]
    else:
        curves = [(k, f"{name} vs rest") for k, name in enumerate(names)]
    drawn = 0
    for k, name in curves:
        positive = scored.y == k
        if positive.all() or not positive.any():  # a curve needs both classes; skip rather than fail
            continue
        RocCurveDisplay.from_predictions(positive.astype(int), scored.out[:, k], name=name, ax=ax,
                                         plot_chance_level=drawn == 0)
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "undefined: the targets hold one class", ha="center", va="center")
    ax.set_title("test ROC" + (" (one-vs-rest)" if scored.out.shape[1] > 2 else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def calibration_png(scored: Scored, path: Path, n_bins: int = 10) -> Path:
    """Reliability diagram: positive-class probability (binary) or top-label confidence vs accuracy."""
    from sklearn.calibration import CalibrationDisplay

    _require_classification(scored, "calibration curve")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    if scored.out.shape[1] == 2:
        y_true, prob = (scored.y == 1).astype(int), scored.out[:, 1]
        name = f"positive class ({_class_names(scored)[1]})"
    else:
        # multiclass: how often the predicted class is right, against the probability given to it
        y_true, prob, name = (scored.pred == scored.y).astype(int), scored.out.max(axis=1), "top label"
    CalibrationDisplay.from_predictions(y_true, np.clip(prob, 0, 1), n_bins=n_bins, name=name, ax=ax)
    if scored.out.shape[1] > 2:
        ax.set_xlabel("top-label confidence")
        ax.set_ylabel("accuracy")
    ax.set_title("test calibration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latency_histogram_png(latencies_ms: list[float], path: Path, title: str) -> Path:
    values = np.asarray(latencies_ms, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no latencies to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=int(np.clip(np.sqrt(values.size), 10, 60)), color="#4c72b0", alpha=0.85)
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        v = float(np.percentile(values, q))
        ax.axvline(v, color="#c44e52", ls=style, lw=1.2, label=f"p{q} {v:.3g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def importance_png(importance: dict[str, Any], path: Path, top: int = 30) -> Path:
    """Permutation importance as horizontal bars, most important on top, with the repeats' confidence interval."""
    columns = importance["columns"][:top]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.28 * max(len(columns), 1)))
    names = [c["column"] for c in columns][::-1]
    means = np.array([c["mean"] for c in columns][::-1], dtype=np.float64)
    lo = np.array([c["ci"][0] for c in columns][::-1], dtype=np.float64)
    hi = np.array([c["ci"][1] for c in columns][::-1], dtype=np.float64)
    ax.barh(range(len(names)), means, xerr=np.vstack([means - lo, hi - means]), color="#4c72b0", ecolor="black",
            capsize=3)
    ax.set_yticks(range(len(names)), names)
    ax.axvline(0, color="grey", lw=1)
    level = float(importance.get("confidence", 0.95))
    ax.set_xlabel(f"drop of {importance.get('metric', 'score')} when shuffled ({level:.0%} CI over "
                  f"{importance.get('repeats')} repeats)")
    ax.set_title("permutation importance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_latency_png(series: list[dict[str, Any]], path: Path, title: str) -> Path:
    """A load test's latency percentiles second by second, with the requests answered each second beneath."""
    if not series:
        raise ValueError("no load-test seconds to plot")
    t = np.array([p["t_s"] for p in series], dtype=np.float64)
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(6, 4.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for q, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", ":")):
        values = np.array([np.nan if p[q] is None else p[q] for p in series], dtype=np.float64)
        ax.plot(t, values, ls=style, marker=".", label=q.removesuffix("_ms"))
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    bx.bar(t - 0.5, [p["requests"] - p["failures"] for p in series], width=0.9, color="#4c72b0", label="answered")
    bx.bar(t - 0.5, [p["failures"] for p in series], width=0.9, color="#c44e52", label="failed",
           bottom=[p["requests"] - p["failures"] for p in series])
    bx.set_xlabel("seconds into the measurement")
    bx.set_ylabel("requests / s")
    bx.set_ylim(0, 1.45 * max(max(p["requests"] for p in series), 1))  # room above the bars for the legend
    bx.legend(loc="upper right", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
