"""Strict request values over real servers, ours (`mlops serve`) and KServe's stock ModelServer, on one bundle
whose data.categories trims whitespace and imputes unseen categories: a number where a category belongs and a V2
value outside its datatype are 400s naming the field, an unseen category is answered and named, and a category
sent with the spaces training had gets the trimmed one's answer."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.net import free_port, stop_process, wait_ready
from tests.serve_fixtures import build_bundle, training_frame

pytestmark = pytest.mark.integration

RUNTIMES = ["mlops", "kserve"]
ROW = {"age": 41.0, "income": 50.0, "city": "a"}
START_TIMEOUT = 90  # a cold `python -m` import of kserve takes seconds on a busy machine


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = training_frame()
    frame["city"] = frame["city"].replace({"c": "  gold "})
    return build_bundle(tmp_path_factory.mktemp("strict") / "bundle", frame=frame,
                        data={"categories": {"trim": True, "unseen": "impute"}})


@pytest.fixture(scope="module", params=RUNTIMES)
def url(request: pytest.FixtureRequest, bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    runtime = request.param
    if runtime == "kserve" and importlib.util.find_spec("kserve") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kserve is not installed, and CI=true (install the 'serve' extra)", pytrace=False)
        pytest.skip("kserve is not installed (pip install -e '.[serve]')")
    work = tmp_path_factory.mktemp(runtime)
    port = free_port()
    command = [sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--port", str(port)]
    command += ["--runtime", "kserve"] if runtime == "kserve" else ["--log", str(work / "predictions.sqlite")]
    output = work / "server.log"
    with output.open("wb") as sink:  # a file, not a pipe: nobody reads a pipe while the tests run
        proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                env=os.environ | {"MLOPS_HOME": str(work / ".mlops"), "PYTHONUNBUFFERED": "1"})
    try:
        wait_ready(port, proc, timeout=START_TIMEOUT, tail=lambda: output.read_text(errors="replace")[-4000:])
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, timeout=15, kill_timeout=15)


def v2(city: list[Any], age: list[Any] | None = None, age_datatype: str = "FP64") -> dict[str, Any]:
    n = len(city)
    return {"inputs": [{"name": "age", "shape": [n], "datatype": age_datatype, "data": age or [41.0] * n},
                       {"name": "income", "shape": [n], "datatype": "FP64", "data": [50.0] * n},
                       {"name": "city", "shape": [n], "datatype": "BYTES", "data": city}]}


def test_a_number_in_a_category_is_a_400_naming_the_field(url: str) -> None:
    v1 = httpx.post(f"{url}/v1/models/toy:predict", json={"instances": [ROW | {"city": 3}]})
    v2_answer = httpx.post(f"{url}/v2/models/toy/infer", json=v2(["a", 3]))
    assert (v1.status_code, v1.json()["field"]) == (400, "instances[].city[0]")
    assert (v2_answer.status_code, v2_answer.json()["field"]) == (400, "inputs[2].data[1]")
    assert "expected a string category for 'city', got the number 3" in v2_answer.json()["error"]


def test_a_v2_value_outside_its_datatype_is_a_400_naming_the_input(url: str) -> None:
    answer = httpx.post(f"{url}/v2/models/toy/infer", json=v2(["a"], age=[1000], age_datatype="INT8"))
    assert answer.status_code == 400
    assert answer.json() == {"error": "inputs[0].data[0]: 1000 is outside INT8 (-128 to 127) for input 'age'",
                             "field": "inputs[0].data[0]"}


def test_an_unseen_category_is_answered_and_named(url: str) -> None:
    v1 = httpx.post(f"{url}/v1/models/toy:predict", json={"instances": [ROW, ROW | {"city": "platinum"}]})
    v2_answer = httpx.post(f"{url}/v2/models/toy/infer", json=v2(["platinum", "a"]))
    assert v1.status_code == 200 and v1.json()["imputed"] == [[], ["city"]]
    assert v2_answer.status_code == 200 and v2_answer.json()["parameters"]["imputed"] == "city[0]"


def test_a_category_with_the_training_spaces_gets_the_trimmed_answer(url: str) -> None:
    answer = httpx.post(f"{url}/v1/models/toy:predict",
                        json={"instances": [ROW | {"city": "gold"}, ROW | {"city": "  gold "}]})
    assert answer.status_code == 200 and "imputed" not in answer.json()
    first, second = answer.json()["predictions"]
    assert first == second
