"""Two processes on one MLflow store at the same moment, on sqlite and on PostgreSQL: creating a fresh store,
and registering byte-identical ONNX models (one version, reused by the other)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.postgres import throwaway_url

ROUNDS = 2  # each round its own store, both processes released by one barrier (a fresh store costs ~20 s)
MODEL = "race"


def _onnx_bundle(where: Path) -> tuple[Path, str]:
    """An export step's folder holding a real bundle (the test fixture's), and its model's sha256; beside it the
    load_data and split folders a register step reads its input example from."""
    import numpy as np

    from tests.serve_fixtures import build_bundle, training_frame

    bundle = build_bundle(where / "bundle")
    frame = training_frame(20)
    (where / "load_data").mkdir()
    frame.to_parquet(where / "load_data" / "data.parquet")
    (where / "split").mkdir()
    np.savez(where / "split" / "split.npz", train=np.arange(10), val=np.arange(10, 15), test=np.arange(15, 20))
    return bundle, hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()


def _train_and_register(uri: str, export_dir: Path, sha: str) -> str:
    """What a run does to the store: create or find its experiment, start a run, then the register step on an
    exported bundle. Returns the model version it registered or reused."""
    from mlops.core.registry import experiment_id, registry_client
    from mlops.engine.results import ExportResult, LoadDataResult
    from mlops.engine.steps.common import RunContext
    from mlops.engine.steps.register import register

    client = registry_client(uri)
    run_id = client.create_run(experiment_id(client, "race", uri)).info.run_id
    recipe = SimpleNamespace(model_name=MODEL, registry=SimpleNamespace(enabled=True))
    ctx = RunContext(loaded=SimpleNamespace(recipe=recipe, hash="h"), run_id=run_id,  # type: ignore[arg-type]
                     tracking_uri=uri)
    ctx.results |= {"export": ExportResult.model_construct(onnx_sha256=sha),
                    "load_data": LoadDataResult.model_construct(fingerprint="sha256:0")}
    ctx.dirs |= {"export": export_dir, "load_data": export_dir / "load_data", "split": export_dir / "split"}
    return str(register(ctx, export_dir / "register").model_version)


def _racer(uris: list[str], export_dir: Path, sha: str, home: str, barrier: Any, results: Any) -> None:
    os.environ["MLOPS_HOME"] = home
    for i, uri in enumerate(uris):
        barrier.wait(timeout=120)
        try:
            results.put((i, "ok", _train_and_register(uri, export_dir, sha)))
        except Exception:  # the parent asserts on it, with the child's traceback
            results.put((i, "error", traceback.format_exc()))


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """ROUNDS fresh, empty MLflow stores of one kind."""
    if request.param == "sqlite":
        yield [f"sqlite:///{tmp_path}/store{i}/mlflow.db" for i in range(ROUNDS)]
        return
    with ExitStack() as stack:
        uris = []
        for _ in range(ROUNDS):
            # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the dev extra brings psycopg2
            uris.append(stack.enter_context(throwaway_url("mlops_race", "postgresql+psycopg2")))
        yield uris


@pytest.mark.parametrize("store", ["fresh", "set up"])
def test_two_processes_at_once_register_one_version(store: str, fresh_stores: list[str], tmp_path: Path) -> None:
    """On a fresh store both processes create it at once; on a set-up one both find byte-identical models
    unregistered at once: either way both succeed, and one registers the version the other reuses."""
    from mlflow import MlflowClient

    for uri in fresh_stores:
        if uri.startswith("sqlite"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True)
        if store == "set up":
            MlflowClient(uri, registry_uri=uri).search_registered_models()  # creates the store, in this process
    bundle, sha = _onnx_bundle(tmp_path / "export")
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: nothing of this process's MLflow state
    barrier, results = spawn.Barrier(2), spawn.Queue()
    procs = [spawn.Process(target=_racer, args=(fresh_stores, bundle.parent, sha, str(tmp_path / f"home{n}"),
                                                barrier, results)) for n in range(2)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=300) for _ in range(2 * len(fresh_stores))]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    errors = [text for _, status, text in outcomes if status == "error"]
    assert not errors, "\n".join(errors)
    for i, uri in enumerate(fresh_stores):
        assert sorted(v for r, _, v in outcomes if r == i) == ["1", "1"], uri  # one version, reused by the other
        client = MlflowClient(uri, registry_uri=uri)
        assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
        assert len(client.search_runs([client.get_experiment_by_name("race").experiment_id])) == 2


def test_two_runs_started_together_on_a_fresh_workspace(isolated_env: dict[str, str]) -> None:
    """The whole path once: two `mlops run` of one recipe at the same moment on a workspace with no store yet
    both succeed and share one model version (the same seed trains byte-identical models)."""
    from mlflow import MlflowClient

    command = [sys.executable, "-m", "mlops.cli", "run", "--json", "recipes/quickstart.yaml", "trainer.max_epochs=1"]
    runs = [subprocess.Popen(command, cwd=ROOT, env=isolated_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=900) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-5000:]
    summaries = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    assert [s["model_version"] for s in summaries] == ["1", "1"]
    uri = f"sqlite:///{isolated_env['MLOPS_HOME']}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    assert [str(v.version) for v in client.search_model_versions("name='quickstart'")] == ["1"]
    assert {client.get_run(s["run_id"]).info.status for s in summaries} == {"FINISHED"}
