"""A generated prediction log with every shape of row the monitor meets, and the comparison of two window reads:
the database's windows (`read_windows`, fields extracted in SQL) against the Python path (every row's JSON
parsed, windows cut in Python). Shared by the SQLite unit test and the PostgreSQL integration test."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mlops.core.predlog import feedback_row
from mlops.core.predlog_store import open_log
from mlops.monitor.logstream import Rows, Window

COLUMNS = {"age": "numeric", "income": "numeric", "city": "categorical", "plan": "categorical"}
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _odd(i: int) -> Any:
    """Now and then a value of another JSON type: what a type error looks like in the log."""
    return ["forty", True, [1, 2], {"a": 1}, 3, 2.5, "", None][i % 8]


def generated_rows(n: int, seed: int = 0, task: str = "binary") -> list[tuple[Any, ...]]:
    """`n` prediction rows of model "toy" (and some of other models, versions and variants), with missing
    values, type errors, unknown columns, a non-object document, late writes and logged embeddings."""
    rng = np.random.default_rng(seed)
    rows = []
    ts = T0
    for i in range(n):
        ts += float(rng.exponential(7.0))
        at = ts - 400.0 if i % 37 == 5 else ts  # a late write: older than the rows before it
        inputs: dict[str, Any] = {"age": float(np.round(rng.normal(40, 10), 6)), "income": int(rng.integers(0, 99)),
                                  "city": str(rng.choice(["a", "b", "c", "Zürich"])), "plan": "basic"}
        if i % 11 == 3:
            inputs["age"] = _odd(i // 11)
        if i % 13 == 4:
            inputs["city"] = _odd(i // 13 + 1)
        if i % 17 == 6:
            del inputs["plan"]
        if i % 19 == 7:
            inputs["extra"] = 1
        if i % 23 == 8:
            inputs["other"] = "x"
        # now and then a document that is not an object at all (an array, a bare string)
        text = json.dumps(inputs) if i % 97 != 50 else ("[1, 2]" if i % 2 else '"just text"')
        p = float(rng.random())
        outputs: dict[str, Any]
        if task == "regression":
            outputs = {"prediction": [[p]] if i % 5 == 0 else p}
        else:
            outputs = {"label": "yes" if p > 0.5 else ("no" if i % 29 else 1), "probabilities": [1 - p, p]}
        if i % 31 == 9:
            outputs["embedding"] = [p, 1 - p, 0.5]
        model, variant, version = "toy", ("champion", "challenger")[i % 2], ("1", "2")[i % 3 == 0]
        if i % 41 == 10:
            model = "other"
        if i % 43 == 11:
            variant = "shadow"
        rows.append((f"r{i}", at, model, version, variant, text, json.dumps(outputs), float(rng.random() * 5)))
    return rows


def generated_feedback(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Feedback for some ids, twice for a few (the latest wins), and for an unknown id."""
    out = [feedback_row({"id": r[0], "label": ("yes", "no")[k % 2]}) for k, r in enumerate(rows[::3])]
    out += [feedback_row({"id": r[0], "value": 1.5}) for r in rows[1::7]]
    out += [feedback_row({"id": r[0], "label": "no"}) for r in rows[::9]]
    return [*out, feedback_row({"id": "nobody", "label": "no"})]


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    return a.shape == b.shape and all(_equal(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True))


def _equal(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return bool(x == y) and type(x) is type(y)


def _present(columns: dict[str, np.ndarray], empty: Any) -> dict[str, np.ndarray]:
    """Row-aligned problem columns that hold something: the Python path keeps a column its chunk saw even where
    the window's slice of it is empty."""
    return {k: v for k, v in columns.items() if any(x is not empty for x in v.tolist())}


def _embedding(rows: Rows) -> np.ndarray | None:
    """The logged embeddings; none when every row's is missing (NaN): the Python path pads a window whose chunk
    had some, where the window itself has none."""
    e = rows.embedding
    return None if e is None or np.isnan(e).all() else e


def rows_differ(a: Rows, b: Rows) -> list[str]:
    """Which of the two reads' columns differ (empty: the same rows, values and problems)."""
    out = [name for name in ("rowid", "ids", "ts", "latency_ms", "versions", "label", "proba", "prediction",
                             "truth_label", "truth_value")
           if not _same(getattr(a, name), getattr(b, name))]
    if not _same(_embedding(a), _embedding(b)):
        out.append("embedding")
    for attr in ("numeric", "categorical"):
        x, y = getattr(a, attr), getattr(b, attr)
        if x.keys() != y.keys():
            out.append(attr)
        out += [f"{attr}.{k}" for k in x if k in y and not _same(x[k], y[k])]
    for attr, empty in (("bad_values", None), ("unknown", False)):
        x, y = _present(getattr(a, attr), empty), _present(getattr(b, attr), empty)
        if x.keys() != y.keys() or any(not _same(x[k], y[k]) for k in x):
            out.append(attr)
    return out


def windows_differ(old: list[Window], new: list[Window]) -> list[str]:
    """What differs between two window reads: their number, bounds or rows."""
    if len(old) != len(new):
        return [f"{len(old)} windows against {len(new)}"]
    out = []
    for w, v in zip(old, new, strict=True):
        if (w.index, w.start_ts, w.end_ts, w.key) != (v.index, v.start_ts, v.end_ts, v.key):
            out.append(f"window {w.index}: bounds {(w.start_ts, w.end_ts, w.key)} against {(v.start_ts, v.end_ts, v.key)}")
        out += [f"window {w.index}: {d}" for d in rows_differ(w.rows, v.rows)]
    return out


def write_log(target: str | Path, rows: list[tuple[Any, ...]], feedback: list[tuple[Any, ...]]) -> None:
    """`rows` and `feedback` into the log at `target` (a SQLite path or a postgresql:// URL), through its writer."""
    log = open_log(target)
    try:
        log.submit("predictions", rows).result(timeout=60)
        log.submit("feedback", feedback).result(timeout=60)
    finally:
        log.close()
