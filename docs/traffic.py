"""Send rows of the breast cancer data to a running `mlops serve quickstart@champion`, and write their labels.

    .venv/bin/python docs/traffic.py [--url http://127.0.0.1:8080] [--rows 600] [--scale 1.0] [--labels FILE]

The traffic of the tour in README.md: rows drawn from scikit-learn's breast cancer data (the quickstart recipe's
data), sent as KServe V1 requests of 50 rows, each request with an id, so every row is logged with a known
prediction id. The true labels go to a CSV (`id,label`, default labels.csv) for `mlops feedback`.
`--scale 1.25` measures the tumours 25 % larger: drift that `mlops monitor` reports.
"""

from __future__ import annotations

import argparse
import csv
import json
import urllib.request
import uuid

SIZE_COLUMNS = ("mean_radius", "mean_perimeter", "mean_area", "worst_radius", "worst_perimeter", "worst_area")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server (default %(default)s)")
    parser.add_argument("--model", default="quickstart", help="the model name on the route (default %(default)s)")
    parser.add_argument("--rows", type=int, default=600, help="rows to send (default %(default)s)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the size columns by this (drift)")
    parser.add_argument("--labels", default="labels.csv", help="where the labels go (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame
    data.columns = [str(c).replace(" ", "_") for c in data.columns]
    sample = data.sample(args.rows, replace=args.rows > len(data), random_state=args.seed)
    for column in SIZE_COLUMNS:
        sample[column] = sample[column] * args.scale
    features = sample.drop(columns="target")
    run = uuid.uuid4().hex[:8]
    labelled = []
    for start in range(0, len(sample), 50):
        rows = features.iloc[start:start + 50]
        body = json.dumps({"id": f"tour-{run}-{start}", "instances": rows.to_dict("records")}).encode()
        request = urllib.request.Request(f"{args.url}/v1/models/{args.model}:predict", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            ids = json.load(response)["ids"]
        labelled += zip(ids, sample["target"].iloc[start:start + 50].astype(str), strict=True)
    with open(args.labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        writer.writerows(labelled)
    print(f"sent {len(labelled)} rows to {args.url}; their labels are in {args.labels}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
