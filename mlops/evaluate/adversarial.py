"""Gradient attacks on the trained torch module, scored by the exported bundle: how much an input chosen to
mislead, within a small L-inf distance of a real one, changes what serving answers.

FGSM (one step of `epsilon` along the sign of the loss gradient) and PGD (`pgd_steps` steps of
2.5 x epsilon / pgd_steps from a random start in the epsilon ball, projected back onto it after each step),
untargeted, on the cross-entropy of the true class (the bundle's prediction where the rows carry no
target). The attack works in the module's input space:

- images: the pixels scaled to [0, 1] (the network scales uint8 pixels itself); the adversarial pixels are
  rounded back to uint8 and sent to the bundle as PNG, so it decodes exactly what the attack computed;
- scalar columns: the standardized numeric features (`epsilon` training standard deviations); the
  adversarial features are turned back into raw values (a missing value stays missing and is not attacked).
  Categorical columns (one-hot) and texts (discrete token ids) are held fixed: a text-only model, or one with
  only categorical columns, is skipped with the reason in its check.

The bundle (ONNX Runtime, through its Predictor) then scores the adversarial rows, so the measures are what
serving would answer: per method and epsilon one check (`kind` adversarial, `name` `adversarial/fgsm/0.03`)
with `accuracy`, `accuracy_drop` (from the same rows unattacked) and `flip_rate`, and the gate metrics
`robustness/adversarial/<method>/<epsilon>/<measure>` and, at the largest epsilon,
`robustness/adversarial/<method>/<measure>` (see `mlops.evaluate.robustness.robustness_summary`).
Classification only: a regression model is skipped, and so is a module that does not predict what the bundle
does on 98% of the clean rows (it is not this bundle's). A skipped check passes and says why; its metrics are
absent, so a gate on them is an error, never a silent pass.

torch is imported only inside these functions, and only the assess step, which holds the trained module,
calls them: a served bundle never loads torch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.data.media import TABULAR, ModelInputs, png_bytes
from mlops.data.preprocess import Preprocessor, fit_preprocessor
from mlops.evaluate.robustness import (
    Baseline,
    baseline_rows,
    crashed_check,
    measured_check,
    score_rows,
)
from mlops.package.predictor import Predictor

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from mlops.recipe.schema import RobustnessConfig

PARITY = 0.98  # the share of the clean rows on which the module must predict what the bundle does
PGD_SPAN = 2.5  # PGD's steps add up to this many epsilons (Madry et al.): the ball can be crossed from the start


def adversarial_checks(bundle_dir: Path, test: pd.DataFrame, train: pd.DataFrame, module: Any,
                       network: ModelInputs | None, cfg: RobustnessConfig.Adversarial,
                       seed: int) -> list[dict[str, Any]]:
    """One check per method and epsilon (or one skipped check saying why the model cannot be attacked).

    `module` is the trained module of this bundle; `network` what it takes when its forward takes a dict (the
    train step's `ModelInputs`), None when it takes the preprocessed feature matrix. `train` refits the
    preprocessing the module was trained behind (the bundle's data schema on the training split)."""
    predictor = Predictor(bundle_dir, threads=0)
    meta = predictor.meta
    pre = fit_preprocessor(meta.data_schema, train, trim=predictor.categories.trim)
    images = [name for name, spec in predictor.columns.items() if spec.image is not None]
    texts = [name for name, spec in predictor.columns.items() if spec.text is not None]
    if meta.task == "regression":
        return [_skipped("a regression model: the attacks are measured by accuracy and flipped classes")]
    if not images and not pre.numeric:
        why = "text inputs are discrete tokens: gradient attacks do not apply" if texts else \
            "no continuous input to attack (only categorical columns)"
        return [_skipped(why)]
    try:
        base = baseline_rows(predictor, test if len(test) else train, cfg.rows, seed, "adversarial")
    except Exception as exc:  # the other checks report what the bundle does with these rows
        return [_skipped(f"the unattacked test rows cannot be scored: {type(exc).__name__}: {exc}")]
    was_training = module.training
    module.eval()
    try:
        return _attacks(Attack(module, network, pre, base, images), cfg, seed, texts)
    finally:
        module.train(was_training)


def _attacks(attack: Attack, cfg: RobustnessConfig.Adversarial, seed: int,
             texts: list[str]) -> list[dict[str, Any]]:
    import torch

    if not attack.masks:
        return [_skipped("no value to attack: every numeric value of the sampled rows is missing")]
    try:
        agree = attack.agreement()
    except Exception as exc:  # a custom module this attack cannot drive: say so, do not fail the run
        return [_skipped(f"the module cannot be run on the test rows: {type(exc).__name__}: {exc}")]
    if agree < PARITY:
        return [_skipped(f"the module and the bundle agree on only {agree:.1%} of the clean rows: the module is "
                         "not this bundle's")]
    generator = torch.Generator().manual_seed(zlib.crc32(f"adversarial/{seed}".encode()))
    held = f"; held fixed: {', '.join(texts)}" if texts else ""
    top = max(cfg.epsilons)
    checks = []
    for method in cfg.methods:
        for eps in cfg.epsilons:
            what = f"{method.upper()} at epsilon {eps:g} on {attack.describe()}{held}"
            try:
                with torch.enable_grad():
                    adversarial = attack.run(method, eps, cfg.pgd_steps, generator)
            except Exception as exc:  # e.g. a custom module with a step that has no gradient
                return [_skipped(f"the module cannot be differentiated: {type(exc).__name__}: {exc}")]
            rows = np.arange(len(attack.base))
            try:
                out, refused = score_rows(attack.base, adversarial.media, rows, adversarial.scalars)
            except Exception as exc:  # the bundle crashed on the adversarial rows: that is the finding
                checks.append(crashed_check("adversarial", f"adversarial/{method}", eps, eps == top, what, exc))
                continue
            check = measured_check("adversarial", f"adversarial/{method}", eps, eps == top, attack.base, rows,
                                   out, refused, what)
            check["detail"] += f" (the module itself: accuracy {adversarial.module_accuracy:.3g})"
            checks.append(check)
    return checks


@dataclass
class Adversarial:
    """An attack's result as the bundle takes it: each image column's PNGs, each numeric column's raw values
    as a graph array [N, 1]; and the module's own accuracy on it."""

    media: dict[str, list[bytes]]
    scalars: dict[str, np.ndarray]
    module_accuracy: float


class Attack:
    """The baseline rows as the module takes them, and FGSM/PGD on them in its input space."""

    def __init__(self, module: Any, network: ModelInputs | None, pre: Preprocessor, base: Baseline,
                 images: list[str]) -> None:
        import torch

        self.module, self.network, self.pre, self.base, self.images = module, network, pre, base, images
        tabular = pre.transform(base.frame) if pre.n_features else None
        self.inputs: dict[str, torch.Tensor] = {}  # the module's inputs, images as pixels scaled to [0, 1]
        self.masks: dict[str, torch.Tensor] = {}  # what an attack may move, per attacked input
        if tabular is not None:
            self.inputs[TABULAR] = torch.from_numpy(tabular)
            mask = np.zeros_like(tabular)
            for j, stats in enumerate(pre.numeric):  # numeric features come first; missing values stay missing
                mask[:, j] = np.isfinite(base.scalars[stats.name][:, 0])
            if mask.any():
                self.masks[TABULAR] = torch.from_numpy(mask)
        for name in images:
            self.inputs[name] = torch.from_numpy(base.arrays[name].astype(np.float32) / 255.0)
            self.masks[name] = torch.ones_like(self.inputs[name])
        for name, values in base.arrays.items():
            if name not in images:
                self.inputs[name] = torch.from_numpy(values)  # token ids
        self.y = torch.from_numpy(base.y if base.y is not None else base.out.argmax(axis=1))

    def describe(self) -> str:
        parts = [f"{name} (pixels 0..1)" for name in self.images]
        if TABULAR in self.masks:
            parts.append(f"{len(self.pre.numeric)} numeric column(s) (training stds)")
        return " and ".join(parts)

    def logits(self, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {}
        for name, x in self.inputs.items():
            moved = x + deltas[name] if name in deltas else x
            feed[name] = moved * 255.0 if name in self.images else moved
        return self.module(feed if self.network is not None else feed[TABULAR])

    def agreement(self) -> float:
        """The share of the clean rows on which the module and the bundle predict the same class."""
        import torch

        with torch.no_grad():
            pred = self.logits({}).argmax(dim=1).numpy()
        return float((pred == self.base.out.argmax(axis=1)).mean())

    def run(self, method: str, eps: float, steps: int, generator: torch.Generator) -> Adversarial:
        import torch

        if method == "fgsm":
            deltas = self._step({n: torch.zeros_like(m) for n, m in self.masks.items()}, eps)
        else:
            deltas = {n: (torch.rand(m.shape, generator=generator) * 2 - 1) * eps for n, m in self.masks.items()}
            for _ in range(steps):
                deltas = self._step(self._project(deltas, eps), PGD_SPAN * eps / steps)
        deltas = self._project(deltas, eps)
        with torch.no_grad():
            accuracy = float((self.logits(deltas).argmax(dim=1) == self.y).float().mean())
        return self._to_bundle(deltas, accuracy)

    def _step(self, deltas: dict[str, torch.Tensor], size: float) -> dict[str, torch.Tensor]:
        import torch
        from torch.nn import functional as F

        live = {n: d.detach().requires_grad_(True) for n, d in deltas.items()}
        loss = F.cross_entropy(self.logits(live), self.y)
        grads = torch.autograd.grad(loss, list(live.values()))
        return {n: d.detach() + size * g.sign() for (n, d), g in zip(live.items(), grads, strict=True)}

    def _project(self, deltas: dict[str, torch.Tensor], eps: float) -> dict[str, torch.Tensor]:
        """Onto the epsilon ball, the movable cells, and for pixels the range [0, 1]."""
        out = {}
        for name, d in deltas.items():
            d = d.clamp(-eps, eps) * self.masks[name]
            if name in self.images:
                d = (self.inputs[name] + d).clamp(0.0, 1.0) - self.inputs[name]
            out[name] = d
        return out

    def _to_bundle(self, deltas: dict[str, torch.Tensor], module_accuracy: float) -> Adversarial:
        media = {}
        for name in self.images:
            pixels = ((self.inputs[name] + deltas[name]) * 255.0).round().clamp(0, 255).numpy().astype(np.uint8)
            media[name] = [png_bytes(p) for p in pixels]
        scalars = {}
        if TABULAR in deltas:
            moved = (self.inputs[TABULAR] + deltas[TABULAR]).numpy().astype(np.float64)
            for j, stats in enumerate(self.pre.numeric):
                raw = self.base.scalars[stats.name][:, 0].astype(np.float64)
                unscaled = moved[:, j] * np.float32(stats.std) + np.float32(stats.mean)
                values = np.where(np.isfinite(raw), unscaled, raw)
                scalars[stats.name] = values.astype(np.float32)[:, None]
        return Adversarial(media, scalars, module_accuracy)


def _skipped(why: str) -> dict[str, Any]:
    return {"name": "adversarial", "kind": "adversarial", "column": None, "passed": True, "crashed": False,
            "finite": True, "value": None, "detail": f"skipped: {why}", "skipped": True}
