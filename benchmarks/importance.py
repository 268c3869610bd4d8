"""Permutation importance of an exported bundle: mlops (`mlops.evaluate.importance`, every repeat of a column in one
ONNX Runtime call) vs scikit-learn's `permutation_importance` over the same bundle (a thin estimator whose
predict_proba runs the bundle's Predictor on the shuffled frame), same rows, same score (AUROC), same repeats.

    .venv/bin/python benchmarks/importance.py [--rows 100] [--repeats 5] [--runs 3]

Data: breast cancer (the quickstart's 30 numeric columns), a linear bundle over its preprocessing fitted on 400
rows (tests/serve_fixtures.py), `--rows` held-out rows. Each contender runs `--runs` times after one warm-up;
the table gives the median wall time and the top column each found.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from sklearn.datasets import load_breast_cancer
    from sklearn.inspection import permutation_importance as sk_importance
    from sklearn.metrics import roc_auc_score

    from mlops.evaluate.importance import permutation_importance
    from mlops.evaluate.scored import encode_targets, onnx_outputs
    from mlops.package.predictor import Predictor
    from tests.serve_fixtures import build_bundle

    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "y"})
    frame["y"] = np.where(frame["y"] == 1, "benign", "malignant")
    bundle = build_bundle(Path(tempfile.mkdtemp()) / "bench", frame=frame.iloc[:400])
    test = frame.iloc[400:400 + args.rows]
    predictor = Predictor(bundle, max_batch=len(test))
    y = encode_targets(test["y"], "binary", predictor.meta.labels)
    features = test.drop(columns=["y"])

    class Bundle:  # what scikit-learn needs of an estimator: fit and predict_proba
        def fit(self, *_: Any) -> Bundle:
            return self

        def predict_proba(self, rows: Any) -> np.ndarray:
            return onnx_outputs(predictor.session, predictor.graph_feeds(predictor.frame_feeds(rows)), "binary")

    def ours() -> str:
        return str(permutation_importance(bundle, test, "y", args.repeats, seed=0)["columns"][0]["column"])

    def sklearn() -> str:
        found = sk_importance(Bundle(), features, y, n_repeats=args.repeats, random_state=0,
                              scoring=lambda est, x, t: roc_auc_score(t, est.predict_proba(x)[:, 1]))
        return str(features.columns[int(np.argmax(found.importances_mean))])

    print(f"{len(features.columns)} columns x {args.repeats} repeats over {len(test)} rows, median of {args.runs}")
    print("| contender | wall time | top column |\n| --- | --- | --- |")
    for name, fn in (("mlops permutation_importance", ours), ("scikit-learn permutation_importance", sklearn)):
        fn()  # warm-up: imports and first session runs
        times, top = [], ""
        for _ in range(args.runs):
            start = time.perf_counter()
            top = fn()
            times.append(time.perf_counter() - start)
        print(f"| {name} | {statistics.median(times):.3f} s | {top} |")


if __name__ == "__main__":
    main()
