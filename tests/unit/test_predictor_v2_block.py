"""Predictor.feeds_from_v2's block path (a packed model's numeric tensors decoded in one numpy call) gives what
the tensor-by-tensor path gives, and declines whatever that path must check value by value, so a request's
answer and every error stay the same."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mlops.package.predictor import Predictor, RequestError
from tests.serve_fixtures import build_bundle


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor(build_bundle(tmp_path_factory.mktemp("block") / "bundle"), max_batch=4)


def tensor(name: str, data: Any, datatype: str = "FP64", shape: Any = None) -> dict[str, Any]:
    return {"name": name, "shape": [len(data)] if shape is None else shape, "datatype": datatype, "data": data}


def request(ages: Any = (41.0,), incomes: Any = (50.0,), **change: Any) -> list[dict[str, Any]]:
    """age, income (FP64) and city (BYTES) tensors; `change`: a tensor in place of one, None to leave it out."""
    tensors = {"age": tensor("age", list(ages)), "income": tensor("income", list(incomes)),
               "city": tensor("city", ["a"] * len(ages), "BYTES")}
    for name, t in change.items():
        tensors[name] = t
    return [t for t in tensors.values() if t is not None]


CASES = {
    "plain floats": request(),
    "two rows, ints and floats, [N, 1]": [tensor("age", [41, 52.5], "FP32", [2, 1]), tensor("income", [50.0, 7], "FP32"),
                                          tensor("city", ["a", "b"], "BYTES")],
    "inputs in another order": list(reversed(request())),
    "a null (missing value)": request(ages=(None,)),
    "a bool": request(ages=(True,)),
    "a string in a number": request(incomes=("50",)),
    "over FP32": request(incomes=(1e39,)),
    "an int past 2**24": request(incomes=(2**25,)),
    "a float shape": request(age=tensor("age", [41.0], shape=[1.0])),
    "a bool shape": request(age=tensor("age", [41.0], shape=[True])),
    "rows that disagree": request(ages=(41.0, 42.0)),
    "shape and data that disagree": request(age=tensor("age", [41.0], shape=[2])),
    "nested data": request(age=tensor("age", [[41.0]], shape=[1, 1])),
    "a second dimension of 2": request(age=tensor("age", [41.0, 42.0], shape=[1, 2])),
    "an INT8 tensor": request(age=tensor("age", [41], "INT8")),
    "an INT8 value out of range": request(age=tensor("age", [1000], "INT8")),
    "BYTES for a number": request(age=tensor("age", [41.0], "BYTES")),
    "an input given twice": [*request(), tensor("age", [41.0])],
    "an input missing": request(income=None),
    "an unknown input": [*request(), tensor("height", [1.0])],
    "over the batch limit": request(ages=(1.0,) * 5, incomes=(1.0,) * 5),
    "empty data": request(age=tensor("age", [], shape=[0]), income=tensor("income", [], shape=[0])),
    # the block reads only the tensors it holds: the others' fields are still checked, first in order
    "a tensor that is not an object": [*request(), [1.0]],
    "a number's tensor without a shape": request(age={"name": "age", "datatype": "FP32", "data": [41.0]}),
    "the category's tensor without a datatype": request(city={"name": "city", "shape": [1], "data": ["a"]}),
    "a category's tensor first, without data": [{"name": "city", "shape": [1], "datatype": "BYTES"},
                                                *request(city=None)],
    "a name that is a number": [*request(), tensor(5, [1.0])],  # type: ignore[arg-type]
    "a name that is a list": [*request(), tensor(["age"], [1.0])],  # type: ignore[arg-type]
}


def outcome(predictor: Predictor, inputs: list[dict[str, Any]]) -> Any:
    try:
        feeds = predictor.feeds_from_v2(inputs)
    except RequestError as exc:
        return ("error", exc.status, exc.field, exc.message)
    named = {k: v for k, v in predictor.named(feeds).items() if k in predictor.columns}
    return {k: (v.dtype.str, v.shape, v.tolist()) for k, v in sorted(named.items())}


@pytest.mark.parametrize("case", CASES)
def test_the_block_path_answers_as_the_tensor_by_tensor_path(predictor: Predictor, case: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fast = outcome(predictor, CASES[case])
    monkeypatch.setattr(predictor, "_v2_block", lambda inputs: None)
    slow = outcome(predictor, CASES[case])
    assert repr(fast) == repr(slow)  # repr: NaN == NaN, and -0.0 is not 0.0


def test_the_block_is_taken_for_plain_numbers_and_feeds_the_packed_model(predictor: Predictor) -> None:
    assert predictor.block_key is not None
    feeds = predictor.feeds_from_v2(request(ages=(41.0, 30.0), incomes=(50.0, 20.0)))
    block = feeds[predictor.block_key]
    assert block.flags.c_contiguous and block.dtype == np.float32 and block.shape == (2, 2)
    assert "age" not in feeds and "income" not in feeds  # the block stands for them: the two cannot disagree
    assert np.shares_memory(predictor.named(feeds)["age"], block)  # asked for by name: views of the block
    expected = predictor.predict(predictor.feeds_from_rows([{"age": 41.0, "income": 50.0, "city": "a"},
                                                             {"age": 30.0, "income": 20.0, "city": "a"}]))
    got = predictor.predict(feeds)
    for name, values in expected.outputs.items():
        assert np.array_equal(values, got.outputs[name]), name


@pytest.mark.parametrize("path", ["block", "columns"])
def test_the_log_holds_the_numbers_sent_not_their_widened_float32(predictor: Predictor, path: str) -> None:
    sent = [{"age": 17.99, "income": 0.1, "city": "a"}, {"age": 123456.78, "income": 3, "city": "b"},
            {"age": 1e-7, "income": -2.5e30, "city": "a"}]
    feeds = predictor.feeds_from_rows(sent)
    assert predictor.block_in(feeds) is not None
    if path == "columns":  # feeds without a block (a frame's, a model without packing): each column its own array
        feeds = predictor.named(feeds)
    logged = predictor.log_rows(feeds)
    feeds = predictor.named(feeds)
    # 17.99 as sent, where float(np.float32(17.99)) is 17.989999771118164
    assert [[r["age"], r["income"]] for r in logged] == [[17.99, 0.1], [123456.78, 3.0], [1e-7, -2.5e30]]
    for row, i in zip(logged, range(len(sent)), strict=True):  # the very float32 numbers the model was given
        assert np.float32(row["age"]) == feeds["age"][i, 0] and np.float32(row["income"]) == feeds["income"][i, 0]


def test_a_missing_number_is_logged_as_null(predictor: Predictor) -> None:
    logged = predictor.log_rows(predictor.feeds_from_rows([{"age": None, "income": 2.5, "city": "a"}]))
    assert logged[0]["age"] is None and logged[0]["income"] == 2.5
