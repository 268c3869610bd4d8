"""Run one trial process and read back what it did. Plain functions: the Prefect task wraps `launch`.

A trial launched in the sweep's own process forks from the sweep's warm worker when there is one
(`mlops.sweep.warm`); elsewhere (a trial task run by a remote Prefect worker, `MLOPS_SWEEP_WARM=0`, a worker
that died) it is a new `python -m mlops.sweep.trial` process. Either way it is one process per trial.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.engine.children import clean_env, die_with_parent
from mlops.sweep import warm
from mlops.sweep.trial import TrialJob

TRIAL_MODULE = "mlops.sweep.trial"
PROCESS = "process"  # the key of a launch's result that says which process ran the trial (not a TrialRun field)


class TrialFailed(MlopsError):
    """The trial's training raised; the study records the error and goes on."""


def launch(job: TrialJob) -> dict[str, Any]:
    """The trial's TrialRun as JSON, plus `process`: {pid, parent, warm} of the process that ran it."""
    env = clean_env()
    with tempfile.TemporaryDirectory(prefix="mlops-trial-") as tmp:
        job_file = Path(tmp) / "job.json"
        job = job.model_copy(update={"result_file": str(Path(tmp) / "result.json")})
        job_file.write_text(job.model_dump_json())
        returncode, process = _run([str(job_file)], env)
        result_path = Path(job.result_file)
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if result is None:
        raise TrialFailed(f"trial {job.trial_number} process exited with code {returncode} and no result")
    if result.get("state") == "failed":
        raise TrialFailed(f"trial {job.trial_number}: {result['error']}")
    return result | {PROCESS: process}


def _run(args: list[str], env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """Run the trial module: forked from the warm worker when it suits, else as a new process."""
    worker = warm.current()
    if worker is not None and worker.suits(env):
        started: list[int] = []
        try:
            code = worker.run(TRIAL_MODULE, args, env, on_start=started.append)
            return code, {"pid": started[0], "parent": worker.pid, "warm": True}
        except warm.WorkerGone:
            pass  # said once by the worker; this trial (killed with it, if it had started) runs anew below
    proc = subprocess.Popen([sys.executable, "-m", TRIAL_MODULE, *args], env=env, preexec_fn=die_with_parent())
    try:
        code = proc.wait()
    except BaseException:  # interrupted: as subprocess.run does, the trial does not train on unseen
        proc.kill()
        proc.wait()
        raise
    return code, {"pid": proc.pid, "parent": os.getpid(), "warm": False}
