"""Prefect deployments of a recipe's flows: `prefect.yaml` for users, and registration with a running server.

One deployment per flow of `mlops.flows` (train, evaluate, monitor, retrain), named after the recipe, with
the schedules, parameters and work pool of the recipe's `deploy.prefect`. Registration goes through
`prefect deploy --all` over the very file rendered here, so what users commit is what gets registered.

Where a worker finds the project (recipe, configs/, data) is the file's pull step: a `git_clone` of the project's
repository at the deployed commit, so that any worker with mlops installed can run the flows; or, when the
project has no git remote, `set_working_directory` to this checkout, which only this machine has.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

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


COMMIT = re.compile(r"[0-9a-fA-F]{7,64}")  # SHA-1 or SHA-256, abbreviated or not
GIT_TIMEOUT_S = 30  # local commands only: no fetch, no network


@dataclass(frozen=True)
class CodeSource:
    """Where a worker finds the project when a deployment runs. `git`: cloned from `repository` at `commit` (or
    the tip of `branch`), then `subdirectory` of the clone (the project inside the repository, '' at its root);
    `local`: the directory `directory` of this machine; `image`: `directory` inside the container image `image`,
    which a docker work pool runs (the project and mlops baked in)."""

    kind: Literal["git", "local", "image"]
    directory: str = ""
    image: str | None = None
    repository: str | None = None
    commit: str | None = None
    branch: str | None = None
    subdirectory: str = ""
    warnings: tuple[str, ...] = ()  # what the deployment will miss or cannot do, each with its fix

    def job_variables(self) -> dict[str, Any]:
        """The work pool's job variables: a docker pool's image; a process pool needs none."""
        return {"image": self.image} if self.kind == "image" else {}

    def pull_steps(self) -> list[dict[str, Any]]:
        if self.kind != "git":
            return [{"prefect.deployments.steps.set_working_directory": {"directory": self.directory}}]
        clone: dict[str, Any] = {"id": "clone-project", "repository": self.repository}
        if self.commit:
            clone["commit_sha"] = self.commit
        elif self.branch:
            clone["branch"] = self.branch
        steps: list[dict[str, Any]] = [{"prefect.deployments.steps.git_clone": clone}]
        if self.subdirectory:  # flows run in the project directory, as `mlops run` does
            steps.append({"prefect.deployments.steps.set_working_directory": {
                "directory": "{{ clone-project.directory }}/" + self.subdirectory}})
        return steps

    def describe(self) -> str:
        if self.kind == "local":
            return f"the local directory {self.directory} (this machine only)"
        if self.kind == "image":
            return f"{self.directory} in the image {self.image} (a docker work pool)"
        at = f"commit {self.commit}" if self.commit else f"branch {self.branch}" if self.branch else "default branch"
        return f"{self.repository} at {at}" + (f", in {self.subdirectory}/" if self.subdirectory else "")


def _git(where: Path, *args: str) -> str | None:
    """The output of `git ARGS` in `where`, or None when git is missing or the command fails."""
    try:
        proc = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.rstrip() if proc.returncode == 0 else None  # porcelain lines start with a space


def clonable(text: str) -> bool:
    """A URL git clones (scheme://, or scp-like USER@HOST:PATH) or an existing folder."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://\S+$", text) or re.match(r"^[\w.-]+@[\w.-]+:\S+$", text)
                or Path(text).expanduser().is_dir())


def code_source(project_dir: Path, repository: str | None = None, ref: str | None = None,
                local: bool = False, image: str | None = None, image_dir: str = "/opt/project") -> CodeSource:
    """Where the deployments of the project at `project_dir` get its code: its git repository (the remote
    `origin` unless `repository`) at `ref` (a branch, tag or commit; default the commit checked out), or this
    directory when `local` or when there is no repository to clone (then a warning says how to get one). Warns,
    naming the fix, when the deployed commit would miss uncommitted changes or is not pushed. With `image`, flows
    run in `image_dir` of that image instead (a docker work pool), and no git is involved."""
    if not project_dir.is_dir():
        raise MlopsError(f"--project-dir {project_dir}: {'not a folder' if project_dir.exists() else 'no such folder'}"
                         " (the project whose flows are deployed)")
    project_dir = project_dir.resolve()
    here = CodeSource("local", directory=str(project_dir))
    if local and (repository is not None or ref is not None):
        raise MlopsError("--local-checkout runs the flows in --project-dir on this machine, from no repository: drop "
                         "--git-repo and --git-ref, or --local-checkout")
    if repository is not None and not clonable(repository):
        raise MlopsError(f"--git-repo {repository!r}: expected a repository workers can clone: a URL (https://..., "
                         "ssh://..., git@HOST:PATH, file://...) or a repository's folder")
    if image is not None:
        if local or repository is not None or ref is not None:
            raise MlopsError("a deployment runs in the image or from git, not both: drop --git-repo, --git-ref and "
                             "--local-checkout, or the image")
        return CodeSource("image", directory=image_dir, image=image)
    if local:
        return here
    if ref is not None and (not ref.strip() or ref.startswith("-")):
        raise MlopsError(f"--git-ref {ref!r}: give a branch, tag or commit of the repository")
    top = _git(project_dir, "rev-parse", "--show-toplevel")
    if top is None and repository is None:
        reason = ("git is not installed" if _git(Path.cwd(), "--version") is None
                  else f"{project_dir} is not in a git repository")
        return CodeSource("local", directory=str(project_dir), warnings=(
            f"{reason}: the Prefect deployments run only on this machine (set_working_directory {project_dir}). "
            "To run them on any worker, commit the project to a git repository with a remote (git init; git add .; "
            "git commit; git remote add origin URL; git push -u origin HEAD) and deploy again, or pass "
            "--git-repo URL",))
    subdirectory = ""
    if top is not None:
        inside = project_dir.relative_to(Path(top).resolve())
        subdirectory = "" if inside == Path(".") else inside.as_posix()
    origin = _git(project_dir, "remote", "get-url", "origin") if top is not None else None
    url = repository or origin
    if url is None:
        return CodeSource("local", directory=str(project_dir), warnings=(
            f"the git repository at {top} has no remote 'origin': the Prefect deployments run only on this machine "
            f"(set_working_directory {project_dir}). To run them on any worker, push it (git remote add origin URL; "
            "git push -u origin HEAD) and deploy again, or pass --git-repo URL",))
    warnings: list[str] = []
    commit: str | None = None
    branch: str | None = None
    if ref is None:
        commit = _git(project_dir, "rev-parse", "--verify", "HEAD^{commit}") if top is not None else None
        if commit is None and top is not None:
            raise MlopsError(f"the git repository at {top} has no commit yet: commit and push the project, then "
                             "deploy again")
    elif COMMIT.fullmatch(ref):  # a commit: pinned (expanded to the full hash when this checkout has it)
        commit = (_git(project_dir, "rev-parse", "--verify", f"{ref}^{{commit}}") if top is not None else None) or ref
    else:
        branch = ref
    if top is not None:
        deployed = commit or _git(project_dir, "rev-parse", "--verify", f"{branch}^{{commit}}")
        if deployed is not None:
            changes = (_git(project_dir, "status", "--porcelain", "--", ".") or "").splitlines()
            head = _git(project_dir, "rev-parse", "HEAD")
            if changes and deployed == head:
                shown = ", ".join(line[3:] for line in changes[:5]) + (", ..." if len(changes) > 5 else "")
                warnings.append(f"{len(changes)} uncommitted change(s) in {project_dir} are not in commit "
                                f"{deployed[:12]} that the deployments clone ({shown}): commit and push them, then "
                                "deploy again")
            if url == origin and not _git(project_dir, "branch", "--remotes", "--contains", deployed):
                warnings.append(f"commit {deployed[:12]} is on no branch of 'origin' that this checkout knows of: "
                                "workers cannot clone it until you push it (git push origin HEAD)")
    return CodeSource("git", repository=url, commit=commit, branch=branch, subdirectory=subdirectory,
                      warnings=tuple(warnings))


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


def prefect_yaml(deployments: list[FlowDeployment], recipe_name: str, source: CodeSource | str,
                 prefect_version: str | None = None, mlops_version: str | None = None) -> str:
    """The `prefect.yaml` of `deployments`, pulling the project from `source` (a path: that local directory)."""
    if isinstance(source, str):
        source = CodeSource("local", directory=source)
    if prefect_version is None:
        from importlib import metadata

        try:
            prefect_version = metadata.version("prefect")
        except metadata.PackageNotFoundError:
            prefect_version = "3"
    return render("prefect.yaml.j2", recipe_name=recipe_name, source=source.describe(), pull=source.pull_steps(),
                  cloned=source.kind == "git", job_variables=source.job_variables(),
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


def ensure_work_pool(name: str, pool_type: str = "process") -> bool:
    """Create the work pool `name` (of `pool_type`: process, docker) unless it exists; True when it was created."""
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
                await client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
                return True

    return asyncio.run(ensure())


def register(prefect_file: Path, deployments: list[FlowDeployment], project_dir: Path,
             pool_type: str = "process") -> list[str]:
    """Register every deployment of `prefect_file` with the server at PREFECT_API_URL (creating its work
    pools, of `pool_type`), through `prefect deploy --all`; returns their full names."""
    prefect_api_url()
    for pool in sorted({d.work_pool for d in deployments}):
        ensure_work_pool(pool, pool_type)
    proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                           str(prefect_file.resolve())], cwd=project_dir, capture_output=True, text=True,
                          timeout=600, env=os.environ | {"PREFECT_CLI_COLORS": "false"})
    if proc.returncode != 0:
        raise MlopsError(f"`prefect deploy` failed to register {prefect_file}:\n"
                         f"{(proc.stdout + proc.stderr).strip()[-4000:]}")
    return [d.full_name for d in deployments]
