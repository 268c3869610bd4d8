"""Fine-tuning: start from a local checkpoint's weights (`model.weights`) and freeze some parameters
(`model.freeze`).

The file is read with `torch.load(weights_only=True)`: tensors and plain containers only, never arbitrary
pickled code, and nothing is ever downloaded. Tensors are matched by name and shape: a head sized for other
classes is skipped and reported, not an error. The names may differ by a prefix on either side: a Lightning
checkpoint's `model.`, DDP's `module.`, or a bare torchvision state dict loaded into an image encoder
(`conv1.weight` -> `image.photo.backbone.conv1.weight`).
"""

from __future__ import annotations

import fnmatch
import pickle
import re
from collections import Counter
from pathlib import Path

import torch
from pydantic import BaseModel

from mlops.core.errors import MlopsError

PREFIX_DEPTH = 3  # prefixes tried on each side: up to this many dotted components


class FineTuneReport(BaseModel):
    """What fine-tuning did, kept in the train result."""

    weights: str | None = None  # the file the weights came from
    strip: str = ""  # prefix removed from the file's names
    add: str = ""  # prefix put before them to name the model's tensors
    loaded: int = 0  # tensors copied into the model
    skipped: list[str] = []  # the file's tensors left out, each with why
    untouched: int = 0  # model tensors the file did not provide (they keep their initialisation)
    frozen: list[str] = []  # parameters not trained
    frozen_values: int = 0  # their total number of values

    def summary(self) -> str:
        parts = []
        if self.weights:
            more = len(self.skipped) - 5
            shown = "; ".join(self.skipped[:5]) + (f"; … {more} more" if more > 0 else "")
            parts.append(f"model.weights: loaded {self.loaded} tensors from {self.weights}, skipped "
                         f"{len(self.skipped)}" + (f" ({shown})" if self.skipped else "")
                         + f", {self.untouched} model tensors keep their initialisation")
        if self.frozen:
            parts.append(f"model.freeze: {len(self.frozen)} parameters ({self.frozen_values:,} values) "
                         "frozen")
        return "\n".join(parts)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict file, or of a Lightning checkpoint's `state_dict`."""
    if not path.is_file():
        raise MlopsError(f"model.weights: {path} does not exist (it is read from this machine; nothing is "
                         f"downloaded)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise MlopsError(f"model.weights: cannot read {path} with torch.load(weights_only=True): "
                         f"{_why(exc)}. Give a file saved with torch.save(module.state_dict()) or a "
                         "Lightning checkpoint") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # a Lightning checkpoint
    if not isinstance(loaded, dict):
        raise MlopsError(f"model.weights: {path} holds a {type(loaded).__name__}, not a state dict")
    tensors = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise MlopsError(f"model.weights: {path} holds no named tensors (not a state dict)")
    return tensors


def _why(exc: Exception) -> str:
    """torch's reason in a few words: its own message is long and suggests turning weights_only off, which
    this project never does (the file could run code)."""
    text = str(exc)
    if found := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return f"it holds a pickled Python object ({found.group(1)}), not only tensors"
    if isinstance(exc, pickle.UnpicklingError | EOFError) or "ZIP archive" in text:
        return "it is not a file torch.save wrote, or it is damaged"
    first = text.strip().split(". ")[0].splitlines()[0] if text.strip() else ""
    return first or type(exc).__name__


def _prefixes(name: str) -> list[str]:
    """"" and the first 1..PREFIX_DEPTH dotted components of `name` (never the whole name)."""
    parts = name.split(".")[:-1]
    return [""] + [".".join(parts[:depth]) + "." for depth in range(1, min(len(parts), PREFIX_DEPTH) + 1)]


def match_names(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> tuple[str, str]:
    """The (strip, add) prefixes under which most of `source`'s tensors land on a `target` tensor of the same
    name and shape; among equals the shortest prefixes win, so names that already agree stay as they are."""
    adds: dict[str, list[str]] = {}  # a target name's tail -> the prefixes that complete it
    for name in target:
        for add in _prefixes(name):
            adds.setdefault(name[len(add):], []).append(add)
    votes: Counter[tuple[str, str]] = Counter()
    for key, value in source.items():
        for strip in _prefixes(key):
            tail = key[len(strip):]
            for add in adds.get(tail, []):
                if target[add + tail].shape == value.shape:
                    votes[(strip, add)] += 1
    if not votes:
        return "", ""
    return min(votes, key=lambda sa: (-votes[sa], len(sa[0]) + len(sa[1]), sa))


def load_weights(module: torch.nn.Module, path: Path) -> FineTuneReport:
    """Copy the file's tensors that match `module`'s by name and shape; report what was loaded and skipped.
    Nothing matching at all means the file is for another model: an error."""
    source = read_state_dict(path)
    target = module.state_dict()
    strip, add = match_names(source, target)
    chosen: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in source.items():
        name = add + key[len(strip):] if key.startswith(strip) else None
        if name is None or name not in target:
            skipped.append(f"{key}: no such tensor in the model")
        elif target[name].shape != value.shape:
            skipped.append(f"{key}: shape {list(value.shape)} vs the model's {list(target[name].shape)}")
        else:
            chosen[name] = value
    if not chosen:
        example = ", ".join(list(target)[:3])
        raise MlopsError(f"model.weights: no tensor of {path} matches the model by name and shape (the file "
                         f"has e.g. {', '.join(list(source)[:3])}; the model: {example}): is it for another "
                         "model?")
    missing, unexpected = module.load_state_dict(chosen, strict=False)
    assert not unexpected, unexpected  # every chosen name came from the module's own state_dict
    return FineTuneReport(weights=str(path), strip=strip, add=add, loaded=len(chosen), skipped=skipped,
                          untouched=len(missing))


def freeze(module: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Stop training the parameters whose name matches a pattern (fnmatch); each pattern must match one."""
    named = dict(module.named_parameters())
    frozen: list[str] = []
    for pattern in patterns:
        hits = [name for name in named if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            example = ", ".join(list(named)[:6])
            raise MlopsError(f"model.freeze: '{pattern}' matches no parameter of the model (its parameters "
                             f"are "
                             f"named like {example}, …)")
        frozen += [h for h in hits if h not in frozen]
    for name in frozen:
        named[name].requires_grad_(False)
    if len(frozen) == len(named):
        raise MlopsError(f"model.freeze: {patterns} freeze every parameter, leaving nothing to train")
    return frozen


def fine_tune(module: torch.nn.Module, weights: Path | None, patterns: list[str]) -> FineTuneReport | None:
    """`model.weights` then `model.freeze`, as the recipe asks; None when it asks for neither."""
    if weights is None and not patterns:
        return None
    report = load_weights(module, weights) if weights is not None else FineTuneReport()
    if patterns:
        frozen = freeze(module, patterns)
        params = dict(module.named_parameters())
        values = sum(params[n].numel() for n in frozen)
        report = report.model_copy(update={"frozen": frozen, "frozen_values": values})
    return report


def resolve(path: str, root: str | None) -> Path:
    """`model.weights` as given: relative paths start at `root` (the recipe's folder) when known."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or root is None else Path(root) / p

