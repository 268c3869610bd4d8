"""Descriptors: a few numbers (and a script name) per image or text input, computed the same way for the
training reference, every logged prediction, evaluation slices and error analysis.

A model's drift on unstructured inputs is mostly invisible in scalar columns: a new camera, new slang or new
product names change the pixels and words, not a number the log already holds. Each descriptor is cheap
(vectorised numpy on the decoded pixels; one pass over a text), so the serving process computes them per
request, and the monitor judges them with the same fast statistics as any numeric or categorical column.

image   width, height          of the image as sent (before resizing to the model's size)
        brightness, contrast   mean and standard deviation of the grey level, 0-255
        sharpness              mean absolute Laplacian of the grey level (blur lowers it)
        red, green, blue       channel means, 0-255 (colour models only)
text    chars, words           length in characters and whitespace-separated words
        unknown_share          share of the model's tokens that are its tokenizer's unknown token
        non_letter_share       share of non-space characters that are not letters
        script                 the most frequent Unicode script among the letters (latin, cyrillic, ...;
                               "none" without letters): a categorical descriptor
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


IMAGE_NUMERIC = ("width", "height", "brightness", "contrast", "sharpness")
COLOUR_NUMERIC = ("red", "green", "blue")
TEXT_NUMERIC = ("chars", "words", "unknown_share", "non_letter_share")
TEXT_CATEGORICAL = ("script",)
DESCRIPTOR_NAMES = frozenset(IMAGE_NUMERIC + COLOUR_NUMERIC + TEXT_NUMERIC + TEXT_CATEGORICAL)
SEPARATOR = "."  # a descriptor's column is "<input>.<descriptor>", e.g. "review.chars", "image.brightness"
# ITU-R BT.601 luma: the grey level Pillow's convert("L") computes
_LUMA = (0.299, 0.587, 0.114)


def descriptor_columns(name: str, kind: str, channels: int = 1) -> dict[str, str]:
    """The descriptor columns of one input, by kind ("numeric" or "categorical"), in a fixed order."""
    if kind == "image":
        numeric = IMAGE_NUMERIC + (COLOUR_NUMERIC if channels == 3 else ())
        return {f"{name}{SEPARATOR}{d}": "numeric" for d in numeric}
    if kind == "text":
        return ({f"{name}{SEPARATOR}{d}": "numeric" for d in TEXT_NUMERIC}
                | {f"{name}{SEPARATOR}{d}": "categorical" for d in TEXT_CATEGORICAL})
    return {}


def described_input(column: str) -> str:
    """The input a descriptor column describes ("review.chars" -> "review"; an input's own name may hold dots)."""
    return column.rpartition(SEPARATOR)[0]


def image_descriptors(name: str, pixels: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Descriptors of decoded images: `pixels` uint8 [N, H, W, C] as the model takes them, `sizes` [N, 2] the
    (width, height) each image had as sent. Few numpy calls: the server computes them for every request."""
    import numpy as np
    n, h, w, c = pixels.shape
    # reductions as matrix products: numpy's strided reductions over small images cost more than the
    # arithmetic (a channel mean of one 32x32 image: 17 us as .mean(axis=1), 1.5 us as a product)
    flat_px = pixels.reshape(n, h * w, c).astype(np.float32)
    grey = flat_px[..., 0] if c == 1 else flat_px @ np.asarray(_LUMA, dtype=np.float32)
    flat = grey.astype(np.float64)
    ones = np.ones(h * w)
    mean = flat @ ones / (h * w)
    squares = (flat * flat) @ ones
    out = {"width": sizes[:, 0].astype(np.float64), "height": sizes[:, 1].astype(np.float64),
           "brightness": mean, "contrast": np.sqrt(np.maximum(squares / (h * w) - mean * mean, 0.0)),
           "sharpness": _laplacian(grey.reshape(n, h, w))}
    if c == 3:
        # integer sums are exact in float32 below 2**24 (a 256x256 image): no float64 copy of the pixels then
        exact = h * w * 255 < 2**24
        means = np.matmul(ones.astype(np.float32) if exact else ones,
                          flat_px if exact else flat_px.astype(np.float64)).astype(np.float64) / (h * w)
        out |= {k: means[:, j] for j, k in enumerate(COLOUR_NUMERIC)}
    return {f"{name}{SEPARATOR}{k}": v for k, v in out.items()}


def _laplacian(grey: np.ndarray) -> np.ndarray:
    """Mean |4-neighbour Laplacian| per image: edges and noise raise it, blur lowers it."""
    import numpy as np
    if grey.shape[1] < 3 or grey.shape[2] < 3:
        return np.zeros(grey.shape[0])
    lap = grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
    lap -= 4 * grey[:, 1:-1, 1:-1]
    return np.abs(lap).reshape(len(grey), -1).mean(axis=1, dtype=np.float64)


def text_descriptors(name: str, texts: list[str], ids: np.ndarray | None = None, unknown_id: int | None = None,
                     pad_id: int = 0) -> dict[str, np.ndarray]:
    """Descriptors of texts; with the model's token ids [N, L] and its tokenizer's unknown id, the share of
    tokens it did not know (NaN for a text without tokens)."""
    import numpy as np
    n = len(texts)
    chars = np.fromiter((len(t) for t in texts), np.float64, n)
    words = np.fromiter((len(t.split()) for t in texts), np.float64, n)
    non_letter = np.empty(n)
    scripts = np.empty(n, dtype=object)
    for i, t in enumerate(texts):
        non_letter[i], scripts[i] = _letters(t)
    unknown = np.full(n, np.nan)
    if ids is not None and unknown_id is not None:
        real = (ids != pad_id).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            unknown = np.where(real > 0, (ids == unknown_id).sum(axis=1) / np.maximum(real, 1), np.nan)
    out = {"chars": chars, "words": words, "unknown_share": unknown, "non_letter_share": non_letter,
           "script": scripts}
    return {f"{name}{SEPARATOR}{k}": v for k, v in out.items()}


def _letters(text: str) -> tuple[float, str]:
    """(share of non-space characters that are not letters, the letters' most frequent script)."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return float("nan"), "none"
    letters = [c for c in visible if c.isalpha()]
    share = 1 - len(letters) / len(visible)
    if not letters:
        return share, "none"
    if text.isascii():  # the common case, without a Unicode name lookup per character
        return share, "latin"
    scripts = Counter(_script(c) for c in letters)
    return share, scripts.most_common(1)[0][0]


def _script(char: str) -> str:
    # Unicode names start with the script for letters: "LATIN SMALL LETTER E", "CYRILLIC CAPITAL LETTER A",
    # "CJK UNIFIED IDEOGRAPH-4E00", "HIRAGANA LETTER A"; unnamed or odd ones are "other"
    return unicodedata.name(char, "OTHER ?").split(" ", 1)[0].lower()
