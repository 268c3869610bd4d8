"""Re-run a run from its `recipe.lock` and compare: metrics, per-epoch history, ONNX bytes.

With the same package versions on CPU, training is deterministic (seeded, deterministic algorithms,
seeded shuffling), so metrics match exactly and the ONNX model is byte-identical. Anything else is
reported field by field.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
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
