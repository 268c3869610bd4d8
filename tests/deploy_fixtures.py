"""Registered model versions for the deploy tests, built without torch: real MLflow (sqlite under MLOPS_HOME),
real bundles (tests/serve_fixtures.py), registered the way a run registers them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from mlops.deploy.validate import BUNDLED_CRD
from mlops.package.bundle import read_bundle, write_bundle
from tests.serve_fixtures import build_bundle

CRD = BUNDLED_CRD


@contextmanager
def mlops_home(home: Path) -> Iterator[None]:
    """This process's MLOPS_HOME set to `home` (and no MLFLOW_TRACKING_URI, which would win over it) for the
    duration; both restored as they were on exit."""
    saved = {k: os.environ.get(k) for k in ("MLOPS_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["MLOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def freeze_batch(bundle: Path) -> Path:
    """Rewrite a bundle's graph with its batch dimension frozen at 1, as an export without a dynamic batch axis
    would leave it: ONNX Runtime then refuses every request of more than one row (a real 500 on the server)."""
    model = onnx.load(str(bundle / "model.onnx"))
    for tensor in model.graph.input:
        tensor.type.tensor_type.shape.dim[0].dim_value = 1
    meta = read_bundle(bundle).model_dump()
    meta.pop("onnx_sha256")
    write_bundle(bundle, model.SerializeToString(), meta)
    return bundle


def register_version(tmp: Path, name: str = "toy", weights_seed: int = 1, frozen_batch: bool = False) -> str:
    """Register a bundle as a new version of `name` in the store of the current MLOPS_HOME; its version.

    As a run registers one (the bundle logged under the run's `bundle/`, aliases moved by the registry's own
    `promote_version`), minus the MLmodel file (signature, input example) that `register_bundle` writes into
    the bundle, which nothing here reads."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mlops.core.registry import experiment_id, tracking_uri
    from mlops.package.registry import promote_version

    bundle = build_bundle(tmp / f"bundle-{name}-{weights_seed}-{int(frozen_batch)}", name=name,
                          weights_seed=weights_seed)
    if frozen_batch:
        freeze_batch(bundle)
    uri = tracking_uri()
    client = MlflowClient(uri, registry_uri=uri)  # not the process-wide registry of an earlier test
    run_id = client.create_run(experiment_id(client, name, uri), run_name=f"{name} seed {weights_seed}").info.run_id
    client.log_artifacts(run_id, str(bundle), "bundle")
    client.set_terminated(run_id, "FINISHED")
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # already registered: a new version of it
    version = str(client.create_model_version(name, f"runs:/{run_id}/bundle", run_id=run_id).version)
    client.set_model_version_tag(name, version, "weights_seed", str(weights_seed))
    promote_version(client, name, version)
    return version
