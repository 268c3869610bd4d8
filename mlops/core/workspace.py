"""The project and its workspace: where the framework writes by default, every path under it named here and
nowhere else.

The project root is the nearest directory at or above the working directory (or above a recipe) that holds
`.mlops/` (a workspace in use), `configs/` beside `recipes/` (the layout `mlops init` makes), or a
`pyproject.toml` with a `[tool.mlops]` table. The workspace is `.mlops/` under the project root (under the
working directory outside any project), or `$MLOPS_HOME`. So every command run from a subfolder of a project
finds the same MLflow store and cache. Each phase asks for its place by name
(`workspace().prediction_log("quickstart")`), so moving the workspace, or a folder inside it, is one change.

A recipe file names data inside its project only, unless `MLOPS_ALLOW_DATA_OUTSIDE_PROJECT=1` (a path given on the
command line is the operator's own): a recipe from an untrusted pull request cannot make `mlops validate` in CI
read any file of the machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ALLOW_OUTSIDE_DATA = "MLOPS_ALLOW_DATA_OUTSIDE_PROJECT"  # "1": a recipe may read data files anywhere


@dataclass(frozen=True)
class Workspace:
    root: Path

    # --- tracking and the step cache -------------------------------------------------------------------------
    @property
    def mlflow_db(self) -> Path:
        """The embedded MLflow store (sqlite) used when no tracking URI is configured."""
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        """Artifacts of experiments on the embedded store."""
        return self.root / "artifacts"

    @property
    def cache(self) -> Path:
        """Step results keyed by their cache key: `cache/<step>/<key>/`."""
        return self.root / "cache"

    def crd_schema(self, name: str) -> Path:
        """A CRD's validation schema, prepared once per CRD file content."""
        return self.cache / "kserve-crd" / f"{name}.json"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    # --- runs ------------------------------------------------------------------------------------------------
    def run_dir(self, recipe: str, stamp: str, run_id: str) -> Path:
        """A run's own record: its resolved recipe, lock, summary, report and bundle copy."""
        return self.root / "runs" / recipe / f"{stamp}-{run_id[:8]}"

    def uncached_step_dir(self, step: str, run_id: str | None) -> Path:
        """Where a step that is never cached (gate, register) writes for one run."""
        return self.root / "runs" / "steps" / step / (run_id or "local")

    def trace_log(self, command: str, stamp: str) -> Path:
        """The tracebacks a command kept off the terminal when it failed on a user's mistake."""
        return self.root / "logs" / f"{stamp}-{command}.log"

    def evaluation_dir(self, model: str, stamp: str) -> Path:
        return self.root / "evaluations" / f"{model}-{stamp}"

    # --- models ----------------------------------------------------------------------------------------------
    def bundle(self, model: str, version: str) -> Path:
        """A registered version's bundle, downloaded once: `bundles/<model>/<version>/bundle/`."""
        return self.root / "bundles" / model / version / "bundle"

    def deploy_dir(self, model: str, label: str) -> Path:
        """What `mlops deploy` renders for one model version (`v3`), or for a recipe's flows (`flows`)."""
        return self.root / "deploy" / model / label

    # --- production ------------------------------------------------------------------------------------------
    def prediction_log(self, model: str) -> Path:
        """The prediction log `mlops serve` writes by default, and every later phase reads."""
        return self.root / "predictions" / f"{model}.sqlite"

    @staticmethod
    def prediction_archive(log: Path) -> Path:
        """Rows the retention of the prediction log at `log` moved out of it, as Parquet files beside it
        (`predictions/<model>.archive/`): wherever a log lives, its readers find its archive."""
        return log.with_name(log.stem + ".archive")

    @property
    def monitor(self) -> Path:
        """The monitor's stores (`<model>.sqlite`: windows, rule states, alerts) and reports (`<model>/`)."""
        return self.root / "monitor"

    def monitor_store(self, model: str) -> Path:
        return self.monitor / f"{model}.sqlite"

    def monitor_dir(self, model: str) -> Path:
        return self.monitor / model

    @property
    def audit_log(self) -> Path:
        """Every retrain, decision and approval, one JSON object per line."""
        return self.root / "improve" / "audit.jsonl"

    @property
    def refreshed_data(self) -> Path:
        """Refreshed training data of retrains: `improve/data/<model>/`."""
        return self.root / "improve" / "data"

    def errors_dir(self, model: str) -> Path:
        return self.root / "improve" / "errors" / model


def project_root(start: Path | None = None) -> Path | None:
    """The nearest directory at or above `start` (default: the working directory) that is an mlops project:
    it holds `.mlops/`, `configs/` beside `recipes/`, or a `pyproject.toml` with a `[tool.mlops]` table.
    None outside any project."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if ((folder / ".mlops").is_dir() or ((folder / "configs").is_dir() and (folder / "recipes").is_dir())
                or _declares_mlops(folder / "pyproject.toml")):
            return folder
    return None


def _declares_mlops(pyproject: Path) -> bool:
    import tomllib

    try:
        return "mlops" in tomllib.loads(pyproject.read_text()).get("tool", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):  # absent or not ours to judge
        return False


def workspace() -> Workspace:
    """The current workspace: `$MLOPS_HOME`, else `.mlops/` under the project root (under the working
    directory outside any project)."""
    if os.environ.get("MLOPS_HOME"):
        return Workspace(Path(os.environ["MLOPS_HOME"]).resolve())
    return Workspace(((project_root() or Path.cwd()) / ".mlops").resolve())


def data_outside_project(path: Path, recipe: Path) -> Path | None:
    """The project root that data file `path`, named in recipe file `recipe`, lies outside of; None when the
    recipe may read it: it lies inside the recipe's project (outside any project: the recipe's folder), or
    `MLOPS_ALLOW_DATA_OUTSIDE_PROJECT=1` allows any file."""
    if os.environ.get(ALLOW_OUTSIDE_DATA) == "1":
        return None
    root = project_root(recipe.parent) or recipe.parent.resolve()
    return None if path.resolve().is_relative_to(root) else root  # resolved: a link out of the project is out
