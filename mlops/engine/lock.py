"""`recipe.lock`: what it takes to reproduce a run (recipe hash, data fingerprints, seeds, versions)."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.core import installed
from mlops.core.workspace import workspace
from mlops.data.sources import data_path

if TYPE_CHECKING:
    from mlops.engine.results import LoadDataResult
    from mlops.recipe import LoadedRecipe

KEY_PACKAGES = ("mlops", "torch", "lightning", "mlflow", "prefect", "hydra-core", "omegaconf", "pydantic",
                "onnx", "onnxruntime", "onnxscript", "numpy", "pandas", "scikit-learn")


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    found = {name: installed.version(name) for name in names}
    return {name: v for name, v in found.items() if v != installed.ABSENT}


@cache  # once a process: a sweep's warm worker reads it before forking, so no trial reads it again
def pip_freeze() -> str:
    """Every installed distribution as `name==version` (read from metadata: no pip subprocess).

    Reading every distribution's metadata costs 0.5-0.7 s, so the list is remembered in the workspace under
    the modification times of the directories Python finds distributions in: installing, upgrading or
    removing one changes them (`installed_stamp`)."""
    stamp = installed.installed_stamp()
    memo = workspace().cache / "pip-freeze.json"
    saved = installed.read_stamped(memo, stamp, "text")
    if isinstance(saved, str):
        return saved
    rows = {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions() if d.metadata["Name"]}
    text = "\n".join(sorted(rows, key=str.lower)) + "\n"
    installed.write_stamped(memo, stamp, "text", text)
    return text


def git_state(where: Path) -> dict[str, Any] | None:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        state: dict[str, Any] = {"commit": git("rev-parse", "HEAD"),
                                 "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (subprocess.SubprocessError, FileNotFoundError, OSError):
        return None
    try:  # where the commit can be fetched again: a deployment's clone has the repository it came from as origin
        state["url"] = without_credentials(git("remote", "get-url", "origin"))
    except (subprocess.SubprocessError, OSError):
        state["url"] = None
    return state


def without_credentials(url: str) -> str:
    """`url` without a user:token@ part: a remote URL may carry a secret, and the lock is logged as an artifact."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url  # a path or scp-like git@host:repo (a user name, no secret)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def build_lock(loaded: LoadedRecipe, load_data: LoadDataResult) -> dict[str, Any]:
    """Everything needed to re-run this recipe: `mlops reproduce` reads it back (as JSON, so a plain dict)."""

    r = loaded.recipe
    data = {"fingerprint": load_data.fingerprint, "dvc": load_data.dvc, "source": load_data.source,
            "resolved_path": str(data_path(r.data, loaded.path)) if r.data.path else None}
    return {
        "recipe_hash": loaded.hash,
        "recipe": loaded.resolved(),
        "recipe_file": str(loaded.path),
        "overrides": loaded.overrides,
        "data": data,
        "seeds": {"global": r.seed, "split": r.split_seed},
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": git_state(loaded.path.parent),
    }
