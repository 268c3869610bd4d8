"""Run a plan as a Prefect flow: one task per step, our own content-keyed cache in front of each.

Prefect's API is the server at PREFECT_API_URL, else a local one kept across commands (`prefect_server`;
MLOPS_PREFECT_SERVER=ephemeral: Prefect's temporary server per command). Multirun jobs are subflows
of one parent flow in this process (one temporary server, not one per job), each its own MLflow run
nested under a parent run. A step our cache had ends its task run Cached; each run publishes its gate table
and links to its MLflow run and evaluation report as Prefect artifacts; the `mlops` logger's lines go to the
run's logs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlops.core.errors import GateError
from mlops.core.log import LOGGER_NAME, say
from mlops.core.log import logger as mlops_logger
from mlops.core.registry import experiment_id, registry_client, tracking_uri
from mlops.engine.execute import execute, run_step
from mlops.engine.plan import Plan
from mlops.engine.prefect_server import check_home, ensure_server
from mlops.engine.steps.common import RunContext
from mlops.engine.summary import MultirunSummary, RunSummary, VerdictBrief
from mlops.engine.validate import load_validated
from mlops.recipe import LoadedRecipe


def configure_prefect() -> None:
    """Defaults that make Prefect's temporary server quiet offline (no analytics, no telemetry) and patient
    on a slow machine (its 20 s start-up timeout is too tight for a loaded CI box); and the `mlops` logger's
    lines in each run's logs (Prefect gives the loggers named in PREFECT_LOGGING_EXTRA_LOGGERS its API handler
    when it is imported: so this runs first). Cheap: nothing of Prefect is imported here."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # library code says what it does through the `mlops` logger; a print() is a CLI's, not a run's
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")
    # `say()` outside any run (validate, a refused retrain) must not warn that it has no flow run to log to
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    extra = [n.strip() for n in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if n.strip()]
    if LOGGER_NAME not in extra:
        os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join([*extra, LOGGER_NAME])


def prepare_flow_run() -> None:
    """What must hold before a flow starts in this process: a watchdog for the temporary server it may start,
    and the `mlops` logger feeding the run's logs (also when Prefect was imported before configure_prefect).
    Done here, not at import: the watchdog's hook imports Prefect's server module (about 4 s).
    Without a server named (PREFECT_API_URL), the local one kept across commands runs it (prefect_server).
    A home it cannot write is refused first (Prefect's own, from its settings: the environment, a profile or
    prefect.toml), unless a server is named by URL there (Prefect then keeps nothing in it)."""
    settings = get_current_settings()
    if not settings.api.url:
        check_home(Path(settings.home).expanduser())
    ensure_server()
    _watch_temporary_server()
    log_to_runs()


def log_to_runs() -> None:
    """Prefect's API log handler (the `prefect.extra` logger's: no console handler, so no line prints twice)
    on the `mlops` logger, once."""
    from prefect.logging.handlers import APILogHandler

    log = mlops_logger()
    if not any(isinstance(h, APILogHandler) for h in log.handlers):
        for handler in logging.getLogger("prefect.extra").handlers:
            if isinstance(handler, APILogHandler):
                log.addHandler(handler)


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
from prefect.settings import get_current_settings  # noqa: E402
from prefect.states import Completed, Failed, State  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402


def _step(plan: Plan, ctx: RunContext, name: str) -> Any:
    """One step as a task run. A result our cache had ends it Cached (the state Prefect's own cache gives),
    so the UI tells a reused step from one that ran."""
    step = plan.step(name)
    reused = step.cached and plan.cache.has(name, step.key)
    output = run_step(plan, ctx, name)
    return Completed(name="Cached", message="reused from the mlops step cache", data=output) if reused else output


step_task = task(_step, cache_policy=NO_CACHE, persist_result=False)


def as_tasks(name: str) -> Any:
    """Each step a Prefect task named after it; the caller gets the step's output, Cached or not."""
    named = step_task.with_options(name=name)

    def call(plan: Plan, ctx: RunContext, step: str) -> Any:
        # quoted: Prefect would otherwise walk the whole plan and every earlier result (recipe models, metrics,
        # histories) looking for futures, for each task (about 1 s of a cached run under cProfile), and a plan
        # holds none
        out = named(quote(plan), quote(ctx), step)
        return out.result() if isinstance(out, State) else out  # a task that returns a state hands it back

    return call


# --- artifacts: what a run shows on its page in the Prefect UI ---------------------------------------------


def artifact_key(*parts: str) -> str:
    """Prefect's artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:100]


def mlflow_run_url(uri: str, run_id: str) -> tuple[str | None, str]:
    """The MLflow UI's page of `run_id` (None unless the tracking URI is a server), and its experiment id."""
    exp = str(registry_client(uri).get_run(run_id).info.experiment_id)
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}", exp
    return None, exp


def gate_text(verdict: VerdictBrief) -> str:
    """A gate as the run's lines name it: `test/auroc >= 0.85`, `accuracy [sex=F] drop vs champion <= 0.02`."""
    return f"{verdict.metric}{f' [{verdict.slice}]' if verdict.slice else ''} {verdict.threshold}"


def publish_gates(model: str, outcome: str, verdicts: list[VerdictBrief]) -> None:
    """The gate table: one row per gate, with its threshold, value and status."""
    from prefect.artifacts import create_table_artifact

    # the gate whole in one cell: the UI renders cells as Markdown, and a cell starting ">=" is a blockquote
    rows = [{"gate": gate_text(v), "value": None if v.value is None else round(v.value, 6),
             "status": v.status.upper(), "detail": v.detail} for v in verdicts]
    create_table_artifact(rows, key=artifact_key(model, "gates"),
                          description=f"{model}: gates {outcome.upper()}")


def publish_links(model: str, uri: str, run_id: str, report: str | None) -> None:
    """Where to read more: the MLflow run (a link when MLflow is a server) and the evaluation report."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    url, exp = mlflow_run_url(uri, run_id)
    if url:
        create_link_artifact(url, link_text=f"MLflow run {run_id}", key=artifact_key(model, "mlflow-run"),
                             description=f"{model}: the MLflow run")
    lines = [f"### {model}", "", "- MLflow run: " + (f"[{run_id}]({url})" if url else f"`{run_id}`"),
             f"- experiment `{exp}` in `{uri}`" + ("" if url else f" (`mlflow ui --backend-store-uri {uri}`)")]
    if report:
        lines.append(f"- evaluation report: `{report}`")
    create_markdown_artifact("\n".join(lines), key=artifact_key(model, "run"),
                             description=f"{model}: MLflow run and evaluation report")


def publish_run(summary: RunSummary) -> None:
    """A training run's artifacts; a failure to publish is said, not raised: the run itself succeeded."""
    model = f"{summary.model_name}-v{summary.model_version}" if summary.model_version else summary.model_name
    try:
        publish_gates(model, summary.gates.outcome, summary.gates.verdicts)
        publish_links(model, summary.tracking_uri, summary.run_id, summary.gates.report)
    except Exception as exc:  # the Prefect API refused or is gone: the model is trained and registered anyway
        say(f"could not publish the run's Prefect artifacts: {type(exc).__name__}: {exc}")


def _failed_run(exc: GateError) -> RunSummary | None:
    """The summary a run that failed its gates wrote (beside its report, which the error names)."""
    report = next((line[len("report: "):] for line in str(exc).splitlines() if line.startswith("report: ")), None)
    summary = Path(report).parent / "summary.json" if report else None
    if summary is None or not summary.is_file():
        return None
    return RunSummary.model_validate_json(summary.read_text())


# --- the flows ----------------------------------------------------------------------------------------------


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return " ".join([Path(params["recipe"]).stem, *params.get("overrides", [])])


def _multirun_name() -> str:
    from prefect.runtime import flow_run

    return f"{Path(flow_run.parameters['recipe']).stem} multirun"


# recipes that `run` and `multirun` were handed validated (the CLI checks every job before any flow starts), by
# (recipe path, overrides): the flow takes each once instead of composing and checking it again. Its parameters
# stay a path and overrides, so a deployment's flow run still loads the recipe itself.
_validated: dict[tuple[str, tuple[str, ...]], LoadedRecipe] = {}


def _hand_over(recipe: str, validated: list[LoadedRecipe] | None) -> None:
    for loaded in validated or []:
        _validated[(recipe, tuple(loaded.overrides))] = loaded


def _load(recipe: str, overrides: list[str]) -> LoadedRecipe:
    return _validated.pop((recipe, tuple(overrides)), None) or load_validated(recipe, overrides)


@flow(name="mlops-run", flow_run_name=_run_name, validate_parameters=False)
def run_flow(recipe: str, overrides: list[str], parent_run_id: str | None = None,
             allow_failed_gates: bool = False) -> RunSummary | State:
    """Train, evaluate, export, gate and register one recipe (the deployable entrypoint)."""
    log_to_runs()
    try:
        summary = execute(_load(recipe, overrides), parent_run_id, step_runner=as_tasks,
                          allow_failed_gates=allow_failed_gates)
    except GateError as exc:  # a verdict, not a crash: the flow run is Failed with the reason, no traceback
        failed = _failed_run(exc)
        if failed is not None:
            publish_run(failed)
        return Failed(message=str(exc).splitlines()[0], data=exc)
    publish_run(summary)
    return summary


@flow(name="mlops-multirun", flow_run_name=_multirun_name, validate_parameters=False)
def multirun_flow(recipe: str, jobs: list[list[str]], allow_failed_gates: bool = False) -> MultirunSummary | State:
    """Hydra-style multirun: one subflow and one nested MLflow run per combination of overrides."""
    loaded = [_load(recipe, job) for job in jobs]  # validate every job before running any
    _hand_over(recipe, loaded)  # each job's subflow takes its recipe from here
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
            say(f"multirun job {i}/{len(jobs)}: {' '.join(job) or '(no overrides)'}")
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


def run(recipe: str | Path, overrides: list[str], allow_failed_gates: bool = False,
        validated: LoadedRecipe | None = None) -> RunSummary:
    """One run of `recipe` as a flow run; `validated`: the recipe with these overrides, already validated."""
    prepare_flow_run()
    path = str(Path(recipe).resolve())
    _hand_over(path, [validated] if validated else None)
    state = run_flow(path, overrides, allow_failed_gates=allow_failed_gates, return_state=True)
    # raises the flow's exception, GateError included; model_validate hands the summary back as it is
    return RunSummary.model_validate(state.result())


def multirun(recipe: str | Path, jobs: list[list[str]], allow_failed_gates: bool = False,
             validated: list[LoadedRecipe] | None = None) -> MultirunSummary:
    """Every job of a multirun as a subflow run; `validated`: the jobs' recipes, already validated."""
    prepare_flow_run()
    path = str(Path(recipe).resolve())
    _hand_over(path, validated)
    state = multirun_flow(path, jobs, allow_failed_gates=allow_failed_gates, return_state=True)
    return MultirunSummary.model_validate(state.result())
