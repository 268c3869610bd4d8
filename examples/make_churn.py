"""Generate examples/churn.csv deterministically: numeric and categorical columns with missing values.

    python examples/make_churn.py [--rows 2000] [--seed 0] [--out examples/churn.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def make_churn(rows: int = 2000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "premium"], size=rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], size=rows)
    tenure = rng.gamma(2.0, 12.0, size=rows).round(1)
    monthly = (20 + 15 * (plan == "plus") + 40 * (plan == "premium") + rng.normal(0, 5, rows)).round(2)
    tickets = rng.poisson(1.5, size=rows)
    logit = -1.0 + 0.6 * tickets - 0.05 * tenure + 0.8 * (plan == "basic") + 0.4 * (region == "south")
    churned = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    frame = pd.DataFrame({"tenure_months": tenure, "monthly_charges": monthly, "support_tickets": tickets.astype(float),
                          "plan": plan, "region": region, "churned": churned})
    for col, rate in (("tenure_months", 0.05), ("monthly_charges", 0.03), ("plan", 0.04), ("region", 0.06)):
        frame.loc[rng.random(rows) < rate, col] = np.nan
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).with_name("churn.csv")))
    args = parser.parse_args()
    make_churn(args.rows, args.seed).to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
