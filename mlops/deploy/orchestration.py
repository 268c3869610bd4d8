"""Prefect deployments of a recipe's flows: `prefect.yaml` for users, and registration with a running server.

One deployment per flow of `mlops.flows` (train, evaluate, monitor, retrain), named after the recipe, with
the schedules, parameters and work pool of the recipe's `deploy.prefect`. Registration goes through
`prefect deploy --all` over the very file rendered here, so what users commit is what gets registered.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlops
from mlops.core.errors import MlopsError
from mlops.deploy.render import render
from mlops.recipe.deploy import PrefectConfig

FLOW_NAMES = {"train": "mlops-train", "evaluate": "mlops-evaluate", "monitor": "mlops-monitor",
              "retrain": "mlops-retrain"}
DESCRIPTIONS = {
    "train": "train, evaluate, export, gate and register the recipe's model",
    "evaluate": "evaluate the champion on the recipe's data and gates",
    "monitor": "drift and live metrics of the served model against the recipe's thresholds",
    "retrain": "retrain the model and decide champion/challenger",
}


@dataclass(frozen=True)
class FlowDeployment:
    flow: str  # train | evaluate | monitor | retrain
    name: str  # the deployment's name (the recipe's): `mlops-train/quickstart`
    entrypoint: str
    description: str
    parameters: dict[str, Any]
    work_pool: str
    work_queue: str | None
    tags: list[str]
    schedule: dict[str, Any] | None
    triggers: list[dict[str, Any]] = field(default_factory=list)  # Prefect deployment event triggers

    @property
    def full_name(self) -> str:
        return f"{FLOW_NAMES[self.flow]}/{self.name}"


def retrain_triggers(model_name: str, events: list[str]) -> list[dict[str, Any]]:
    """The automation that closes the loop: the monitor's alert events for this model run the retrain
    deployment, with the event's name as the reason. Cooldown and daily limits are enforced by the retrain
    itself (from its audit log), whatever fires it, so a burst of alerts starts at most one retrain."""
    if not events:
        return []
    return [{"enabled": True, "match": {"prefect.resource.id": f"mlops.model.{model_name}"},
             "expect": sorted(events), "posture": "Reactive", "threshold": 1, "within": 0,
             "parameters": {"reason": "{{ event.event }}"}}]


def flow_deployments(cfg: PrefectConfig, recipe_name: str, model_name: str, recipe_path: str,
                     overrides: list[str], retrain_events: list[str] | None = None) -> list[FlowDeployment]:
    """The enabled flows of `cfg` as deployments; `recipe_path` as the flows will see it (relative to the
    project directory when inside it). `retrain_events`: the monitor events that run the retrain deployment
    (from the recipe's `improve.triggers`)."""
    base = {"recipe": recipe_path, "overrides": list(overrides)}
    defaults = {"train": {}, "evaluate": {"model": f"{model_name}@champion"},
                "monitor": {"model": f"{model_name}@champion"}, "retrain": {"reason": "scheduled"}}
    out = []
    for flow, sched in cfg.flows.items():
        if not sched.enabled:
            continue
        schedule: dict[str, Any] | None = None
        if sched.cron is not None:
            schedule = {"cron": sched.cron, "timezone": sched.timezone, "active": True}
        elif sched.interval_s is not None:
            schedule = {"interval": sched.interval_s, "timezone": sched.timezone, "active": True}
        out.append(FlowDeployment(
            flow=flow, name=recipe_name, entrypoint=f"mlops.flows.{flow}", description=DESCRIPTIONS[flow],
            parameters=base | defaults[flow] | sched.parameters, work_pool=cfg.work_pool, work_queue=cfg.work_queue,
            tags=[*cfg.tags, recipe_name, flow], schedule=schedule,
            triggers=retrain_triggers(model_name, retrain_events or []) if flow == "retrain" else []))
    return out


def prefect_yaml(deployments: list[FlowDeployment], recipe_name: str, project_dir: str,
                 prefect_version: str | None = None, mlops_version: str | None = None) -> str:
    if prefect_version is None:
        from importlib import metadata

        try:
            prefect_version = metadata.version("prefect")
        except metadata.PackageNotFoundError:
            prefect_version = "3"
    return render("prefect.yaml.j2", recipe_name=recipe_name, project_dir=project_dir,
                  prefect_version=prefect_version, mlops_version=mlops_version or mlops.__version__,
                  work_pool=deployments[0].work_pool if deployments else "mlops",
                  deployments=[asdict(d) for d in deployments])


def prefect_api_url() -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise MlopsError("--prefect registers deployments with a running Prefect server: set PREFECT_API_URL "
                         "(e.g. http://127.0.0.1:4200/api after `prefect server start`)")
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=10) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise MlopsError(f"no Prefect server answers at PREFECT_API_URL={url} ({exc}): start one with "
                         "`prefect server start`, or fix the URL") from None
    return url


def ensure_work_pool(name: str) -> bool:
    """Create the process work pool `name` unless it exists; True when it was created."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    async def ensure() -> bool:
        async with get_client() as client:
            try:
                await client.read_work_pool(name)
                return False
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                return True

    return asyncio.run(ensure())


def register(prefect_file: Path, deployments: list[FlowDeployment], project_dir: Path) -> list[str]:
    """Register every deployment of `prefect_file` with the server at PREFECT_API_URL (creating its work
    pools), through `prefect deploy --all`; returns their full names."""
    prefect_api_url()
    for pool in sorted({d.work_pool for d in deployments}):
        ensure_work_pool(pool)
    proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                           str(prefect_file.resolve())], cwd=project_dir, capture_output=True, text=True,
                          timeout=600, env=os.environ | {"PREFECT_CLI_COLORS": "false"})
    if proc.returncode != 0:
        raise MlopsError(f"`prefect deploy` failed to register {prefect_file}:\n"
                         f"{(proc.stdout + proc.stderr).strip()[-4000:]}")
    return [d.full_name for d in deployments]
