"""Run a plan as a Prefect flow: one task per step, our own content-keyed cache in front of each.

Prefect's ephemeral API is used unless PREFECT_API_URL points at a server. Multirun jobs are subflows
of one parent flow in this process (one temporary server, not one per job), each its own MLflow run
nested under a parent run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlops.core.errors import GateError
from mlops.core.registry import experiment_id, registry_client, tracking_uri
from mlops.engine.execute import execute, run_step
from mlops.engine.summary import MultirunSummary, RunSummary
from mlops.engine.validate import load_validated


def configure_prefect() -> None:
    """Defaults that make Prefect's temporary server quiet offline (no analytics, no telemetry) and patient
    on a slow machine (its 20 s start-up timeout is too tight for a loaded CI box); and the server dies with
    the process that started it."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")
    _watch_temporary_server()


# Stops Prefect's temporary server once the process that started it is gone (its parent changes): a parent
# killed by SIGKILL runs no atexit handler, and the server would serve on, orphaned, for good.
_WATCHDOG = """
import os, signal, sys, time
server, parent = int(sys.argv[1]), os.getppid()
while os.getppid() == parent:
    time.sleep(0.2)
try:
    os.kill(server, signal.SIGTERM)
    for _ in range(50):
        time.sleep(0.1)
        os.kill(server, 0)
    os.kill(server, signal.SIGKILL)
except ProcessLookupError:
    pass
"""
_watchdogs: list[subprocess.Popen[bytes]] = []


def _watch_temporary_server() -> None:
    """Give every temporary server Prefect starts (no PREFECT_API_URL) a watchdog process."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return  # a real server: not ours to stop
    from prefect.server.api.server import SubprocessASGIServer  # Prefect imports it anyway to start one

    launch = SubprocessASGIServer._run_uvicorn_command
    if getattr(launch, "watched", False):
        return

    def launch_watched(server: SubprocessASGIServer) -> subprocess.Popen[Any]:
        process = launch(server)
        _watchdogs.append(subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(process.pid)],
                                           stdin=subprocess.DEVNULL, start_new_session=True))
        return process

    launch_watched.watched = True  # type: ignore[attr-defined]
    SubprocessASGIServer._run_uvicorn_command = launch_watched  # type: ignore[method-assign]


configure_prefect()

from prefect import flow, task  # noqa: E402  (configured first: Prefect reads settings at import)
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Failed, State  # noqa: E402

step_task = task(run_step, cache_policy=NO_CACHE, persist_result=False)


def as_tasks(name: str) -> Any:
    """Each step a Prefect task named after it."""
    return step_task.with_options(name=name)


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return " ".join([Path(params["recipe"]).stem, *params.get("overrides", [])])


def _multirun_name() -> str:
    from prefect.runtime import flow_run

    return f"{Path(flow_run.parameters['recipe']).stem} multirun"


@flow(name="mlops-run", flow_run_name=_run_name, validate_parameters=False)
def run_flow(recipe: str, overrides: list[str], parent_run_id: str | None = None,
             allow_failed_gates: bool = False) -> RunSummary | State:
    """Train, evaluate, export, gate and register one recipe (the deployable entrypoint)."""
    try:
        return execute(load_validated(recipe, overrides), parent_run_id, step_runner=as_tasks,
                       allow_failed_gates=allow_failed_gates)
    except GateError as exc:  # a verdict, not a crash: the flow run is Failed with the reason, no traceback
        return Failed(message=str(exc).splitlines()[0], data=exc)


@flow(name="mlops-multirun", flow_run_name=_multirun_name, validate_parameters=False)
def multirun_flow(recipe: str, jobs: list[list[str]], allow_failed_gates: bool = False) -> MultirunSummary | State:
    """Hydra-style multirun: one subflow and one nested MLflow run per combination of overrides."""
    loaded = [load_validated(recipe, job) for job in jobs]  # validate every job before running any
    first = loaded[0]
    uri = tracking_uri(first.recipe.tracking.uri)
    client = registry_client(uri)
    exp = experiment_id(client, first.recipe.experiment, uri)
    parent = client.create_run(exp, run_name=f"{first.recipe.name} multirun ({len(jobs)} jobs)",
                               tags={"mlops.multirun": "true", "mlops.recipe": str(first.path),
                                     "mlops.jobs": json.dumps(jobs)}).info.run_id
    summaries: list[RunSummary] = []
    gate_failures: list[str] = []
    try:
        for i, job in enumerate(jobs, 1):
            print(f"mlops: multirun job {i}/{len(jobs)}: {' '.join(job) or '(no overrides)'}", flush=True)
            try:
                summaries.append(run_flow(recipe, job, parent_run_id=parent, allow_failed_gates=allow_failed_gates))
            except GateError as exc:  # one job's model failing its gates must not stop the others
                gate_failures.append(f"job {i} ({' '.join(job) or 'no overrides'}): {exc}")
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FAILED" if gate_failures else "FINISHED")
    if gate_failures:
        exc = GateError(f"{len(gate_failures)} of {len(jobs)} multirun jobs failed their gates:\n" + "\n".join(gate_failures))
        return Failed(message=str(exc).splitlines()[0], data=exc)
    return MultirunSummary(parent_run_id=parent, jobs=summaries)


def run(recipe: str | Path, overrides: list[str], allow_failed_gates: bool = False) -> RunSummary:
    state = run_flow(str(Path(recipe).resolve()), overrides, allow_failed_gates=allow_failed_gates, return_state=True)
    # raises the flow's exception, GateError included; model_validate hands the summary back as it is
    return RunSummary.model_validate(state.result())


def multirun(recipe: str | Path, jobs: list[list[str]], allow_failed_gates: bool = False) -> MultirunSummary:
    state = multirun_flow(str(Path(recipe).resolve()), jobs, allow_failed_gates=allow_failed_gates, return_state=True)
    return MultirunSummary.model_validate(state.result())
