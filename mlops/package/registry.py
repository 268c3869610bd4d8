"""The MLflow model registry: register a bundle, move aliases, resolve `NAME@ALIAS` to a bundle.

MLflow 3 has no stages; aliases are the lifecycle: `challenger` for a new version, `champion` for
the one in production.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlops
from mlops.core.errors import MlopsError
from mlops.core.refs import CHALLENGER, CHAMPION
from mlops.package.bundle import BundleMeta, read_bundle
from mlops.package.predictor import EMBEDDING, Predictor

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models import ModelSignature

BUNDLE_ARTIFACTS = "bundle"  # where a run keeps its bundle, and where its registered version points
# an input's kind -> the MLflow type of one value of it as a request sends it (what the bundle takes raw)
_COLUMN_TYPES = {"numeric": "double", "categorical": "string", "image": "binary", "text": "string"}


def register_bundle(client: Any, uri: str, run_id: str, model_name: str, bundle_dir: Path,
                    tags: dict[str, str], set_aliases: bool = True,
                    rows: pd.DataFrame | None = None) -> dict[str, Any]:
    """Register the bundle the run already holds under `bundle/` (stored once: the version points at those
    artifacts) and, unless it failed its gates, set aliases: `challenger`, and `champion` when there is none
    yet. The version's input example is one of `rows` (raw rows, `example_row`). Returns version and aliases."""
    from mlflow.exceptions import MlflowException

    meta = read_bundle(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="mlops-mlmodel-") as tmp:
        # the MLmodel (flavors, signature, example) beside the bundle's files in the run: no second model copy
        write_mlmodel(Path(tmp), meta, run_id, None if rows is None else example_row(meta, rows))
        client.log_artifacts(run_id, tmp, BUNDLE_ARTIFACTS)
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    all_tags = tags | {"bundle_uri": f"runs:/{run_id}/{BUNDLE_ARTIFACTS}", "run_id": run_id}
    # the artifacts' real location, not `runs:/`: a tracking server reads a version's files (its page's schema)
    # from its source as it is, with no run to resolve
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{BUNDLE_ARTIFACTS}"
    mv = client.create_model_version(model_name, source, run_id=run_id, tags=all_tags)
    version = str(mv.version)
    aliases = promote_version(client, model_name, version) if set_aliases else []
    return {"model_name": model_name, "model_version": version, "aliases": aliases}


# --- the version as MLflow shows and loads it ---------------------------------------------------------------
# A registered version is the run's `bundle/` directory plus an MLmodel file: the `onnx` flavor names the
# bundle's own model.onnx (`mlflow.onnx.load_model`), the `python_function` flavor loads the bundle with its
# Predictor (`mlflow.pyfunc.load_model(...).predict(raw rows)`), and the signature says what the bundle takes
# raw: numbers, category strings, encoded images, texts.

def signature_of(meta: BundleMeta) -> ModelSignature:
    """The bundle's raw inputs (as a request sends them) and its answer (never the monitoring embedding)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([ColSpec(_COLUMN_TYPES[i.kind], i.name, required=not i.nullable) for i in meta.inputs])
    outputs = []
    for o in meta.outputs:
        if o["name"] == EMBEDDING:
            continue
        one = DataType.string if o["dtype"] == "string" else (
            DataType.double if o["dtype"] == "float64" else DataType.float)
        outputs.append(ColSpec(Array(one) if len(o["shape"]) > 1 and o["shape"][-1] != 1 else one, o["name"]))
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def example_row(meta: BundleMeta, frame: pd.DataFrame) -> pd.DataFrame | None:
    """One real row of `frame` as the signature types it: the row whose images are smallest (an example is
    shown and stored, not streamed), its values as a request would send them. None for an empty frame."""
    import math

    import pandas as pd

    names = [i.name for i in meta.inputs]
    if frame.empty or any(n not in frame.columns for n in names):
        return None
    sizes = sum((frame[i.name].map(lambda v: len(v) if isinstance(v, bytes | str) else 0)
                 for i in meta.inputs if i.kind == "image"), start=pd.Series(0, index=frame.index))
    row = frame.loc[sizes.idxmin(), names]

    def value(kind: str, v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if kind == "numeric":
            return float(v)
        if kind == "image":
            return bytes(v) if isinstance(v, bytes | bytearray) else None
        return str(v)

    values = {i.name: value(i.kind, row[i.name]) for i in meta.inputs}
    if any(values[i.name] is None for i in meta.inputs if i.kind == "image"):
        return None  # an image given by a path or pixels: no encoded bytes to show
    return pd.DataFrame({k: pd.Series([v], dtype="object" if not isinstance(v, float) else "float64")
                         for k, v in values.items()})


def write_mlmodel(dest: Path, meta: BundleMeta, run_id: str, example: pd.DataFrame | None) -> None:
    """MLflow's description of the bundle into `dest` (MLmodel, input example, environment files); model.onnx
    stays where the bundle has it."""
    import mlflow
    import onnx
    import onnxruntime
    import yaml
    from mlflow.models import Model
    from mlflow.models.utils import _save_example
    from mlflow.pyfunc import add_to_model
    from mlflow.utils.environment import _mlflow_conda_env, _PythonEnv

    model = Model(artifact_path=BUNDLE_ARTIFACTS, run_id=run_id, signature=signature_of(meta),
                  metadata={"mlops.bundle": "bundle.json", "mlops.onnx_sha256": meta.onnx_sha256})
    if example is not None:
        _save_example(model, example, str(dest))
    add_to_model(model, loader_module=__name__, conda_env="conda.yaml", python_env="python_env.yaml")
    model.add_flavor("onnx", onnx_version=onnx.__version__, data="model.onnx", providers=["CPUExecutionProvider"],
                     code=None)
    model.save(str(dest / "MLmodel"))
    # explicit requirements: inferring them costs seconds and would drag torch in
    requirements = [f"mlops=={mlops.__version__}", f"onnxruntime=={onnxruntime.__version__}",
                    f"mlflow=={mlflow.__version__}"]
    (dest / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (dest / "conda.yaml").write_text(yaml.safe_dump(_mlflow_conda_env(additional_pip_deps=requirements),
                                                    default_flow_style=False))
    _PythonEnv.current().to_yaml(str(dest / "python_env.yaml"))


class BundleModel:
    """The python_function flavor of a registered version: raw rows in (a DataFrame as the signature types
    it), the bundle's answer out (label and probabilities, or prediction), through the one Predictor."""

    def __init__(self, bundle_dir: Path) -> None:
        self.predictor = Predictor(bundle_dir)

    def predict(self, data: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import pandas as pd

        answer = self.predictor.predict(self.predictor.frame_feeds(data))
        return pd.DataFrame({k: list(v) if v.ndim > 1 else v for k, v in answer.outputs.items()})


def _load_pyfunc(path: str) -> BundleModel:
    """MLflow's entry point for `mlflow.pyfunc.load_model` of a registered version (the downloaded bundle)."""
    return BundleModel(Path(path))


def promote_version(client: Any, model_name: str, version: str) -> list[str]:
    """A new eligible version becomes the challenger, and the champion when there is none yet."""
    aliases = [CHALLENGER]
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    # On the SQL store search_model_versions() returns empty aliases: read them from the registered model
    if CHAMPION not in client.get_registered_model(model_name).aliases:
        client.set_registered_model_alias(model_name, CHAMPION, version)
        aliases.append(CHAMPION)
    return sorted(aliases)


def aliases_of(client: Any, model_name: str, version: str) -> list[str]:
    return sorted(a for a, v in client.get_registered_model(model_name).aliases.items() if str(v) == str(version))


# --- champion history ----------------------------------------------------------------------------------------
# MLflow aliases keep no history, so every champion change is recorded as a registered-model tag of its own,
# `mlops.champion.history.<seq>` = {"seq", "action", "version", "previous", "at", "by", "reason"} (one tag per
# change: no tag ever grows past the store's limit). Replaying the tags gives the lineage of champions, a
# stack: a promotion pushes, a rollback pops back to the version it restored.

HISTORY_TAG = "mlops.champion.history."


def champion_history(client: Any, model_name: str) -> list[dict[str, Any]]:
    """Every recorded champion change of `model_name`, oldest first."""
    import json

    tags = registered_model(client, model_name).tags
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(HISTORY_TAG)]
    return sorted(entries, key=lambda e: int(e["seq"]))


def champion_lineage(history: list[dict[str, Any]]) -> list[str]:
    """The champions in force, oldest first, the current one last (a promotion pushes, a rollback pops)."""
    stack: list[str] = []
    for e in history:
        if not stack and e.get("previous"):
            stack.append(str(e["previous"]))
        if e["action"] == "rollback":
            while stack and stack[-1] != str(e["version"]):
                stack.pop()
            if not stack:
                stack.append(str(e["version"]))
        elif not stack or stack[-1] != str(e["version"]):
            stack.append(str(e["version"]))
    return stack


def current_champion(client: Any, model_name: str) -> str | None:
    version = registered_model(client, model_name).aliases.get(CHAMPION)
    return str(version) if version is not None else None


def registered_model(client: Any, model_name: str) -> Any:
    """The registered model, or an error naming it (a typo'd name is the user's to fix, not a traceback)."""
    # here, as this module's other mlflow imports: only when called
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model_name)
    except MlflowException as exc:
        raise MlopsError(f"no registered model '{model_name}': {exc.message}") from None


def _actor() -> str:
    import getpass
    import os
    import socket

    who = os.environ.get("MLOPS_ACTOR")
    if who:
        return who
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def record_champion_change(client: Any, model_name: str, action: str, version: str, previous: str | None,
                           reason: str, by: str | None = None) -> dict[str, Any]:
    """Append one entry to the champion history and tag the new champion's version with it."""
    import json
    from datetime import UTC, datetime

    history = champion_history(client, model_name)
    entry = {"seq": (int(history[-1]["seq"]) + 1) if history else 1, "action": action, "version": str(version),
             "previous": previous, "at": datetime.now(UTC).isoformat(timespec="seconds"), "by": by or _actor(),
             "reason": reason}
    client.set_registered_model_tag(model_name, f"{HISTORY_TAG}{entry['seq']:06d}", json.dumps(entry))
    client.set_model_version_tag(model_name, str(version), "mlops.champion_since", entry["at"])
    return entry


def promote_champion(client: Any, model_name: str, version: str, reason: str,
                     by: str | None = None) -> dict[str, Any]:
    """Move `champion` to `version` and record who, when and why. Promoting the champion itself is refused."""
    client.get_model_version(model_name, str(version))  # an unknown version fails here, before anything moves
    previous = current_champion(client, model_name)
    if previous == str(version):
        raise MlopsError(f"{model_name} version {version} is already the champion: nothing to promote")
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    return record_champion_change(client, model_name, "promote", str(version), previous, reason, by)


def rollback_champion(client: Any, model_name: str, reason: str, by: str | None = None) -> dict[str, Any]:
    """Move `champion` back to the champion before the current one, from the recorded history."""
    current = current_champion(client, model_name)
    lineage = champion_lineage(champion_history(client, model_name))
    if lineage and lineage[-1] == current:
        lineage.pop()
    if not lineage:
        raise MlopsError(f"{model_name} has no earlier champion on record (champion is version {current or '-'}): "
                         f"choose one with `mlops promote {model_name}/VERSION`")
    target = lineage[-1]
    client.set_registered_model_alias(model_name, CHAMPION, target)
    return record_champion_change(client, model_name, "rollback", target, current, reason, by)
