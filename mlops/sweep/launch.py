"""Run one trial process and read back what it did. Plain functions: the Prefect task wraps `launch`."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlops.errors import MlopsError
from mlops.sweep.trial import TrialJob

PR_SET_PDEATHSIG = 1


class TrialFailed(MlopsError):
    """The trial's training raised; the study records the error and goes on."""


def _die_with_parent() -> None:
    # Linux: the trial gets SIGKILL when the sweep process dies, even by kill -9. No orphans training on.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def launch(job: TrialJob) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "NODE_RANK",
                                                             "RANK", "MASTER_ADDR")}
    with tempfile.TemporaryDirectory(prefix="mlops-trial-") as tmp:
        job_file = Path(tmp) / "job.json"
        job = job.model_copy(update={"result_file": str(Path(tmp) / "result.json")})
        job_file.write_text(job.model_dump_json())
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        proc = subprocess.run([sys.executable, "-m", "mlops.sweep.trial", str(job_file)], env=env,
                              preexec_fn=preexec)  # noqa: PLW1509 (prctl only, no locks taken)
        result_path = Path(job.result_file)
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if result is None:
        raise TrialFailed(f"trial {job.trial_number} process exited with code {proc.returncode} and no result")
    if result.get("state") == "failed":
        raise TrialFailed(f"trial {job.trial_number}: {result['error']}")
    return result
