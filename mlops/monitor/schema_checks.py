"""Production inputs against the training data's schema: unseen categories, out-of-range values, type
errors, unknown columns (a row with any of them is a violating row), and missing-rate jumps per column."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from mlops.data.schema import DataSchema
from mlops.monitor.logstream import Rows
from mlops.recipe.monitor import SchemaChecksConfig


def category_counts(values: np.ndarray) -> Counter[str]:
    """Counts of the present categories of a window column (missing values left out)."""
    counts: Counter[str] = Counter(values.tolist())
    counts.pop(None, None)
    return counts


def check_schema(rows: Rows, schema: DataSchema, cfg: SchemaChecksConfig,
                 counts: dict[str, Counter[str]] | None = None) -> dict[str, Any]:
    """`counts`: the window's category counts when the caller has them already (drift needs them too)."""
    n = len(rows)
    violating = np.zeros(n, dtype=bool)
    problems: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []

    def add(column: str, kind: str, mask: np.ndarray, examples: list[Any]) -> None:
        k = int(mask.sum())
        if k:
            violating[:] |= mask
            problems.append({"column": column, "problem": kind, "rows": k, "rate": k / n,
                             "examples": examples[:cfg.examples]})

    for col in schema.columns:
        if col.kind not in ("numeric", "categorical"):  # images and texts: the Predictor checked them already
            continue
        bad = rows.bad_values.get(col.name)
        bad_mask = np.zeros(n, dtype=bool) if bad is None else np.fromiter((v is not None for v in bad), bool, n)
        if bad_mask.any():
            assert bad is not None
            add(col.name, "type_error", bad_mask, [_plain(v) for v in bad[bad_mask][:cfg.examples]])
        if col.kind == "categorical":
            values = rows.categorical[col.name]
            seen = counts[col.name] if counts is not None and col.name in counts else category_counts(values)
            known = set(col.categories or [])
            unseen = {c: k for c, k in seen.items() if c not in known}
            if unseen:
                mask = np.fromiter((v is not None and v not in known for v in values), bool, n) & ~bad_mask
                add(col.name, "new_category", mask, [c for c, _ in Counter(values[mask].tolist()).most_common()])
            present = np.fromiter((v is not None for v in values), bool, n) | bad_mask
        else:
            x = rows.numeric[col.name]
            if col.min is not None and col.max is not None:
                margin = cfg.range_margin * (col.max - col.min)
                lo, hi = col.min - margin, col.max + margin
                with np.errstate(invalid="ignore"):
                    mask = (x < lo) | (x > hi)
                add(col.name, "out_of_range", mask, [float(v) for v in x[mask][:cfg.examples]])
            present = ~np.isnan(x) | bad_mask
        rate = float(1 - present.mean()) if n else 0.0
        missing.append({"column": col.name, "rate": rate, "training_rate": col.missing_rate,
                        "increase": rate - col.missing_rate})
    for name, mask in sorted(rows.unknown.items()):
        add(name, "unknown_column", mask, [])
    worst = max(missing, key=lambda m: m["increase"], default=None)
    return {"rows": n, "violating_rows": int(violating.sum()), "violation_rate": float(violating.mean()) if n else 0.0,
            "problems": sorted(problems, key=lambda p: -p["rows"]),
            "missing": {"columns": [m for m in missing if m["increase"] > cfg.max_missing_increase],
                        "max_increase": worst["increase"] if worst else 0.0,
                        "worst_column": worst["column"] if worst else None}}


def _plain(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool) or v is None else repr(v)
