"""Feature importance of an exported model: how much its score drops when one raw input column is shuffled.

Permutation importance runs the bundle exactly as serving does (`model.onnx` over raw named columns, through
its Predictor), so the preprocessing, the tokenizer and the image decoding are part of what is measured: a
column is shuffled across the test rows (an image or a text column whole, which tells how much the model
leans on the picture or the words rather than on the metadata), the rows are scored again, and the drop of
the task's main score is the column's importance. Each column is shuffled `repeats` times with a seeded
generator; the mean drop is reported with a t-interval over the repeats (a single repeat gives a point).

Main score: AUROC for a binary classifier (accuracy when the rows hold one class), accuracy for a multiclass
one, R^2 for a regression. A large importance is what a leakage check looks for: a gate
`importance/<column>` with `max:` fails a model that leans on one column too much.

Image and text models also get attributions of the trained torch module on a small sample of test rows,
computed with Captum: integrated gradients (or occlusion) on each image's pixels, rendered as a heatmap over
the image (one PNG per row), and layer integrated gradients on each text's token embeddings, rendered as
highlighted tokens (one HTML file per text column; the tokens and scores stay in the result for the report).
"""

from __future__ import annotations

import html
import io
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.core.log import say
from mlops.data.media import PAD_ID, TABULAR, ModelInputs
from mlops.data.preprocess import fit_preprocessor
from mlops.evaluate.metrics import CLASSIFICATION_FNS, REGRESSION_FNS
from mlops.evaluate.robustness import baseline_rows
from mlops.evaluate.scored import Scored, encode_targets, onnx_outputs
from mlops.package.predictor import Predictor

if TYPE_CHECKING:
    import pandas as pd

    from mlops.recipe.schema import ImportanceConfig

JSON_NAME = "feature_importance.json"
PLOT_NAME = "feature_importance.png"
OVERLAY_ALPHA = 0.6  # how strongly the heatmap covers the image where attribution is largest


def main_score(task: str, y: np.ndarray, n_classes: int) -> tuple[str, Any]:
    """The score whose drop is a column's importance, and its function of a Scored."""
    if task == "regression":
        return "r2", REGRESSION_FNS["r2"]
    if task == "binary" and len(np.unique(y)) == 2:
        return "auroc", CLASSIFICATION_FNS["auroc"]
    return "accuracy", CLASSIFICATION_FNS["accuracy"]


def permutation_importance(bundle_dir: Path, test: pd.DataFrame, target: str, repeats: int = 5,
                           max_rows: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Each raw input column's importance, most important first (see the module's docstring)."""
    from scipy import stats

    predictor = Predictor(bundle_dir, max_batch=max(len(test) * repeats, 1))
    meta = predictor.meta
    rng = np.random.default_rng([seed, zlib.crc32(b"importance")])
    frame = test.iloc[np.sort(rng.choice(len(test), size=max_rows, replace=False))] if len(test) > max_rows \
        else test
    feeds = predictor.graph_feeds(predictor.frame_feeds(frame))
    y = encode_targets(frame[target], meta.task, meta.labels)
    base_out = onnx_outputs(predictor.session, feeds, meta.task)
    metric, fn = main_score(meta.task, y, len(meta.labels or []))
    baseline = fn(Scored(meta.task, y, base_out, meta.labels))
    n = len(frame)
    tiled_y = np.tile(y, repeats)
    columns = []
    for spec in meta.inputs:
        # every repeat's shuffled copy of the rows in one call: one ONNX run per column
        orders = np.concatenate([rng.permutation(n) for _ in range(repeats)])
        shuffled = {k: (v[orders] if k == spec.name else np.concatenate([v] * repeats)) for k, v in feeds.items()}
        out = onnx_outputs(predictor.session, shuffled, meta.task)
        scores = np.array([fn(Scored(meta.task, tiled_y[r * n:(r + 1) * n], out[r * n:(r + 1) * n], meta.labels))
                           for r in range(repeats)])
        drops = baseline - scores
        mean = float(np.mean(drops))
        std = float(np.std(drops, ddof=1)) if repeats > 1 else 0.0
        if repeats > 1 and std > 0:
            half = float(stats.t.ppf(0.5 + confidence / 2, repeats - 1) * std / np.sqrt(repeats))
        else:
            half = 0.0
        columns.append({"column": spec.name, "kind": spec.kind, "mean": mean, "std": std,
                        "ci": [mean - half, mean + half], "drops": [float(d) for d in drops]})
    columns.sort(key=lambda c: -c["mean"])
    return {"metric": metric, "baseline": float(baseline), "rows": n, "repeats": repeats,
            "confidence": confidence, "columns": columns}


def feature_importance(bundle_dir: Path, test: pd.DataFrame, train: pd.DataFrame, target: str,
                       cfg: ImportanceConfig, seed: int, module: Any = None, network: ModelInputs | None = None,
                       out: Path | None = None) -> dict[str, Any]:
    """Permutation importance, and for an image or text model with its torch `module` the attributions of a
    sample; with `out`, its JSON, bar chart, overlays and token highlights are written there (`files` names
    them, relative to `out`; an overlay's `path` is absolute, for the report)."""
    source = test if len(test) else train
    say(f"permutation importance: {cfg.repeats} shuffles of each input column over "
        f"{min(len(source), cfg.max_rows)} test rows")
    result = permutation_importance(bundle_dir, source, target, cfg.repeats, cfg.max_rows, cfg.confidence, seed)
    result["attributions"] = []
    files: list[str] = []
    media = module is not None and cfg.samples > 0 and network is not None and not network.scalar_only
    if media and out is not None:
        say(f"attributions ({cfg.method}) of {cfg.samples} test rows with Captum")
        try:
            result["attributions"] = attributions(bundle_dir, source, train, module, network, cfg, seed, out)
        except Exception as exc:  # a custom module Captum cannot drive: say so, keep the permutation results
            result["attributions"] = [{"column": None, "skipped": f"{type(exc).__name__}: {exc}"}]
        for a in result["attributions"]:
            files += [Path(p).name for p in a.get("overlays", [])] + ([a["html"]] if a.get("html") else [])
    if out is not None:
        import json

        from mlops.evaluate.plots import importance_png

        out.mkdir(parents=True, exist_ok=True)
        importance_png(result, out / PLOT_NAME)
        files = [JSON_NAME, PLOT_NAME, *files]
        result["files"] = files
        (out / JSON_NAME).write_text(json.dumps(result, indent=2))
    return result


# --- attributions ------------------------------------------------------------------------------------------


def attributions(bundle_dir: Path, test: pd.DataFrame, train: pd.DataFrame, module: Any, network: ModelInputs,
                 cfg: ImportanceConfig, seed: int, out: Path) -> list[dict[str, Any]]:
    """One entry per image and text column of the network: its sample's overlays (images) or token scores and
    highlights (texts)."""
    import torch

    predictor = Predictor(bundle_dir, threads=0)
    base = baseline_rows(predictor, test, cfg.samples, seed, "importance")
    inputs: dict[str, torch.Tensor] = {}
    if network.tabular:
        pre = fit_preprocessor(predictor.meta.data_schema, train, trim=predictor.categories.trim)
        inputs[TABULAR] = torch.from_numpy(pre.transform(base.frame))
    for name in [*network.images, *network.texts]:
        inputs[name] = torch.from_numpy(base.arrays[name])
    if predictor.meta.task == "regression":
        targets: Any = 0
    else:
        targets = torch.from_numpy(base.out.argmax(axis=1)).long()
    was_training = module.training
    module.eval()
    found = []
    try:
        with torch.enable_grad():
            for name in network.images:
                heat = _image_attribution(module, inputs, name, targets, cfg)
                found.append(_overlays(name, base.arrays[name], heat, out))
            for name in network.texts:
                scores = _text_attribution(module, inputs, name, list(network.texts).index(name), targets, cfg)
                found.append(_highlights(name, base.arrays[name], scores, predictor.tokenizers[name], out))
    finally:
        module.train(was_training)
    return found


def _forward(module: Any, inputs: dict[str, Any], name: str) -> tuple[Any, tuple[Any, ...]]:
    """The module as a function of input `name` and the other inputs (Captum's additional forward arguments,
    which it expands alongside its scaled copies of `name`); a regression module's [N] output becomes [N, 1]
    so Captum's target 0 reads it."""
    others = [k for k in inputs if k != name]

    def fn(x: Any, *rest: Any) -> Any:
        logits = module({name: x} | dict(zip(others, rest, strict=True)))
        return logits if logits.dim() == 2 else logits.unsqueeze(1)

    return fn, tuple(inputs[k] for k in others)


def _image_attribution(module: Any, inputs: dict[str, Any], name: str, targets: Any,
                       cfg: ImportanceConfig) -> np.ndarray:
    """|attribution| summed over channels: [N, H, W]. Pixels are attributed as the float values 0..255 the
    network scales itself, against a black image."""
    import torch

    pixels = inputs[name].to(torch.float32)
    fn, rest = _forward(module, inputs, name)
    if cfg.method == "occlusion":
        from captum.attr import Occlusion

        _, h, w, c = pixels.shape
        window = (max(h // 4, 1), max(w // 4, 1), c)
        stride = (max(h // 8, 1), max(w // 8, 1), c)
        attr = Occlusion(fn).attribute(pixels, sliding_window_shapes=window, strides=stride, target=targets,
                                       baselines=0.0, additional_forward_args=rest)
    else:
        from captum.attr import IntegratedGradients

        attr = IntegratedGradients(fn).attribute(pixels, baselines=torch.zeros_like(pixels), target=targets,
                                                 additional_forward_args=rest, n_steps=cfg.n_steps,
                                                 internal_batch_size=len(pixels) * cfg.n_steps)
    return attr.detach().abs().sum(dim=-1).numpy()


def _text_attribution(module: Any, inputs: dict[str, Any], name: str, position: int, targets: Any,
                      cfg: ImportanceConfig) -> np.ndarray:
    """Per-token attribution [N, L] by layer integrated gradients on the token embedding, against all padding
    (signed: positive tokens push toward the predicted class)."""
    from captum.attr import LayerIntegratedGradients

    # the multi-input network keeps one text encoder per text input, in the inputs' order
    layer = list(module.text.values())[position].tokens
    ids = inputs[name]
    fn, rest = _forward(module, inputs, name)
    attr = LayerIntegratedGradients(fn, layer).attribute(
        ids, baselines=ids * 0 + PAD_ID, target=targets, additional_forward_args=rest, n_steps=cfg.n_steps,
        internal_batch_size=len(ids) * cfg.n_steps)
    scores = attr.detach().sum(dim=-1).numpy()
    return np.where(ids.numpy() == PAD_ID, 0.0, scores)


def _overlays(name: str, pixels: np.ndarray, heat: np.ndarray, out: Path) -> dict[str, Any]:
    """Each row's image as the network sees it, its heatmap blended over it in red: `<name>.attribution.<i>.png`."""
    from PIL import Image

    paths = []
    for i, (img, h) in enumerate(zip(pixels, heat, strict=True)):
        rgb = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
        weight = (h / h.max() if h.max() > 0 else h)[..., None] * OVERLAY_ALPHA
        red = np.array([255.0, 0.0, 0.0])
        blended = (rgb.astype(np.float64) * (1 - weight) + red * weight).round().clip(0, 255).astype(np.uint8)
        path = out / f"{_safe(name)}.attribution.{i}.png"
        buf = io.BytesIO()
        Image.fromarray(blended, mode="RGB").save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
        paths.append(str(path.resolve()))
    return {"column": name, "kind": "image", "overlays": paths,
            "total": [float(h.sum()) for h in heat]}


def _highlights(name: str, ids: np.ndarray, scores: np.ndarray, tokenizer: Any, out: Path) -> dict[str, Any]:
    """Each row's tokens with their scores, and `<name>.attribution.html`: the tokens highlighted, green for
    those that push toward the predicted class, red for those that push away."""
    rows = []
    for row_ids, row_scores in zip(ids, scores, strict=True):
        keep = row_ids != PAD_ID
        rows.append({"tokens": [str(tokenizer.id_to_token(int(t))) for t in row_ids[keep]],
                     "scores": [float(s) for s in row_scores[keep]]})
    page = "\n".join(f"<p>{token_html(r['tokens'], r['scores'])}</p>" for r in rows)
    file = f"{_safe(name)}.attribution.html"
    (out / file).write_text(f"<!doctype html>\n<meta charset=\"utf-8\"><title>{html.escape(name)} attributions"
                            f"</title>\n{page}\n")
    return {"column": name, "kind": "text", "html": file, "rows": rows}


def token_html(tokens: list[str], scores: list[float]) -> str:
    """Tokens as spans shaded by their score (relative to the row's largest |score|)."""
    top = max((abs(s) for s in scores), default=0.0) or 1.0
    spans = []
    for token, score in zip(tokens, scores, strict=True):
        alpha = abs(score) / top
        colour = "0,160,0" if score >= 0 else "200,0,0"
        spans.append(f'<span title="{score:.4g}" style="background: rgba({colour},{alpha:.2f})">'
                     f"{html.escape(token)}</span>")
    return " ".join(spans)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
