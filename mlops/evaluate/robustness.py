"""Stress checks of the exported ONNX model: what it does with inputs that training never showed it.

Every check runs the bundle exactly as serving would (`model.onnx` over raw named columns, images decoded and
texts tokenized by its Predictor), never the torch module, so a model that passes here cannot crash or answer
NaN in production on the same input. A check fails when the bundle raises anything but a request error
(`crashed`) or an output is NaN/inf (`finite` False); the `value` of a check is a measurement for people and
gates, not a pass/fail criterion.

Scalar columns:

- missing, out_of_range, unseen_category: fraction of rows whose prediction changed (class index for
  classification; beyond a 1e-6 relative tolerance for regression);
- wrong_type: None (the serving layer must reject the value before the model sees it);
- out_of_distribution: classification: mean max-probability over the rows, i.e. how confident the
  model stays far from its data (near 1.0 is over-confident extrapolation); regression: the largest
  |prediction - mean in-distribution prediction| in units of the in-distribution predictions' std;
- perturbation: classification: prediction flip rate over rows x repeats; regression: mean
  |relative change| of the prediction. Gates read it as `robustness/flip_rate`.

Image and text inputs (`RobustnessConfig.image`, `.text`): each perturbation, at each declared strength,
changes the RAW input of every image (or text) column of a sample of test rows at once: an image is decoded
with Pillow as sent, converted to the bundle's mode, changed and encoded again (PNG, or JPEG for `jpeg`); a
text is changed as a string. The bundle then scores the result as a request. One check per perturbation and
strength (`kind` the perturbation, e.g. `image_noise`; `name` `image_noise/0.1`), its `measures` compared with
the same rows unperturbed: `flip_rate` (predictions whose class changed; a row the bundle refuses after the
perturbation counts as flipped and wrong), `accuracy` and `accuracy_drop` (when the rows carry the target); a
regression model: `relative_change` (mean |relative change| of the answered rows). `value` is the flip rate
(relative change). Perturbations that go both ways (brightness, contrast, rotation, casing) count both.

Corrupt payloads (`corrupt_payloads`): a valid test row sent as a request with one image or text replaced by
something broken (truncated PNG, random bytes, other modes, 16-bit, over the limits; empty, blank or
over-length text, ...). Each must be answered or refused with a request error (4xx); the check's `outcome` is
answered, refused, crashed or non_finite, and the last two fail it.

Gradient attacks are `mlops.evaluate.adversarial`'s (they need the trained torch module); their checks share
the shape and metric scheme of the perturbations.

Metrics (`robustness_summary`): `robustness/failed_checks`, `robustness/flip_rate`; each measure of each
perturbation check as `robustness/<name>/<measure>` (`robustness/image_noise/0.1/flip_rate`, the strength as
`{:g}` writes it) and, at the perturbation's strongest declared strength (the largest; the lowest JPEG
quality), also as `robustness/<kind>/<measure>` (`robustness/image_noise/flip_rate`); the corrupt payloads'
counts as `robustness/corrupt_payload/<outcome>`. `RobustnessConfig.metric_names` lists them all.
"""

from __future__ import annotations

import base64
import io
import struct
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.core.errors import MlopsError
from mlops.data.media import image_bytes
from mlops.data.preprocess import category_strings, numeric_column
from mlops.evaluate.scored import bundle_feeds, encode_targets, onnx_outputs
from mlops.package.bundle import read_bundle
from mlops.package.predictor import Predictor, RequestError

if TYPE_CHECKING:
    import pandas as pd
    from PIL.Image import Image

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
    if len(scalars) < len(meta.inputs):
        checks += media_checks(bundle_dir, source, cfg, seed)
    return checks


def robustness_summary(checks: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics gates read: the scalar perturbation's flip rate, how many checks failed, every measure of
    each perturbation and attack (per strength, and at the strongest), the corrupt payloads by outcome."""
    out: dict[str, float] = {"robustness/failed_checks": float(sum(not c["passed"] for c in checks))}
    flip = next((c["value"] for c in checks if c["kind"] == "perturbation"), None)
    if flip is not None:
        out["robustness/flip_rate"] = float(flip)
    for c in checks:
        for measure, value in (c.get("measures") or {}).items():
            out[f"robustness/{c['name']}/{measure}"] = float(value)
            if c.get("strongest"):
                out[f"robustness/{c['perturbation']}/{measure}"] = float(value)
    payloads = [c["outcome"] for c in checks if c["kind"] == "corrupt_payload" and c.get("outcome")]
    if payloads:
        out |= {f"robustness/corrupt_payload/{o}": float(payloads.count(o)) for o in PAYLOAD_OUTCOMES}
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
        out, err = _run(predictor.session, predictor.graph_feeds(feeds), predictor.meta.task)
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


# --- image and text inputs --------------------------------------------------------------------------


PAYLOAD_OUTCOMES = ("answered", "refused", "crashed", "non_finite")
OCCLUSION_GREY = 128
TYPOS = ("swap", "drop", "double", "replace")
CONTROL_TRIES = 20  # test rows tried, in order, for one the bundle answers (the corrupt payloads' control row)


@dataclass
class Baseline:
    """A sample of test rows as the bundle takes them, with its answers: what perturbed rows are compared with.
    Rows the bundle refuses as they are (an unreadable test image) are left out and counted in `dropped`."""

    predictor: Predictor
    frame: pd.DataFrame  # the rows kept, as the data holds them
    scalars: dict[str, np.ndarray]  # each scalar column as the graph takes it, [N, 1]
    raw: dict[str, list[Any]]  # each image and text column's values as sent
    arrays: dict[str, np.ndarray]  # each image and text column as the graph takes it (pixels, token ids)
    out: np.ndarray  # the bundle's probabilities [N, C], or predictions [N]
    y: np.ndarray | None  # class indices of the target, when the rows carry it and the model classifies
    dropped: int

    @property
    def task(self) -> str:
        return self.predictor.meta.task

    def __len__(self) -> int:
        return len(self.frame)


def baseline_rows(predictor: Predictor, source: pd.DataFrame, rows: int, seed: int, salt: str) -> Baseline:
    """Up to `rows` rows of `source`, drawn by `seed` (and `salt`, so that each family of checks draws its own),
    scored as they are. Raises MlopsError when the bundle answers none of them."""
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    take = np.sort(rng.choice(len(source), size=rows, replace=False)) if len(source) > rows \
        else np.arange(len(source))
    frame = source.iloc[take]
    if len(frame) == 0:
        raise MlopsError("there are no test rows to score")
    media = [name for name, spec in predictor.columns.items() if not spec.scalar]
    raw = {name: frame[name].tolist() for name in media}
    decoded, refused, reason = _decode(predictor, raw, len(frame))
    if refused.all():
        raise MlopsError(f"the bundle refused every one of the {len(frame)} sampled test rows ({reason})")
    keep = ~refused
    frame = frame.iloc[np.flatnonzero(keep)]
    raw = {name: [v for v, k in zip(values, keep, strict=True) if k] for name, values in raw.items()}
    arrays = {name: np.concatenate([a for a in values if a is not None]) for name, values in decoded.items()}
    scalars = {name: _scalar_column(frame, name, spec.dtype, predictor.categories.trim)[:, None]
               for name, spec in predictor.columns.items() if spec.scalar}
    out = onnx_outputs(predictor.session, scalars | arrays, predictor.meta.task)
    y = None
    target = predictor.meta.data_schema.target
    if predictor.meta.task != "regression" and target in frame.columns:
        try:
            y = encode_targets(frame[target], predictor.meta.task, predictor.meta.labels)
        except MlopsError:  # a label the model never learnt: flips are still measured, accuracy is not
            y = None
    return Baseline(predictor, frame, scalars, raw, arrays, out, y, int(refused.sum()))


def score_rows(base: Baseline, replaced: dict[str, list[Any]], rows: np.ndarray | None = None,
               scalars: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's outputs for the baseline's rows `rows` (all of them by default; repeated for several
    variants of a row) with the raw values of some image/text columns `replaced` (one per row of `rows`) and
    some scalar columns replaced by graph arrays: (outputs, refused), NaN outputs where the bundle refused
    the row with a request error. Any other exception is the bundle's crash, and propagates."""
    rows = np.arange(len(base)) if rows is None else rows
    decoded, refused, _ = _decode(base.predictor, replaced, len(rows))
    keep = ~refused
    feeds = {name: values[rows[keep]] for name, values in base.scalars.items()}
    feeds |= {name: values[rows[keep]] for name, values in (scalars or {}).items()}
    feeds |= {name: values[rows[keep]] for name, values in base.arrays.items() if name not in replaced}
    if keep.any():
        feeds |= {name: np.concatenate([a for a in values if a is not None]) for name, values in decoded.items()}
        answered = onnx_outputs(base.predictor.session, feeds, base.task)
    else:
        answered = base.out[:0]
    out = np.full((len(rows), *answered.shape[1:]), np.nan)
    out[keep] = answered
    return out, refused


def measures(base: Baseline, rows: np.ndarray, out: np.ndarray, refused: np.ndarray) -> dict[str, float]:
    """How the outputs for the baseline's `rows` differ from its own answers: flip rate, accuracy and its drop
    (a refused row counts as flipped and wrong), or for regression the mean |relative change| of the answered
    rows."""
    ref = base.out[rows]
    if base.task == "regression":
        ok = ~refused
        if not ok.any():
            return {}
        floor = max(1e-3 * float(np.abs(ref).mean()), 1e-12)  # predictions near zero would explode the mean
        return {"relative_change": float((np.abs(out[ok] - ref[ok]) / np.maximum(np.abs(ref[ok]), floor)).mean())}
    pred = np.where(refused, -1, np.nan_to_num(out).argmax(axis=1))
    result = {"flip_rate": float((pred != ref.argmax(axis=1)).mean())}
    if base.y is not None:
        y = base.y[rows]
        before = float((ref.argmax(axis=1) == y).mean())
        after = float((pred == y).mean())
        result |= {"accuracy": after, "accuracy_drop": before - after}
    return result


def measured_check(kind: str, perturbation: str, strength: float | None, strongest: bool, base: Baseline,
                   rows: np.ndarray, out: np.ndarray, refused: np.ndarray, what: str) -> dict[str, Any]:
    """A perturbation's or an attack's check from the bundle's outputs for the perturbed rows: `name`
    `<perturbation>/<strength>` (the strength as `{:g}` writes it), its `measures` become gate metrics."""
    finite = bool(np.isfinite(out[~refused]).all())
    found = measures(base, rows, out, refused) if finite else {}
    n_refused = int(refused.sum())
    detail = f"{what}: " + (", ".join(f"{k} {v:.3g}" for k, v in found.items()) if finite else "non-finite outputs")
    detail += f" over {len(rows)} scored rows" + (f", {n_refused} refused" if n_refused else "")
    if base.dropped:
        detail += f" ({base.dropped} sampled test rows left out: the bundle refuses them as they are)"
    value = found.get("flip_rate", found.get("relative_change"))
    return _check(kind, None, crashed=False, finite=finite, value=value, detail=detail) | _measured(
        perturbation, strength, strongest, found, n_refused)


def crashed_check(kind: str, perturbation: str, strength: float | None, strongest: bool, what: str,
                  exc: Exception) -> dict[str, Any]:
    """A perturbation's or an attack's check when scoring the perturbed rows raised."""
    return _check(kind, None, crashed=True, finite=False, value=None,
                  detail=f"{what}: crashed: {type(exc).__name__}: {exc}") | _measured(perturbation, strength,
                                                                                     strongest, {}, 0)


def _measured(perturbation: str, strength: float | None, strongest: bool, found: dict[str, float],
              refused: int) -> dict[str, Any]:
    return {"name": perturbation if strength is None else f"{perturbation}/{strength:g}",
            "perturbation": perturbation, "strength": strength, "strongest": strongest, "measures": found,
            "refused": refused}


def media_checks(bundle_dir: Path, source: pd.DataFrame, cfg: RobustnessConfig,
                 seed: int) -> list[dict[str, Any]]:
    """The perturbation checks of the bundle's image and text inputs, then its corrupt payload checks."""
    predictor = Predictor(bundle_dir, threads=0)
    images = [n for n, spec in predictor.columns.items() if spec.image is not None]
    texts = [n for n, spec in predictor.columns.items() if spec.text is not None]
    checks: list[dict[str, Any]] = []
    if images:
        checks += _family_checks(predictor, source, "image", images, cfg.image.rows,
                                 _image_perturbations(cfg, predictor), seed)
    if texts:
        checks += _family_checks(predictor, source, "text", texts, cfg.text.rows, _text_perturbations(cfg), seed)
    if cfg.corrupt_payloads and (images or texts):
        checks += corrupt_payload_checks(predictor, source, seed)
    return checks


def _family_checks(predictor: Predictor, source: pd.DataFrame, family: str, columns: list[str], rows: int,
                   perturbations: list[Perturbation], seed: int) -> list[dict[str, Any]]:
    """Each perturbation of one family (image, text) on the same sample of rows."""
    if not perturbations:
        return []
    try:
        base = baseline_rows(predictor, source, rows, seed, family)
    except Exception as exc:  # the unperturbed rows already fail: one failed check says so, not one per strength
        return [_check(f"{family}_baseline", None, crashed=not isinstance(exc, MlopsError), finite=False,
                       value=None, detail=f"the unperturbed test rows: {exc}")]
    return [_perturbed(base, columns, p, seed) for p in perturbations]


@dataclass(frozen=True)
class Perturbation:
    """One declared perturbation at one strength: `apply(value, rng)` -> the variants of one raw value."""

    kind: str  # image_noise, text_typos, ...
    strength: float | None
    strongest: bool
    what: str  # for people: "Gaussian noise of std 0.1 (pixel range 0..1)"
    apply: Callable[[Any, np.random.Generator], list[Any]]
    variants: int  # how many variants `apply` gives of one value


def _perturbed(base: Baseline, columns: list[str], p: Perturbation, seed: int) -> dict[str, Any]:
    """Every row of the baseline with each of `columns` perturbed, each variant scored as a request."""
    name = p.kind if p.strength is None else f"{p.kind}/{p.strength:g}"
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rows = np.repeat(np.arange(len(base)), p.variants)
    what = f"{p.what} on {', '.join(columns)}"
    try:
        replaced: dict[str, list[Any]] = {}
        for column in columns:
            variants = [p.apply(value, rng) for value in base.raw[column]]
            replaced[column] = [v for vs in variants for v in vs]
        out, refused = score_rows(base, replaced, rows)
    except Exception as exc:  # a crash of the bundle (or of decoding its own test rows) is the finding
        return crashed_check(p.kind, p.kind, p.strength, p.strongest, what, exc)
    return measured_check(p.kind, p.kind, p.strength, p.strongest, base, rows, out, refused, what)


def _decode(predictor: Predictor, raw: dict[str, list[Any]],
            n: int) -> tuple[dict[str, list[Any]], np.ndarray, str]:
    """Each of `n` rows' values as the graph takes them (one row each, None where refused), which rows the bundle
    refused with a request error, and the first refusal's reason."""
    refused = np.zeros(n, dtype=bool)
    reason = ""
    decoded: dict[str, list[Any]] = {}
    for name, values in raw.items():
        arrays: list[Any] = []
        for i, value in enumerate(values):
            try:
                arrays.append(predictor.column_feeds(name, [value], name)[name])
            except RequestError as exc:
                refused[i] = True
                reason = reason or str(exc)
                arrays.append(None)
        decoded[name] = arrays
    for name, arrays in decoded.items():
        decoded[name] = [None if r else a for a, r in zip(arrays, refused, strict=True)]
    return decoded, refused, reason


def _strongest(values: list[float], lowest: bool = False) -> float | None:
    return (min(values) if lowest else max(values)) if values else None


def _image_perturbations(cfg: RobustnessConfig, predictor: Predictor) -> list[Perturbation]:
    c = cfg.image
    grey = all(spec.image.channels == 1 for spec in predictor.columns.values() if spec.image is not None)
    mode = "L" if grey else "RGB"
    declared: list[tuple[str, list[Any], bool, int, Callable[[float], str], Callable[..., list[Any]]]] = [
        ("image_noise", c.noise, False, 1, lambda s: f"Gaussian noise of std {s:g} (pixel range 0..1)", _noise),
        ("image_blur", c.blur, False, 1, lambda s: f"Gaussian blur of radius {s:g} px", _blur),
        ("image_brightness", c.brightness, False, 2, lambda s: f"brightness x{1 - s:g} and x{1 + s:g}", _brightness),
        ("image_contrast", c.contrast, False, 2, lambda s: f"contrast x{1 - s:g} and x{1 + s:g}", _contrast),
        ("image_rotation", c.rotation, False, 2, lambda s: f"rotation by -{s:g} and +{s:g} degrees", _rotation),
        ("image_jpeg", c.jpeg, True, 1, lambda s: f"JPEG re-compression at quality {s:g}", _jpeg),
        ("image_occlusion", c.occlusion, False, 1, lambda s: f"a grey rectangle over {s:.0%} of the image",
         _occlusion),
    ]
    out = []
    for kind, strengths, lowest, variants, what, fn in declared:
        top = _strongest(strengths, lowest)
        for s in strengths:
            out.append(Perturbation(kind, s, s == top, what(s), _on_image(fn, s, mode), variants))
    return out


def _on_image(fn: Callable[..., list[Any]], strength: float,
              mode: str) -> Callable[[Any, np.random.Generator], list[Any]]:
    """`fn(image, strength, rng) -> [image or encoded bytes]` on an image as sent: decoded, in the bundle's
    mode, and its results encoded as PNG (bytes already encoded stay as they are)."""
    def apply(value: Any, rng: np.random.Generator) -> list[Any]:
        img = _open_image(value).convert(mode)
        return [v if isinstance(v, bytes) else _png(v) for v in fn(img, strength, rng)]
    return apply


def _open_image(value: Any) -> Image:
    from PIL import Image

    img = Image.open(io.BytesIO(image_bytes(value)))
    img.load()
    return img


def _png(img: Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _from_array(arr: np.ndarray) -> Image:
    """Pixels [H, W] (grey) or [H, W, 3] in 0..255, rounded, as an image."""
    from PIL import Image

    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _noise(img: Image, std: float, rng: np.random.Generator) -> list[Image]:
    arr = np.asarray(img, dtype=np.float64) / 255.0
    return [_from_array((arr + rng.normal(0.0, std, arr.shape)).clip(0.0, 1.0) * 255.0)]


def _blur(img: Image, radius: float, rng: np.random.Generator) -> list[Image]:
    from PIL import ImageFilter

    return [img.filter(ImageFilter.GaussianBlur(radius))]


def _brightness(img: Image, shift: float, rng: np.random.Generator) -> list[Image]:
    from PIL import ImageEnhance

    return [ImageEnhance.Brightness(img).enhance(1 - shift), ImageEnhance.Brightness(img).enhance(1 + shift)]


def _contrast(img: Image, shift: float, rng: np.random.Generator) -> list[Image]:
    from PIL import ImageEnhance

    return [ImageEnhance.Contrast(img).enhance(1 - shift), ImageEnhance.Contrast(img).enhance(1 + shift)]


def _rotation(img: Image, degrees: float, rng: np.random.Generator) -> list[Image]:
    from PIL import Image

    arr = np.asarray(img)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).reshape(-1, len(img.getbands()))
    fill = tuple(int(round(v)) for v in border.mean(axis=0))  # the corners that come into view: the border's colour
    return [img.rotate(a, resample=Image.Resampling.BILINEAR, fillcolor=fill[0] if len(fill) == 1 else fill)
            for a in (-degrees, degrees)]


def _jpeg(img: Image, quality: float, rng: np.random.Generator) -> list[bytes]:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=int(quality))
    return [out.getvalue()]


def _occlusion(img: Image, fraction: float, rng: np.random.Generator) -> list[Image]:
    arr = np.array(img)
    height, width = arr.shape[:2]
    h = min(height, max(1, round(height * fraction ** 0.5)))  # the image's own shape, scaled to the area
    w = min(width, max(1, round(width * fraction ** 0.5)))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    arr[top:top + h, left:left + w] = OCCLUSION_GREY
    return [_from_array(arr)]


def _text_perturbations(cfg: RobustnessConfig) -> list[Perturbation]:
    c = cfg.text
    out = []
    declared: list[tuple[str, list[float], int, Callable[[float], str], Callable[..., list[str]]]] = [
        ("text_typos", c.typos, 1, lambda s: f"typos in {s:.0%} of the letters", _typos),
        ("text_truncation", c.truncation, 1, lambda s: f"the last {s:.0%} of the characters cut", _truncation),
        ("text_whitespace", c.whitespace, 1, lambda s: f"whitespace runs before {s:.0%} of the characters",
         _whitespace),
    ]
    for kind, strengths, variants, what, fn in declared:
        top = _strongest(strengths)
        out += [Perturbation(kind, s, s == top, what(s), _on_text(fn, s), variants) for s in strengths]
    if c.casing:
        out.append(Perturbation("text_casing", None, True, "upper-cased and case-swapped",
                                _on_text(_casing, 0.0), 2))
    if c.punctuation:
        out.append(Perturbation("text_punctuation", None, True, "punctuation removed",
                                _on_text(_punctuation, 0.0), 1))
    return out


def _on_text(fn: Callable[..., list[str]], strength: float) -> Callable[[Any, np.random.Generator], list[Any]]:
    def apply(value: Any, rng: np.random.Generator) -> list[Any]:
        text = value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)
        return list(fn(text, strength, rng))
    return apply


def _typos(text: str, rate: float, rng: np.random.Generator) -> list[str]:
    """Each letter, with probability `rate`: swapped with the next character, dropped, doubled or replaced by a
    random letter of the same case."""
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        i += 1
        if not (c.isalpha() and rng.random() < rate):
            out.append(c)
            continue
        typo = TYPOS[int(rng.integers(len(TYPOS)))]
        if typo == "swap" and i < len(chars):
            out += [chars[i], c]
            i += 1
        elif typo == "double":
            out += [c, c]
        elif typo != "drop":  # replace; and a swap of the last character, which has no next one
            letter = chr(ord("a") + int(rng.integers(26)))
            out.append(letter.upper() if c.isupper() else letter)
    return ["".join(out)]


def _truncation(text: str, fraction: float, rng: np.random.Generator) -> list[str]:
    return [text[:int(len(text) * (1 - fraction))]]


def _whitespace(text: str, rate: float, rng: np.random.Generator) -> list[str]:
    out = []
    for c in text:
        if rng.random() < rate:
            out.append("".join(rng.choice([" ", "\t", "\n"], size=int(rng.integers(1, 4)))))
        out.append(c)
    return ["".join(out)]


def _casing(text: str, strength: float, rng: np.random.Generator) -> list[str]:
    return [text.upper(), text.swapcase()]


def _punctuation(text: str, strength: float, rng: np.random.Generator) -> list[str]:
    return ["".join(c for c in text if not unicodedata.category(c).startswith("P"))]


# --- corrupt payloads -------------------------------------------------------------------------------


def corrupt_payload_checks(predictor: Predictor, source: pd.DataFrame, seed: int) -> list[dict[str, Any]]:
    """A valid test row sent as a request with one image or text replaced by a broken payload: each must be
    answered or refused as a bad request, never crash the bundle or answer NaN."""
    rng = np.random.default_rng([seed, zlib.crc32(b"corrupt_payload")])
    control = _control_row(predictor, source)
    if isinstance(control, str):
        return [_check("corrupt_payload", None, crashed=False, finite=True, value=None, passed=False,
                       detail=f"no test row the bundle answers, so the payloads cannot be sent: {control}")
                | {"outcome": None}]
    checks = []
    for name, spec in predictor.columns.items():
        if spec.image is not None:
            payloads = _image_payloads(_open_image(control[name]["b64"]), spec.image.channels,
                                       spec.image.max_bytes, rng)
        elif spec.text is not None:
            payloads = _text_payloads(spec.text.max_chars, spec.text.max_length)
        else:
            continue
        for payload, (what, value) in payloads.items():
            checks.append(_payload_check(predictor, control, name, payload, what, value))
    return checks


def _control_row(predictor: Predictor, source: pd.DataFrame) -> dict[str, Any] | str:
    """The first test row the bundle answers, as a request's instance; else why there is none."""
    reason = "there are no test rows"
    for i in range(min(len(source), CONTROL_TRIES)):
        try:
            row = request_instance(predictor, source.iloc[[i]])
            predictor.predict(predictor.feeds_from_rows([row]))
            return row
        except Exception as exc:  # a row the bundle cannot answer is no control: try the next
            reason = f"{type(exc).__name__}: {exc}"
    return reason


def request_instance(predictor: Predictor, frame: pd.DataFrame) -> dict[str, Any]:
    """A one-row frame as a JSON request carries it: images as {"b64": ...}, null for a missing value."""
    row: dict[str, Any] = {}
    for name, spec in predictor.columns.items():
        if spec.image is not None:
            row[name] = _b64(image_bytes(frame[name].iloc[0]))
        elif spec.text is not None:
            row[name] = frame[name].iloc[0]
        else:
            row[name] = _json_value(_scalar_column(frame, name, spec.dtype, predictor.categories.trim)[0])
    return row


def _scalar_column(frame: pd.DataFrame, name: str, dtype: str, trim: bool) -> np.ndarray:
    """A scalar column as the graph takes it (as `Predictor.frame_feeds` makes it): strings, or float32 with NaN."""
    return category_strings(frame[name], trim) if dtype == "string" else numeric_column(frame[name])


def _payload_check(predictor: Predictor, control: dict[str, Any], column: str, payload: str, what: str,
                   value: Any) -> dict[str, Any]:
    try:
        prediction = predictor.predict(predictor.feeds_from_rows([control | {column: value}]))
    except RequestError as exc:
        outcome, detail = "refused", f"refused ({exc.status}: {exc})"
    except Exception as exc:  # anything but a request error is a 500 at serve time
        outcome, detail = "crashed", f"crashed: {type(exc).__name__}: {exc}"
    else:
        numbers = [v for k, v in prediction.outputs.items() if k != "label"]
        finite = all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in numbers)
        outcome, detail = ("answered", "answered") if finite else ("non_finite", "answered with non-finite outputs")
    return _check("corrupt_payload", column, crashed=outcome == "crashed", finite=outcome != "non_finite",
                  value=None, detail=f"'{column}' sent as {what}: {detail}") | {
        "name": f"corrupt_payload/{column}/{payload}", "payload": payload, "outcome": outcome}


def _b64(raw: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(raw).decode("ascii")}


def _image_payloads(img: Image, channels: int, max_bytes: int,
                    rng: np.random.Generator) -> dict[str, tuple[str, Any]]:
    """Broken and unusual images made from a valid one: {payload: (what, value as a request sends it)}."""
    from PIL import Image

    grey = img.convert("L")
    png = _png(img.convert("L" if channels == 1 else "RGB"))
    alpha = rng.integers(0, 256, size=(img.height, img.width), dtype=np.uint8)
    rgba = np.dstack([np.asarray(img.convert("RGB")), alpha])
    cmyk = io.BytesIO()
    img.convert("CMYK").save(cmyk, format="JPEG")
    deep = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)  # 16-bit grey: Pillow's I;16
    other = grey if channels == 3 else img.convert("RGB")
    return {
        "truncated_png": ("a PNG cut in half", _b64(png[:len(png) // 2])),
        "random_bytes": ("512 random bytes", _b64(rng.bytes(512))),
        "empty": ("0 bytes", _b64(b"")),
        "not_base64": ("a string that is not base64", {"b64": "not base64 at all!"}),
        "rgba": ("an RGBA PNG", _b64(_png(Image.fromarray(rgba)))),
        "cmyk": ("a CMYK JPEG", _b64(cmyk.getvalue())),
        "grey16": ("a 16-bit grey PNG", _b64(_png(deep))),
        "other_channels": (f"a {'grey' if other.mode == 'L' else 'colour'} image to a "
                           f"{'colour' if channels == 3 else 'grey'} model", _b64(_png(other))),
        "over_size_limit": (f"{max_bytes + 1:,} bytes (over the limit)",
                            _b64(png + bytes(max_bytes + 1 - len(png)))),
        "pixel_bomb": ("a PNG whose header claims 100000x100000 pixels",
                       _b64(_claimed_size(png, 100_000, 100_000))),
    }


def _claimed_size(png: bytes, width: int, height: int) -> bytes:
    """`png` with its header (IHDR) claiming another size, its checksum fixed: what a decompression bomb
    looks like before anything is decoded."""
    at = png.index(b"IHDR")
    body = struct.pack(">II", width, height) + png[at + 12:at + 17]
    return png[:at] + b"IHDR" + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + png[at + 21:]


def _text_payloads(max_chars: int, max_length: int) -> dict[str, tuple[str, Any]]:
    many = " ".join(["word"] * (max_length * 4))[:max_chars]
    return {
        "empty": ("an empty string", ""),
        "blank": ("whitespace only", " \t\n "),
        "over_length": (f"{max_chars + 1:,} characters (over the limit)", "a" * (max_chars + 1)),
        "many_tokens": (f"{len(many):,} characters of {max_length * 4} words (more tokens than the model reads)",
                        many),
        "control_characters": ("control and invisible characters", "\x00\x07 text \u200b\ufeff\u202e"),
        "lone_surrogate": ("a lone surrogate (no UTF-8)", "text \ud800 text"),
        "number": ("a number instead of a string", 42),
    }


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
