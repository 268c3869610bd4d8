"""scikit-learn's handwritten digits (1,797 8x8 greys) as PNG files with a manifest CSV, so the image recipe
reads real image files by path:

    python examples/make_digits.py            # writes examples/digits/{png/*.png, manifest.csv}
    mlops run recipes/digits_cnn.yaml

The manifest has `image` (the PNG's path, relative to the manifest), `label` (the digit as a word, so the task
is multi-class and the labels read well) and `ink` (the share of dark pixels: metadata beside the image).
Pixels are scaled from 0..16 to 0..255 and each image is enlarged to 16x16 (nearest neighbour), as a scanner
would deliver it; the recipe resizes to the size its network takes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digits(dest: Path, limit: int | None = None, size: int = 16) -> Path:
    """Write the PNGs under dest/png and dest/manifest.csv; returns the manifest's path."""
    digits = load_digits()
    images = digits.images if limit is None else digits.images[:limit]
    (dest / "png").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (pixels, target) in enumerate(zip(images, digits.target, strict=False)):
        grey = np.clip(pixels * (255 / 16), 0, 255).astype(np.uint8)
        path = Path("png") / f"{i:04d}.png"
        Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.NEAREST).save(dest / path)
        rows.append({"image": path.as_posix(), "label": NAMES[int(target)], "ink": float((grey > 64).mean())})
    manifest = dest / "manifest.csv"
    tmp = manifest.with_suffix(".csv.tmp")  # a crash never leaves a manifest naming files not yet written
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "digits")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = parser.parse_args(argv)
    manifest = write_digits(args.out, args.limit)
    print(f"wrote {manifest} ({sum(1 for _ in open(manifest)) - 1} images)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
