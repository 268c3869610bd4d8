"""The multi-process training entrypoint: `python -m mlops.train.worker job.json`.

Lightning's DDP launcher re-runs the current command line once per extra rank. Run from inside
`mlops run` that would start a second Prefect flow (and under multirun, a second multirun); run from
this dedicated module it just starts more copies of this worker. The same entrypoint works under
torchrun or SLURM. Rank 0 writes `train_result.json` into the job's out_dir.
"""

from __future__ import annotations

import json
import sys

from mlops.train.fit import TrainJob, fit


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m mlops.train.worker JOB.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        job = TrainJob.model_validate(json.load(f))
    fit(job)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
