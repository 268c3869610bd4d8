"""Re-run a run from its `recipe.lock` and compare: metrics, per-epoch history, ONNX bytes.

With the same package versions on CPU, training is deterministic (seeded, deterministic algorithms,
seeded shuffling), so metrics match exactly and the ONNX model is byte-identical. Anything else is
reported field by field.

The same package versions: every run records its environment as a lock (environment/pip-freeze.txt: every
distribution, pinned), and `rebuild_environment` makes a virtual environment from it as `make install` makes one
from requirements.lock: torch (and torchvision) first at the run's versions, pip's configuration choosing the
build (CPU or CUDA) as the Makefile's TORCH does; then every other package at its pin, without resolving.
mlops itself is not installed there: it runs from this checkout (PYTHONPATH), as in the run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.data.fingerprint import fingerprint_bytes
from mlops.engine.cache import Cache
from mlops.engine.execute import execute_until
from mlops.engine.lock import package_versions
from mlops.engine.runlog import flatten
from mlops.engine.summary import TrialRun
from mlops.engine.validate import load_validated
from mlops.tracking.compare import get_run, read_lock


def reproduce(client: Any, run_id: str) -> dict[str, Any]:
    import yaml


    original = get_run(client, run_id)
    run_id = original.info.run_id  # the full id of the run a prefix named
    lock = read_lock(client, run_id)
    recipe = dict(lock["recipe"])
    overrides: list[str] = []
    if lock["data"].get("resolved_path"):
        path = Path(lock["data"]["resolved_path"])
        if not path.is_file():
            raise MlopsError(f"the data file {path} that run {run_id} read is gone")
        # an override, not a key of the file: a recipe file reads data outside its project only with an opt-in
        overrides = [f"++data.path='{path}'"]
    mismatches: list[dict[str, Any]] = []
    if lock["data"].get("resolved_path"):
        now = fingerprint_bytes(Path(lock["data"]["resolved_path"]).read_bytes())
        if now != lock["data"]["fingerprint"]:
            mismatches.append({"field": "data.fingerprint", "original": lock["data"]["fingerprint"], "now": now})
    current = package_versions(tuple(lock["packages"]))
    for name, version in lock["packages"].items():
        if current.get(name) != version:
            mismatches.append({"field": f"packages.{name}", "original": version, "now": current.get(name)})
    with tempfile.TemporaryDirectory(prefix="mlops-reproduce-") as tmp:
        recipe_file = Path(tmp) / f"{lock['recipe']['name']}.yaml"
        recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
        loaded = load_validated(recipe_file, overrides)
        # an empty cache: every step recomputes, nothing is borrowed from the run being checked
        again = execute_until(loaded, "export", cache=Cache(Path(tmp) / "cache"), tags={"mlops.reproduces": run_id})
    original_bundle = json.loads(Path(client.download_artifacts(run_id, "bundle/bundle.json")).read_text())
    mismatches += _compare_metrics(client, original, again)
    if original_bundle["onnx_sha256"] != again.onnx_sha256:
        mismatches.append({"field": "bundle.onnx_sha256", "original": original_bundle["onnx_sha256"],
                           "now": again.onnx_sha256})
    # the same recipe, except that data.path now names the file absolutely
    before = {k: v for k, v in flatten(lock["recipe"]).items() if k != "data.path"}
    after = {k: v for k, v in flatten(loaded.resolved()).items() if k != "data.path"}
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            mismatches.append({"field": f"recipe.{key}", "original": before.get(key), "now": after.get(key)})
    return {"run_id": run_id, "reproduction_run_id": again.run_id, "match": not mismatches,
            "mismatches": mismatches, "onnx_sha256": again.onnx_sha256, "metrics": again.metrics}


def _compare_metrics(client: Any, original: Any, again: TrialRun) -> list[dict[str, Any]]:
    out = []
    for key, value in again.metrics.items():
        before = original.data.metrics.get(key)
        if before != value:
            out.append({"field": f"metrics.{key}", "original": before, "now": value})
    keys = {k for row in again.history for k in row if k != "epoch"}
    histories = {k: {m.step: m.value for m in client.get_metric_history(original.info.run_id, k)} for k in keys}
    for row in again.history:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch":
                continue
            history = histories[key]
            if history.get(epoch) != value:
                out.append({"field": f"history.{key}[epoch {epoch}]", "original": history.get(epoch), "now": value})
    return out


ENVIRONMENT_LOCK = "environment/pip-freeze.txt"
TORCH_PACKAGES = ("torch", "torchvision")
# what a torch build brings along (CUDA libraries, triton): installed by torch's own step, never pinned apart
_TORCH_BUILD = re.compile(r"^(nvidia-|cuda-|triton$)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def split_lock(freeze: str) -> tuple[list[str], list[str]]:
    """A run's pip freeze -> (torch pins, every other pin): mlops itself left out (it runs from the checkout),
    and the CUDA libraries and triton a torch build declares left to torch's own install."""
    torch: list[str] = []
    rest: list[str] = []
    for line in freeze.splitlines():
        name, sep, version = line.strip().partition("==")
        if not sep or line.startswith(("#", "-")):
            continue  # comments, editable and direct-URL lines: not a pinned distribution
        key = _norm(name)
        if key == "mlops" or _TORCH_BUILD.match(key):
            continue
        (torch if key in TORCH_PACKAGES else rest).append(f"{name}=={version}")
    return torch, rest


def rebuild_commands(freeze: str, dest: Path, python: str = sys.executable) -> tuple[list[list[str]], str]:
    """The commands that make `dest` a virtual environment holding the run's packages, and the requirements
    text they install (written to dest/requirements.lock)."""
    torch, rest = split_lock(freeze)
    if not rest:
        raise MlopsError("the run's environment lock names no packages: nothing to rebuild from")
    requirements = "".join(f"{pin}\n" for pin in rest)
    pip = [str(dest / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    lock = str(dest / "requirements.lock")
    commands = [[python, "-m", "venv", str(dest)]]
    if torch:  # its dependencies (sympy, networkx, ...) held to the run's versions
        commands.append([*pip, *torch, "-c", lock])
    commands.append([*pip, "--no-deps", "-r", lock])  # every pin, exactly: the lock is complete, nothing resolves
    return commands, requirements


def environment_lock(client: Any, run_id: str) -> str:
    """The environment lock run `run_id` recorded (every distribution it ran with, pinned)."""
    from mlflow.exceptions import MlflowException

    run_id = get_run(client, run_id).info.run_id
    try:
        return Path(client.download_artifacts(run_id, ENVIRONMENT_LOCK)).read_text()
    except (MlflowException, OSError):
        raise MlopsError(f"run {run_id} has no {ENVIRONMENT_LOCK} artifact (was it made by `mlops run`?)") from None


def rebuild_environment(client: Any, run_id: str, dest: Path) -> Path:
    """Create a virtual environment at `dest` from run `run_id`'s environment lock; returns its python. Run
    `python -m mlops.cli reproduce RUN` there, from this checkout, to reproduce with the run's packages."""
    if dest.exists():
        raise MlopsError(f"{dest} exists: give a new directory for the rebuilt environment")
    commands, requirements = rebuild_commands(environment_lock(client, run_id), dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for command in commands:
        say(" ".join(command[:4]) + (" ..." if len(command) > 4 else ""))
        if command[1:3] != ["-m", "venv"]:
            (dest / "requirements.lock").write_text(requirements)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise MlopsError(f"rebuilding the environment of run {run_id} at {dest} failed: {tail[0]}")
    return dest / "bin" / "python"
