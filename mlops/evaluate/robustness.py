"""Stress checks of the exported ONNX model: what it does with inputs that training never showed it.

Every check runs the bundle exactly as serving would (`model.onnx` over raw named columns), never the
torch module, so a model that passes here cannot crash or answer NaN in production on the same input.
A check fails when onnxruntime raises (`crashed`) or an output is NaN/inf (`finite` False); the
`value` of a check is a measurement for people and gates, not a pass/fail criterion:

- missing, out_of_range, unseen_category: fraction of rows whose prediction changed (class index for
  classification; beyond a 1e-6 relative tolerance for regression);
- wrong_type: None (the serving layer must reject the value before the model sees it);
- out_of_distribution: classification: mean max-probability over the rows, i.e. how confident the
  model stays far from its data (near 1.0 is over-confident extrapolation); regression: the largest
  |prediction - mean in-distribution prediction| in units of the in-distribution predictions' std;
- perturbation: classification: prediction flip rate over rows x repeats; regression: mean
  |relative change| of the prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.data.preprocess import category_strings, numeric_column
from mlops.evaluate.scored import bundle_feeds, onnx_outputs
from mlops.package.bundle import read_bundle
from mlops.package.predictor import Predictor, RequestError

if TYPE_CHECKING:
    import pandas as pd

    from mlops.recipe.schema import RobustnessConfig

# how far outside the training range an out-of-range value lies, in training ranges
OUT_OF_RANGE_SPANS = 100.0
FP32_MAX = float(np.finfo(np.float32).max)
UNSEEN = "__mlops_unseen__"


def robustness_checks(bundle_dir: Path, test: pd.DataFrame, train: pd.DataFrame, cfg: RobustnessConfig,
                      seed: int) -> list[dict[str, Any]]:
    """All stress checks of a bundle, in a fixed order; deterministic given `seed`."""
    import onnxruntime as ort


    rng = np.random.default_rng(seed)
    meta = read_bundle(bundle_dir)
    task = meta.task
    opts = ort.SessionOptions()
    # a crash here is a finding reported in the check's detail; onnxruntime's own error log would only
    # repeat it in red on the console of a run that is working as intended
    opts.log_severity_level = 4
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    # an empty test split would make every check vacuous: stress the training rows instead
    source = test if len(test) else train
    take = np.sort(rng.choice(len(source), size=cfg.rows, replace=False)) if len(source) > cfg.rows \
        else np.arange(len(source))
    base = bundle_feeds(bundle_dir, source.iloc[take])
    # the scalar columns are stressed here; image and text inputs have checks of their own kind
    scalars = [s for s in meta.inputs if s.scalar]
    stats = _train_stats(scalars, train)
    base_out, base_err = _run(session, base, task)

    numeric = [s.name for s in scalars if s.kind == "numeric"]
    categorical = [s.name for s in scalars if s.kind == "categorical"]
    checks: list[dict[str, Any]] = []

    for spec in scalars:
        feeds = _with(base, spec.name, _missing_like(base[spec.name]))
        checks.append(_compare("missing", spec.name, session, feeds, task, base_out, base_err,
                               f"'{spec.name}' sent as missing"))

    if len(scalars) == len(meta.inputs):  # a control row of raw values exists only for scalar inputs
        checks += _wrong_type_checks(bundle_dir, base)

    for name in numeric:
        lo, hi = _far_outside(stats[name])
        n = len(base[name])
        values = np.concatenate([np.full((n, 1), lo, np.float32), np.full((n, 1), hi, np.float32)])
        feeds = _with(_tile(base, 2), name, values)
        checks.append(_compare("out_of_range", name, session, feeds, task, _tile_out(base_out, 2), base_err,
                               f"'{name}' set to {lo:.6g} and {hi:.6g} (training range "
                               f"[{stats[name]['min']:.6g}, {stats[name]['max']:.6g}])"))

    for name in categorical:
        token = _unseen_token(stats[name]["levels"])
        feeds = _with(base, name, np.full_like(base[name], token))
        checks.append(_compare("unseen_category", name, session, feeds, task, base_out, base_err,
                               f"'{name}' set to the unseen category {token!r}"))

    checks.append(_out_of_distribution(session, base, task, base_out, numeric, categorical, stats, rng))
    checks.append(_perturbation(session, base, task, base_out, base_err, numeric, stats, cfg, rng))
    return checks


def robustness_summary(checks: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics gates read: the perturbation flip rate, and how many checks failed."""
    out: dict[str, float] = {"robustness/failed_checks": float(sum(not c["passed"] for c in checks))}
    flip = next((c["value"] for c in checks if c["kind"] == "perturbation"), None)
    if flip is not None:
        out["robustness/flip_rate"] = float(flip)
    return out


# --- checks -----------------------------------------------------------------------------------------


def _compare(kind: str, column: str | None, session: Any, feeds: dict[str, np.ndarray], task: str,
             base_out: np.ndarray | None, base_err: str | None, what: str) -> dict[str, Any]:
    out, err = _run(session, feeds, task)
    if err is not None:
        return _check(kind, column, crashed=True, finite=False, value=None, detail=f"{what}: crashed: {err}")
    finite = _finite(out)
    value = _changed(base_out, out, task) if finite and base_out is not None else None
    detail = f"{what}: " + ("outputs finite" if finite else "non-finite outputs")
    if value is not None:
        detail += f", {value:.1%} of predictions changed"
    elif base_err is not None:
        detail += f" (the unmodified rows crashed: {base_err})"
    return _check(kind, column, crashed=False, finite=finite, value=value, detail=detail)


def _wrong_type_checks(bundle_dir: Path, base: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One wrong_type check per column, through the serving layer itself (its own session, let go after)."""

    predictor = Predictor(bundle_dir)
    return [_wrong_type(predictor, base, spec.name, spec.dtype) for spec in predictor.meta.inputs]


def _wrong_type(predictor: Any, base: dict[str, np.ndarray], column: str, dtype: str) -> dict[str, Any]:
    """A value of the wrong JSON type must be refused by the serving layer with a 4xx naming the column."""

    row = {name: _json_value(values[0, 0]) for name, values in base.items()}
    try:
        predictor.feeds_from_rows([row])
    except Exception as exc:  # without a valid control row the check would prove nothing
        return _check("wrong_type", column, crashed=not isinstance(exc, RequestError), finite=True,
                      value=None, detail=f"a valid row was refused, so the check cannot run: {exc}")
    bad_values: list[Any] = ["not a number", [1.0]] if dtype != "string" else [{"unexpected": 1}, True]
    for bad in bad_values:
        what = f"'{column}' sent as {type(bad).__name__} {bad!r}"
        try:
            feeds = predictor.feeds_from_rows([row | {column: bad}])
        except RequestError as exc:
            if column not in exc.field:
                return _check("wrong_type", column, crashed=False, finite=True, value=None,
                              detail=f"{what}: rejected, but for another field: {exc}")
            continue
        except Exception as exc:  # any other exception is a 500 at serve time
            return _check("wrong_type", column, crashed=True, finite=False, value=None,
                          detail=f"{what}: {type(exc).__name__} instead of a request error: {exc}")
        # accepted silently: the model answers something for a value it cannot mean; say what it answered
        out, err = _run(predictor.session, feeds, predictor.meta.task)
        return _check("wrong_type", column, crashed=err is not None, finite=err is None and _finite(out),
                      value=None, passed=False, detail=f"{what}: accepted silently instead of rejected"
                      + (f", then the model crashed: {err}" if err else ""))
    return _check("wrong_type", column, crashed=False, finite=True, value=None,
                  detail=f"{', '.join(type(b).__name__ for b in bad_values)} in '{column}' rejected as bad "
                  "requests")


def _out_of_distribution(session: Any, base: dict[str, np.ndarray], task: str, base_out: np.ndarray | None,
                         numeric: list[str], categorical: list[str], stats: dict[str, dict[str, Any]],
                         rng: np.random.Generator) -> dict[str, Any]:
    """Whole rows unlike any training row: every numeric column outside its range (each on a random side,
    1 to 100 ranges out), every categorical column an unseen category."""
    n = len(next(iter(base.values()))) if base else 0
    feeds = dict(base)
    for name in numeric:
        s = stats[name]
        span = _span(s)
        distance = rng.uniform(1.0, OUT_OF_RANGE_SPANS, n) * span
        values = np.where(rng.random(n) < 0.5, s["min"] - distance, s["max"] + distance)
        feeds[name] = np.clip(values, -FP32_MAX, FP32_MAX).astype(np.float32)[:, None]
    for name in categorical:
        feeds[name] = np.full_like(base[name], _unseen_token(stats[name]["levels"]))
    out, err = _run(session, feeds, task)
    what = "rows with every numeric column outside its training range and every category unseen"
    if err is not None:
        return _check("out_of_distribution", None, crashed=True, finite=False, value=None,
                      detail=f"{what}: crashed: {err}")
    finite = _finite(out)
    value = None
    if finite and task != "regression":
        value = float(out.max(axis=1).mean())
        what += f": mean max-probability {value:.3f}"
    elif finite and base_out is not None and _finite(base_out):
        scale = float(base_out.std()) or 1.0
        value = float(np.abs(out - base_out.mean()).max() / scale)
        what += f": most extreme prediction {value:.3g} in-distribution stds from their mean"
    return _check("out_of_distribution", None, crashed=False, finite=finite, value=value,
                  detail=what + ("" if finite else ": non-finite outputs"))


def _perturbation(session: Any, base: dict[str, np.ndarray], task: str, base_out: np.ndarray | None,
                  base_err: str | None, numeric: list[str], stats: dict[str, dict[str, Any]],
                  cfg: RobustnessConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Gradient-free adversarial-style noise: each numeric value moved by +-epsilon training stds (random
    sign, the worst-case direction of an L-inf ball's corners), `repeats` draws per row."""
    if base_err is not None or base_out is None:
        return _check("perturbation", None, crashed=True, finite=False, value=None,
                      detail=f"the unmodified rows crashed: {base_err}")
    if not _finite(base_out):
        return _check("perturbation", None, crashed=False, finite=False, value=None,
                      detail="the unmodified rows already give non-finite outputs")
    movable = [c for c in numeric if np.isfinite(stats[c]["std"]) and stats[c]["std"] > 0]
    if not movable:
        # nothing can move, so nothing can flip: 0.0 keeps a flip-rate gate meaningful for such models
        return _check("perturbation", None, crashed=False, finite=True, value=0.0,
                      detail="no numeric column with spread to perturb")
    feeds = _tile(base, cfg.repeats)
    rows = len(next(iter(feeds.values())))
    for name in movable:
        step = cfg.epsilon * stats[name]["std"] * rng.choice(np.array([-1.0, 1.0]), size=(rows, 1))
        # missing values stay missing: NaN + step is NaN, which is what the graph imputes
        feeds[name] = np.clip(feeds[name].astype(np.float64) + step, -FP32_MAX, FP32_MAX).astype(np.float32)
    out, err = _run(session, feeds, task)
    what = f"{len(movable)} numeric column(s) moved by +-{cfg.epsilon:g} training std, {cfg.repeats} draw(s)"
    if err is not None:
        return _check("perturbation", None, crashed=True, finite=False, value=None,
                      detail=f"{what}: crashed: {err}")
    if not _finite(out):
        return _check("perturbation", None, crashed=False, finite=False, value=None,
                      detail=f"{what}: non-finite outputs")
    ref = _tile_out(base_out, cfg.repeats)
    if task == "regression":
        # a floor on the denominator keeps predictions near zero from exploding the mean
        floor = max(1e-3 * float(np.abs(ref).mean()), 1e-12)
        value = float((np.abs(out - ref) / np.maximum(np.abs(ref), floor)).mean())
        what += f": mean relative change {value:.3g}"
    else:
        value = float((out.argmax(axis=1) != ref.argmax(axis=1)).mean())
        what += f": flip rate {value:.1%}"
    return _check("perturbation", None, crashed=False, finite=True, value=value, detail=what)


# --- helpers ----------------------------------------------------------------------------------------


def _check(kind: str, column: str | None, *, crashed: bool, finite: bool, value: float | None, detail: str,
           passed: bool | None = None) -> dict[str, Any]:
    ok = (not crashed and finite) if passed is None else passed
    return {"name": f"{kind}/{column}" if column else kind, "kind": kind, "column": column,
            "passed": bool(ok), "crashed": bool(crashed), "finite": bool(finite),
            "value": None if value is None else float(value), "detail": detail}


def _run(session: Any, feeds: dict[str, np.ndarray], task: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return onnx_outputs(session, feeds, task), None
    except Exception as exc:  # any onnxruntime failure is the finding, not a bug here
        return None, f"{type(exc).__name__}: {exc}"


def _finite(out: np.ndarray | None) -> bool:
    return out is not None and bool(np.isfinite(out).all())


def _changed(base: np.ndarray, out: np.ndarray, task: str) -> float:
    if len(base) == 0:
        return 0.0
    if task == "regression":
        return float((~np.isclose(out, base, rtol=1e-6, atol=1e-6)).mean())
    return float((out.argmax(axis=1) != base.argmax(axis=1)).mean())


def _train_stats(inputs: list[Any], train: pd.DataFrame) -> dict[str, dict[str, Any]]:
    stats: dict[str, dict[str, Any]] = {}
    for spec in inputs:
        present = spec.name in train.columns
        if spec.dtype == "string":
            levels = set(category_strings(train[spec.name]).tolist()) if present else set()
            stats[spec.name] = {"levels": levels}
            continue
        x = numeric_column(train[spec.name]).astype(np.float64) if present else np.array([], np.float64)
        x = x[np.isfinite(x)]
        stats[spec.name] = {"min": float(x.min()) if len(x) else 0.0,
                            "max": float(x.max()) if len(x) else 0.0,
                            "std": float(x.std()) if len(x) else 0.0}
    return stats


def _span(s: dict[str, Any]) -> float:
    # a constant column has no range: fall back to its magnitude so "far outside" still means far
    return (s["max"] - s["min"]) or max(abs(s["max"]), 1.0)


def _far_outside(s: dict[str, Any]) -> tuple[float, float]:
    span = _span(s)
    lo = max(s["min"] - OUT_OF_RANGE_SPANS * span, -FP32_MAX)
    hi = min(s["max"] + OUT_OF_RANGE_SPANS * span, FP32_MAX)
    return float(lo), float(hi)


def _unseen_token(levels: set[str]) -> str:
    token = UNSEEN
    while token in levels:
        token += "_"
    return token


def _missing_like(values: np.ndarray) -> np.ndarray:
    return np.full_like(values, "") if values.dtype == object else np.full_like(values, np.nan)


def _with(feeds: dict[str, np.ndarray], column: str, values: np.ndarray) -> dict[str, np.ndarray]:
    return feeds | {column: values}


def _tile(feeds: dict[str, np.ndarray], times: int) -> dict[str, np.ndarray]:
    return {k: np.concatenate([v] * times) for k, v in feeds.items()}


def _tile_out(out: np.ndarray | None, times: int) -> np.ndarray | None:
    return None if out is None else np.concatenate([out] * times)


def _json_value(v: Any) -> Any:
    """One feed value as a JSON request carries it: null for missing, Python str/float otherwise."""
    if isinstance(v, str):
        return v or None
    f = float(v)
    return None if f != f else f
