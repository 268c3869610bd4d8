"""Every metric the evaluation computes, by family, with the direction that counts as better.

Light on purpose: `mlops validate` reads it to refuse a gate on a metric that is never computed.
"""

from __future__ import annotations

from typing import Literal

Direction = Literal["higher", "lower"]

# computed on val/ and test/ (test/ also per slice)
BINARY: dict[str, Direction] = {
    "accuracy": "higher", "precision": "higher", "recall": "higher", "f1": "higher",
    "precision_macro": "higher", "recall_macro": "higher", "f1_macro": "higher",
    "precision_weighted": "higher", "recall_weighted": "higher", "f1_weighted": "higher",
    "auroc": "higher", "pr_auc": "higher", "log_loss": "lower", "calibration_error": "lower",
}
MULTICLASS: dict[str, Direction] = {k: v for k, v in BINARY.items() if k not in ("precision", "recall", "f1")}
REGRESSION: dict[str, Direction] = {"mse": "lower", "rmse": "lower", "mae": "lower", "r2": "higher", "mape": "lower"}

FAIRNESS: dict[str, Direction] = {
    "demographic_parity_diff": "lower", "demographic_parity_ratio": "higher",
    "equal_opportunity_diff": "lower", "equalized_odds_diff": "lower",
}
ROBUSTNESS: dict[str, Direction] = {"flip_rate": "lower", "failed_checks": "lower"}
PERF: dict[str, Direction] = {
    "latency_p50_ms": "lower", "latency_p95_ms": "lower", "latency_p99_ms": "lower",
    "throughput_rps": "higher", "peak_memory_mb": "lower", "model_size_mb": "lower",
}
# the load test of the served model (evaluate.load_test): the whole server under concurrent requests
LOAD: dict[str, Direction] = {
    "rps": "higher", "p50_ms": "lower", "p95_ms": "lower", "p99_ms": "lower", "error_rate": "lower",
    "peak_memory_mb": "lower",
}
SPLITS = ("val", "test")
# permutation importance of each raw input column (evaluate.importance): a drop of the score, smaller is safer
IMPORTANCE_PREFIX = "importance/"


def importance_metrics(columns: list[str] | None) -> dict[str, Direction]:
    """`importance/<column>` for each known input column; with the columns unknown before the data is read,
    `mlops validate` accepts any `importance/<name>` (`is_importance_metric`) and the gate names a wrong one."""
    return {f"{IMPORTANCE_PREFIX}{c}": "lower" for c in columns or []}


def is_importance_metric(name: str) -> bool:
    return name.startswith(IMPORTANCE_PREFIX) and len(name) > len(IMPORTANCE_PREFIX)


def task_metrics(task: str) -> dict[str, Direction]:
    """Model-quality metrics for a task; 'auto' (task not known yet) gets every family."""
    if task == "regression":
        return REGRESSION
    if task == "multiclass":
        return MULTICLASS
    if task == "binary":
        return BINARY
    return BINARY | REGRESSION


def available(task: str, custom: dict[str, Direction], fairness: bool, robustness: bool,
              performance: bool) -> dict[str, Direction]:
    """Every gateable metric name (`family/name`) for a recipe's evaluate settings."""
    quality = task_metrics(task) | custom
    out = {f"{split}/{name}": d for split in SPLITS for name, d in quality.items()}
    if fairness:
        out |= {f"fairness/{name}": d for name, d in FAIRNESS.items()}
    if robustness:
        out |= {f"robustness/{name}": d for name, d in ROBUSTNESS.items()}
    if performance:
        out |= {f"perf/{name}": d for name, d in PERF.items()}
        out |= {f"perf/torch/{name}": d for name, d in PERF.items() if name != "model_size_mb"}
    return out
