"""Expectations declared in the recipe (`evaluate.expectations`), checked on the loaded rows before training.

A violation names the column, the rule and the rows at fault (their 0-based positions in the data file,
first ones shown), so the user can find them without re-running anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlops.core.errors import ExpectationError
from mlops.recipe.schema import ColumnExpectation, ExpectationsConfig

SHOWN_ROWS = 10


def violations(frame: pd.DataFrame, cfg: ExpectationsConfig) -> list[dict[str, Any]]:
    """Every broken expectation: {column, rule, message, rows (all offending row positions)}."""
    found: list[dict[str, Any]] = []
    n = len(frame)
    if cfg.min_rows is not None and n < cfg.min_rows:
        found.append({"column": None, "rule": "min_rows", "message": f"{n} rows, expected at least {cfg.min_rows}",
                      "rows": []})
    if cfg.max_rows is not None and n > cfg.max_rows:
        found.append({"column": None, "rule": "max_rows", "message": f"{n} rows, expected at most {cfg.max_rows}",
                      "rows": []})
    for column, rule in cfg.columns.items():
        if column not in frame.columns:
            found.append({"column": column, "rule": "exists", "message": "column is not in the data", "rows": []})
            continue
        found += _column_violations(column, frame[column], rule)
    return found


def _column_violations(column: str, values: pd.Series, rule: ColumnExpectation) -> list[dict[str, Any]]:
    found = []
    missing = values.isna().to_numpy()
    if rule.max_missing is not None and len(values) and missing.mean() > rule.max_missing:
        found.append({"column": column, "rule": "max_missing", "rows": np.flatnonzero(missing).tolist(),
                      "message": f"{missing.mean():.1%} missing, expected at most {rule.max_missing:.1%}"})
    present = ~missing
    if rule.min is not None or rule.max is not None:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        not_numeric = present & np.isnan(numbers)
        if not_numeric.any():
            found.append({"column": column, "rule": "numeric", "rows": np.flatnonzero(not_numeric).tolist(),
                          "message": "values that are not numbers, where a range is expected"})
        for bound, op, name in ((rule.min, np.less, "min"), (rule.max, np.greater, "max")):
            if bound is None:
                continue
            with np.errstate(invalid="ignore"):
                bad = present & ~np.isnan(numbers) & op(numbers, bound)
            if bad.any():
                worst = numbers[bad].min() if name == "min" else numbers[bad].max()
                found.append({"column": column, "rule": name, "rows": np.flatnonzero(bad).tolist(),
                              "message": f"values {'below' if name == 'min' else 'above'} {bound:g} "
                                         f"(worst {worst:g})"})
    if rule.allowed is not None:
        allowed = {_norm(v) for v in rule.allowed}
        bad = present & ~values.map(lambda v: _norm(v) in allowed).to_numpy(dtype=bool)
        if bad.any():
            unexpected = sorted({str(v) for v in values[bad].tolist()})[:5]
            found.append({"column": column, "rule": "allowed", "rows": np.flatnonzero(bad).tolist(),
                          "message": f"values outside {sorted(map(str, rule.allowed))}: {', '.join(unexpected)}"})
    return found


def _norm(v: Any) -> Any:
    """1, 1.0 and "1" are the same category: the data file decides the type, the YAML another."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def check_expectations(frame: pd.DataFrame, cfg: ExpectationsConfig, source: str) -> dict[str, Any]:
    """Raise ExpectationError listing every violation; return a summary of what was checked otherwise."""
    found = violations(frame, cfg)
    if found:
        lines = [f"data {source} breaks {len(found)} expectation{'s' if len(found) != 1 else ''} "
                 "(evaluate.expectations); the run stopped before training:"]
        for v in found:
            where = f"column '{v['column']}'" if v["column"] else "table"
            rows = v["rows"]
            shown = ", ".join(map(str, rows[:SHOWN_ROWS])) + (f", ... ({len(rows)} rows)" if len(rows) > SHOWN_ROWS else "")
            lines.append(f"  {where}: {v['rule']}: {v['message']}" + (f"; rows (0-based) {shown}" if rows else ""))
        raise ExpectationError("\n".join(lines))
    return {"rows": len(frame), "checked": len(cfg.columns) + (cfg.min_rows is not None) + (cfg.max_rows is not None)}
