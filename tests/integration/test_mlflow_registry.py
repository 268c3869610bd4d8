"""What MLflow shows of a run and of the model version it registers: the data as the run's datasets, the version's
signature and input example, and the ONNX model stored once.

The run's steps are the real ones (load_data, split, register, the run log) over a real sqlite store; only the
training is left out: the bundles are built without torch (tests/monitor_fixtures.py: the quickstart recipe's
own data and split, a logistic regression; tests/media_fixtures.py: an image + text + number model)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops.core.registry import experiment_id
from mlops.engine.results import ExportResult, LoadDataResult, Parity, SplitResult, StepOutput
from mlops.engine.runlog import FINGERPRINT_TAG, MAX_DIGEST, log_step
from mlops.engine.steps.common import RunContext
from mlops.engine.steps.load_data import load_data
from mlops.engine.steps.register import register
from mlops.engine.steps.split import split
from mlops.package.bundle import read_bundle
from mlops.package.predictor import Predictor
from mlops.package.registry import register_bundle
from mlops.recipe import load_recipe
from tests import media_fixtures as media
from tests.deploy_fixtures import mlops_home
from tests.monitor_fixtures import QUICKSTART, build_breast_cancer_bundle

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A fresh sqlite store, also the one MLflow's fluent API (`models:/` URIs) reads, until the test ends."""
    from mlops.core.registry import registry_client, tracking_uri

    with mlops_home(tmp_path / ".mlops"):
        uri = tracking_uri()
        monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", uri)
        monkeypatch.setattr("mlflow.tracking._model_registry.utils._registry_uri", uri)
        yield registry_client(uri), uri


def _step(ctx: RunContext, client: Any, name: str, fn: Any, root: Path) -> None:
    out = root / name
    out.mkdir(parents=True)
    output = StepOutput(result=fn(ctx, out), dir=out)
    ctx.record(name, output)
    log_step(client, str(ctx.run_id), name, output, cached=False)


def _input_example(model_uri: str, tmp: Path) -> pd.DataFrame:
    """The version's input example, as MLflow reads it back from the version's files."""
    import mlflow
    from mlflow.models import Model

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp / "example"))
    example = Model.load(local).load_input_example(local)
    assert isinstance(example, pd.DataFrame)
    return example


def _onnx_files(client: Any, run_id: str, name: str, version: str) -> set[Path]:
    """The model.onnx files stored under the run's artifact location and under the version's (the experiment's
    whole artifact area: a logged model's copy would lie beside the run's)."""
    from urllib.parse import urlparse

    def local(uri: str) -> Path:
        return Path(urlparse(uri).path if uri.startswith("file:") else uri)

    run = client.get_run(run_id)
    version_at = local(client.get_model_version_download_uri(name, version))
    assert version_at.is_dir(), version_at
    experiment_at = local(client.get_experiment(run.info.experiment_id).artifact_location)
    return {p.resolve() for root in (local(run.info.artifact_uri), version_at, experiment_at)
            for p in root.rglob("model.onnx")}


def test_a_run_logs_its_data_and_registers_its_bundle_once(store: tuple[Any, str], tmp_path: Path) -> None:
    import mlflow
    import mlflow.onnx

    client, uri = store
    loaded = load_recipe(str(QUICKSTART))
    run_id = client.create_run(experiment_id(client, "quickstart", uri)).info.run_id
    ctx = RunContext(loaded, run_id, uri)
    _step(ctx, client, "load_data", load_data, tmp_path / "steps")
    _step(ctx, client, "split", split, tmp_path / "steps")
    fingerprint = ctx.result("load_data", LoadDataResult).fingerprint

    # the run's Datasets: the data it trained from (train) and its held-out test rows (eval)
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d
              for d in client.get_run(run_id).inputs.dataset_inputs}
    assert set(inputs) == {"train", "eval"}
    train = inputs["train"]
    assert train.dataset.digest == fingerprint[:MAX_DIGEST] and fingerprint.startswith(train.dataset.digest)
    assert {t.key: t.value for t in train.tags}[FINGERPRINT_TAG] == fingerprint
    assert train.dataset.name == "breast_cancer" and "sklearn:breast_cancer" in train.dataset.source
    assert json.loads(train.dataset.profile)["num_rows"] == 569
    columns = {c["name"]: c["type"] for c in json.loads(train.dataset.schema)["mlflow_colspec"]}
    assert columns["mean_radius"] == "double" and len(columns) == 31
    assert json.loads(inputs["eval"].dataset.profile)["num_rows"] == ctx.result("split", SplitResult).sizes["test"]
    assert inputs["eval"].dataset.digest != train.dataset.digest
    assert {t.key: t.value for t in inputs["eval"].tags}[FINGERPRINT_TAG] == fingerprint

    # export (the bundle, as training would have left it) and its run log: the bundle under the run's `bundle/`
    export_dir = tmp_path / "steps" / "export"
    bundle = build_breast_cancer_bundle(export_dir / "bundle")
    meta = read_bundle(bundle)
    exported = ExportResult(bundle="bundle", parity=Parity(max_abs_diff=0.0, rows=1, batch_sizes=[1], atol=1e-5),
                            onnx_sha256=meta.onnx_sha256, onnx_bytes=(bundle / "model.onnx").stat().st_size)
    ctx.record("export", StepOutput(result=exported, dir=export_dir))
    log_step(client, run_id, "export", StepOutput(result=exported, dir=export_dir), cached=False)
    ctx.record("load_data", StepOutput(result=ctx.result("load_data", LoadDataResult), dir=ctx.dir("load_data")))
    registered = register(ctx, tmp_path / "steps" / "register")
    assert (registered.model_version, registered.aliases) == ("1", ["challenger", "champion"])

    # the version's signature: the bundle's inputs, by name and raw type; its answer without the embedding
    info = mlflow.models.get_model_info("models:/quickstart/1")
    assert info.signature is not None
    assert info.signature.inputs.input_names() == [i.name for i in meta.inputs]
    assert {t.name: t.type.name for t in info.signature.inputs.inputs} == {i.name: "double" for i in meta.inputs}
    assert info.signature.outputs.input_names() == ["label", "probabilities"]

    # its input example: a real test row, which the version's pyfunc scores as the bundle's Predictor does
    example = _input_example("models:/quickstart/1", tmp_path)
    assert list(example.columns) == [i.name for i in meta.inputs] and len(example) == 1
    test_rows = pd.read_parquet(ctx.dir("load_data") / "data.parquet").iloc[
        np.load(ctx.dir("split") / "split.npz")["test"]]
    assert ((test_rows[list(example.columns)] - example.iloc[0]).abs().max(axis=1) < 1e-9).any()
    pyfunc = mlflow.pyfunc.load_model("models:/quickstart@champion")
    answer = pyfunc.predict(example)
    expected = Predictor(bundle).predict(Predictor(bundle).frame_feeds(example)).outputs
    assert answer["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(np.stack(answer["probabilities"].to_numpy()), expected["probabilities"], atol=1e-6)
    assert len(mlflow.onnx.load_model("models:/quickstart/1").graph.input) == len(meta.inputs)

    # stored once: the version is the run's `bundle/`, and every reader of the version gets the same bundle
    mv = client.get_model_version("quickstart", "1")
    assert mv.run_id == run_id and mv.source == client.get_run(run_id).info.artifact_uri + "/bundle"
    assert len(_onnx_files(client, run_id, "quickstart", "1")) == 1
    artifacts = {a.path for a in client.list_artifacts(run_id, "bundle")}
    assert {"bundle/model.onnx", "bundle/bundle.json", "bundle/MLmodel"} <= artifacts
    assert not [a for a in client.list_artifacts(run_id) if a.path == "model"]  # no second copy by log_model
    from mlops.core.refs import fetch

    fetched = fetch("quickstart@champion", uri, client)
    assert read_bundle(fetched.path).onnx_sha256 == meta.onnx_sha256 and fetched.version == "1"


def test_an_image_and_text_version_shows_raw_inputs(store: tuple[Any, str], tmp_path: Path) -> None:
    import mlflow

    client, uri = store
    bundle = media.build_media_bundle(tmp_path / "bundle")
    frame = pd.DataFrame({media.IMAGE: [media.image_png(seed) for seed in range(3)],
                          media.TEXT: ["great coffee", "stale chips bad smell", "too sweet for me"],
                          media.NUMBER: [41.0, np.nan, 39.0]})
    run_id = client.create_run(experiment_id(client, "reviews", uri)).info.run_id
    client.log_artifacts(run_id, str(bundle), "bundle")
    started = time.monotonic()
    register_bundle(client, uri, run_id, "reviews", bundle, {"gates": "passed"}, rows=frame)
    assert time.monotonic() - started < 10  # no pip inference, no model re-serialised

    info = mlflow.models.get_model_info("models:/reviews@champion")
    assert info.signature is not None
    types = {c.name: (c.type.name, c.required) for c in info.signature.inputs.inputs}
    assert types == {media.IMAGE: ("binary", True), media.TEXT: ("string", True), media.NUMBER: ("double", False)}
    assert "embedding" not in info.signature.outputs.input_names()
    example = _input_example("models:/reviews/1", tmp_path)
    smallest = min(frame[media.IMAGE], key=len)
    assert example[media.IMAGE].iloc[0] == smallest  # the row with the smallest image, its bytes as they were
    answer = mlflow.pyfunc.load_model("models:/reviews/1").predict(example)
    predictor = Predictor(bundle)
    expected = predictor.predict(predictor.frame_feeds(frame[frame[media.IMAGE] == smallest])).outputs
    np.testing.assert_allclose(np.stack(answer["probabilities"].to_numpy()), expected["probabilities"], atol=1e-6)
    assert len(_onnx_files(client, run_id, "reviews", "1")) == 1
