"""`mlops reproduce`'s environment: a run's environment lock (environment/pip-freeze.txt, as `mlops run` logs it)
split into torch and the rest, and a virtual environment really rebuilt from one (a small lock: one package)."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from mlops.core.errors import MlopsError
from mlops.engine.lock import pip_freeze
from mlops.engine.runlog import log_text
from mlops.tracking.reproduce import (
    ENVIRONMENT_LOCK,
    environment_lock,
    rebuild_commands,
    rebuild_environment,
    split_lock,
)


def store(tmp_path: Path) -> tuple[object, str]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("r", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, client.create_run(exp).info.run_id


def test_this_environments_lock_splits_into_torch_and_exact_pins_without_mlops_or_cuda() -> None:
    freeze = pip_freeze()
    torch, rest = split_lock(freeze)

    assert torch == [f"torch=={metadata.version('torch')}", f"torchvision=={metadata.version('torchvision')}"]
    names = {pin.split("==")[0].lower() for pin in rest}
    assert "mlops" not in names and "torch" not in names
    assert not {n for n in names if n.startswith(("nvidia-", "nvidia_", "cuda-", "cuda_")) or n == "triton"}
    assert f"onnxruntime=={metadata.version('onnxruntime')}" in rest  # every other distribution, at its version
    commands, requirements = rebuild_commands(freeze, Path("/x/env"), "python3")
    assert commands[0] == ["python3", "-m", "venv", "/x/env"]
    assert commands[1][-4:] == [*torch, "-c", "/x/env/requirements.lock"]  # torch first, its deps held
    assert commands[2][-3:] == ["--no-deps", "-r", "/x/env/requirements.lock"]
    assert requirements.splitlines() == rest


def test_a_run_without_an_environment_lock_is_named(tmp_path: Path) -> None:
    client, run_id = store(tmp_path)
    with pytest.raises(MlopsError, match="pip-freeze.txt"):
        environment_lock(client, run_id)


def test_an_environment_is_rebuilt_from_a_runs_lock(tmp_path: Path) -> None:
    """One small pure-Python package at this environment's version, beside lines a rebuild must leave out."""
    client, run_id = store(tmp_path)
    version = metadata.version("tenacity")
    log_text(client, run_id, f"# a comment\nmlops==0.1.0\nnvidia-cublas==13.1.1.3\ntenacity=={version}\n",
             ENVIRONMENT_LOCK)
    dest = tmp_path / "env"
    try:
        python = rebuild_environment(client, run_id[:12] if len(run_id) > 12 else run_id, dest)
    except MlopsError as exc:
        if "No matching distribution" in str(exc) or "Could not find a version" in str(exc):
            pytest.skip(f"no package index reachable: {exc}")
        raise

    got = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('tenacity'))"],
                         capture_output=True, text=True, timeout=60)
    assert got.stdout.strip() == version
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "freeze"], capture_output=True,
                            text=True, timeout=60).stdout.lower()
    assert "nvidia" not in listed and "mlops" not in listed
    with pytest.raises(MlopsError, match="exists"):
        rebuild_environment(client, run_id, dest)


def test_the_environment_lock_is_remembered_until_a_distribution_is_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read from metadata once; read again when a directory on sys.path gains (or loses) a distribution."""
    import sys
    import time

    from mlops.core.workspace import workspace

    site = tmp_path / "site"

    def install(name: str) -> None:
        info = site / f"{name}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")

    install("mlops-fake-one")
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    freeze = pip_freeze.__wrapped__
    first = freeze()
    assert "mlops-fake-one==1.0" in first
    memo = workspace().cache / "pip-freeze.json"
    assert memo.is_file()
    marked = memo.read_text().replace("mlops-fake-one==1.0", "mlops-fake-one==9.9")
    memo.write_text(marked)
    assert "mlops-fake-one==9.9" in freeze()  # nothing changed: the remembered list, no metadata read
    time.sleep(0.01)  # a later mtime than the one remembered, also on a coarse clock
    install("mlops-fake-two")
    again = freeze()
    assert "mlops-fake-one==1.0" in again and "mlops-fake-two==1.0" in again
