"""One sweep trial in its own process: `python -m mlops.sweep.trial job.json`.

A process per trial gives parallel trials real parallelism (no GIL between them), lets DDP relaunch
ranks safely, and isolates a crashing trial from the study. The process dies with its parent, so a
killed sweep leaves no orphan training behind.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from pydantic import BaseModel

from mlops.engine.execute import execute_until
from mlops.engine.validate import load_validated
from mlops.train.pruning import PruneLink


class TrialJob(BaseModel):
    recipe: str
    overrides: list[str]
    parent_run_id: str
    trial_number: int
    prune: PruneLink | None
    result_file: str


def main(argv: list[str]) -> int:
    job = TrialJob.model_validate_json(Path(argv[0]).read_text())
    try:
        loaded = load_validated(job.recipe, job.overrides)
        result = execute_until(loaded, "evaluate", job.parent_run_id, prune=job.prune,
                               tags={"mlops.trial": str(job.trial_number)})
    except Exception as exc:
        traceback.print_exc()
        Path(job.result_file).write_text(json.dumps({"state": "failed", "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    Path(job.result_file).write_text(json.dumps(result.model_dump(mode="json")))  # a TrialRun
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
