"""Run one trial process and read back what it did. Plain functions: the Prefect task wraps `launch`."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.engine.children import clean_env, die_with_parent
from mlops.sweep.trial import TrialJob


class TrialFailed(MlopsError):
    """The trial's training raised; the study records the error and goes on."""


def launch(job: TrialJob) -> dict[str, Any]:
    env = clean_env()
    with tempfile.TemporaryDirectory(prefix="mlops-trial-") as tmp:
        job_file = Path(tmp) / "job.json"
        job = job.model_copy(update={"result_file": str(Path(tmp) / "result.json")})
        job_file.write_text(job.model_dump_json())
        proc = subprocess.run([sys.executable, "-m", "mlops.sweep.trial", str(job_file)], env=env,
                              preexec_fn=die_with_parent())
        result_path = Path(job.result_file)
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if result is None:
        raise TrialFailed(f"trial {job.trial_number} process exited with code {proc.returncode} and no result")
    if result.get("state") == "failed":
        raise TrialFailed(f"trial {job.trial_number}: {result['error']}")
    return result
