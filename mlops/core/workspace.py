"""The workspace: where the framework writes by default, every path under it named here and nowhere else.

`.mlops/` under the working directory, or `$MLOPS_HOME`. Each phase asks for its place by name
(`workspace().prediction_log("quickstart")`), so moving the workspace, or a folder inside it, is one change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


def workspace() -> Workspace:
    """The current workspace: `$MLOPS_HOME`, else `.mlops/` under the working directory."""
    return Workspace(Path(os.environ.get("MLOPS_HOME") or Path.cwd() / ".mlops").resolve())
