"""requirements.lock against pyproject.toml: every requirement of every extra is pinned, within its range, and the
lock holds no torch and no CUDA package (the Makefile's TORCH chooses the build). A stale lock fails here; `make
lock` rewrites it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mlops.core.errors import MlopsError
from mlops.deploy.container import (
    INPUT_PACKAGES,
    LOCK_FILE,
    SERVE_PACKAGES,
    SHARED_LOG_PACKAGES,
    norm,
    read_lock,
    serve_requirements,
)
from tests.conftest import ROOT

LOCK = ROOT / LOCK_FILE
# resolved at TORCH's version and left out of the lock on purpose (Makefile NO_EMIT)
NOT_LOCKED = {"torch", "torchvision"}


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return [Requirement(t) for t in texts]


def test_every_requirement_is_pinned_within_its_range() -> None:
    pins = read_lock(LOCK)
    problems = []
    for req in project_requirements():
        if norm(req.name) in NOT_LOCKED or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        version = pins.get(norm(req.name))
        if version is None:
            problems.append(f"{req.name}: not pinned")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: {version} is outside {req.specifier}")
    assert not problems, f"{LOCK.name} is stale (make lock): {problems}"


def test_the_lock_holds_no_torch_nor_cuda_and_pins_exact_versions() -> None:
    lines = [ln for ln in LOCK.read_text().splitlines() if ln and not ln.startswith((" ", "#"))]
    names = {norm(re.split(r"[=;\s]", ln, maxsplit=1)[0]) for ln in lines}
    assert not names & NOT_LOCKED
    # nvidia-ml-py is NVML's binding (pure Python, no CUDA): the GPU metrics of `mlops serve` and of training
    assert not {n for n in names if n.startswith(("nvidia-", "cuda-")) or n == "triton"} - {"nvidia-ml-py"}
    assert all(re.match(r"^[A-Za-z0-9_.\-\[\]]+==[^=\s;]+( ; .+)?$", ln) for ln in lines), "a pin that is not =="


def test_the_serving_image_pins_the_benchmarked_stack_from_the_lock() -> None:
    pins = read_lock(LOCK)
    pinned = dict(serve_requirements(set(INPUT_PACKAGES), LOCK))
    assert {"uvloop", "httptools", "orjson", "uvicorn"} <= set(pinned)
    assert set(pinned) == {*SERVE_PACKAGES, *SHARED_LOG_PACKAGES, *INPUT_PACKAGES.values()}
    assert all(pinned[name] == pins[norm(name)] for name in pinned)


def test_a_lock_without_a_serving_package_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("".join(ln + "\n" for ln in LOCK.read_text().splitlines() if not ln.startswith("uvloop==")))
    with pytest.raises(MlopsError, match="uvloop"):
        serve_requirements(frozenset(), lock)
