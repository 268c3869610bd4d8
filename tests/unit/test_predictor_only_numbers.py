"""A model whose every input is a packed number (quickstart's kind) decodes a plain request, V1 or V2, straight
into its block, its values read and checked by C loops; whatever that shortcut declines goes the general way.
Either way a request's feeds and every error are what the general path gives."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mlops.package.predictor import PlainTensors, Predictor, RequestError, parse_json_body, parse_v2_body
from tests.serve_fixtures import build_bundle, training_frame


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    frame = training_frame()[["age", "income", "y"]]
    made = Predictor(build_bundle(tmp_path_factory.mktemp("numbers") / "bundle", frame=frame), max_batch=4)
    assert made.packed_columns == ["age", "income"] and made._only_packed is not None
    return made


def tensor(name: Any, data: Any, datatype: Any = "FP32", shape: Any = None) -> dict[str, Any]:
    return {"name": name, "shape": [len(data), 1] if shape is None else shape, "datatype": datatype, "data": data}


def v2(ages: Any = (41.0,), incomes: Any = (50.0,), **change: Any) -> list[Any]:
    tensors: dict[str, Any] = {"age": tensor("age", list(ages)), "income": tensor("income", list(incomes))}
    tensors |= change
    return [t for t in tensors.values() if t is not None]


V1_CASES: dict[str, Any] = {
    "plain floats": [{"age": 41.0, "income": 50.0}],
    "keys in another order": [{"income": 50.0, "age": 41.0}],
    "negative zero and tiny numbers": [{"age": -0.0, "income": 1e-30}],
    "an int": [{"age": 41, "income": 50.0}],
    "an int past 2**24": [{"age": 2**25, "income": 50.0}],
    "a bool": [{"age": True, "income": 50.0}],
    "a null": [{"age": None, "income": 50.0}],
    "a NaN": [{"age": float("nan"), "income": 50.0}],
    "an infinity": [{"age": float("inf"), "income": 50.0}],
    "infinities that cancel in a sum": [{"age": float("inf"), "income": float("-inf")}],
    "over FP32": [{"age": 1e39, "income": 50.0}],
    "under FP32's lowest": [{"age": -1e39, "income": 50.0}],
    "a string": [{"age": "41", "income": 50.0}],
    "a nested list": [{"age": [41.0], "income": 50.0}],
    "an unknown column": [{"age": 41.0, "income": 50.0, "height": 1.0}],
    "a missing column": [{"age": 41.0}],
    "a row in schema order": [[41.0, 50.0]],
    "two rows": [{"age": 41.0, "income": 50.0}, {"age": 30.0, "income": 20.0}],
    "not a list": {"age": 41.0, "income": 50.0},
    "an empty list": [],
    "a row that is a string": ["age"],
}

V2_CASES: dict[str, Any] = {
    "plain floats": v2(),
    "inputs in another order": list(reversed(v2())),
    "FP64 and FP32 mixed": v2(age=tensor("age", [41.0], "FP64")),
    "every shape [N]": v2(age=tensor("age", [41.0], shape=[1]), income=tensor("income", [50.0], shape=[1])),
    "shapes [N] and [N, 1] mixed": v2(age=tensor("age", [41.0], shape=[1])),
    "two rows": v2(ages=(41.0, 42.0), incomes=(50.0, 7)),
    "two rows of plain floats": v2(ages=(41.0, 42.0), incomes=(50.0, 7.5)),
    "rows that disagree": v2(ages=(41.0, 42.0)),
    "over the batch limit": v2(ages=(1.0,) * 5, incomes=(1.0,) * 5),
    "empty data": v2(age=tensor("age", [], shape=[0, 1]), income=tensor("income", [], shape=[0, 1])),
    "an int": v2(ages=(41,)),
    "an int past 2**24": v2(ages=(2**25,)),
    "a bool": v2(ages=(True,)),
    "a null": v2(ages=(None,)),
    "a NaN": v2(ages=(float("nan"),)),
    "an infinity": v2(ages=(float("inf"),)),
    "over FP32": v2(incomes=(1e39,)),
    "a string in a number": v2(incomes=("50",)),
    "a float shape": v2(age=tensor("age", [41.0], shape=[1.0, 1])),
    "a bool shape": v2(age=tensor("age", [41.0], shape=[True, True])),
    "a shape that is not a list": v2(age=tensor("age", [41.0], shape="1")),
    "shape and data that disagree": v2(age=tensor("age", [41.0], shape=[2, 1])),
    "a second dimension of 2": v2(age=tensor("age", [41.0], shape=[1, 2])),
    "nested data": v2(age=tensor("age", [[41.0]])),
    "data that is not a list": v2(age=tensor("age", 41.0, shape=[1, 1])),
    "an INT8 tensor": v2(age=tensor("age", [41], "INT8")),
    "BYTES for a number": v2(age=tensor("age", [41.0], "BYTES")),
    "a datatype that is a list": v2(age=tensor("age", [41.0], ["FP32"])),
    "an input given twice": [tensor("age", [41.0]), tensor("age", [42.0])],
    "an unknown input in place of one": [tensor("age", [41.0]), tensor("height", [1.0])],
    "an input missing": v2(income=None),
    "a tensor that is not an object": [tensor("age", [41.0]), [50.0]],
    "a tensor without data": v2(income={"name": "income", "shape": [1, 1], "datatype": "FP32"}),
    "a name that is a list": [tensor("age", [41.0]), tensor(["income"], [50.0])],
    "a name that is a number": [tensor("age", [41.0]), tensor(5, [50.0])],
    "one [N, 2] tensor": [tensor("x", [[41.0, 50.0]], shape=[1, 2])],
}


def outcome(predictor: Predictor, decode: str, body: Any) -> Any:
    try:
        feeds = predictor.feeds_from_rows(body) if decode == "v1" else predictor.feeds_from_v2(body)
    except RequestError as exc:
        return ("error", exc.status, exc.field, exc.message)
    block = predictor.block_in(feeds)
    named = {k: v for k, v in feeds.items() if k in predictor.columns}
    return ({k: (v.dtype.str, v.shape, v.tolist()) for k, v in sorted(named.items())},
            None if block is None else (block.dtype.str, block.shape, block.flags.c_contiguous, block.tolist()),
            all(np.shares_memory(v, block) for v in named.values()) if block is not None else None)


@pytest.mark.parametrize("decode,case", [*(("v1", c) for c in V1_CASES), *(("v2", c) for c in V2_CASES)])
def test_the_shortcut_answers_as_the_general_path(predictor: Predictor, decode: str, case: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    body = (V1_CASES if decode == "v1" else V2_CASES)[case]
    fast = outcome(predictor, decode, body)
    monkeypatch.setattr(predictor, "_only_packed", None)  # what a model with a category column goes through
    slow = outcome(predictor, decode, body)
    assert repr(fast) == repr(slow)  # repr: NaN == NaN, and -0.0 is not 0.0


def test_a_plain_request_takes_the_shortcut(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    def general(*args: Any) -> None:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(predictor, "_numeric_block", general)
    monkeypatch.setattr(predictor, "_v2_block", general)
    rows = predictor.feeds_from_rows([{"income": 50.0, "age": 41.0}])
    tensors = predictor.feeds_from_v2(list(reversed(v2(ages=(41.0, 42.0), incomes=(50.0, 7.5)))))
    assert list(rows) == list(tensors) == [predictor.block_key]  # the block alone stands for the columns
    by_name, tensors = predictor.named(rows), predictor.named(tensors)
    assert by_name["age"].tolist() == [[41.0]] and by_name["income"].tolist() == [[50.0]]
    assert tensors["age"].tolist() == [[41.0], [42.0]] and tensors["income"].tolist() == [[50.0], [7.5]]
    got, expected = predictor.predict(rows), predictor.predict({"age": np.array([[41.0]], np.float32),
                                                               "income": np.array([[50.0]], np.float32)})
    for name, values in expected.outputs.items():
        assert np.array_equal(values, got.outputs[name]), name


# bodies as bytes, for what the one-pass decoder of a plain V2 body (parse_v2_body) must read as the generic one
V2_BODIES: dict[str, bytes] = {
    **{case: json.dumps({"inputs": inputs}).encode() for case, inputs in V2_CASES.items()},
    "an id, parameters and outputs": json.dumps({"id": "r1", "parameters": {"binary_data_output": False},
                                                 "outputs": [{"name": "label"}], "inputs": v2()}).encode(),
    "an id that is a number": json.dumps({"id": 5, "inputs": v2()}).encode(),
    "an unknown field": json.dumps({"inputs": v2(), "extra": 1}).encode(),
    "a tensor with parameters": json.dumps({"inputs": v2(age={**tensor("age", [41.0]), "parameters": {}})}).encode(),
    "inputs given twice": b'{"inputs": [], "inputs": ' + json.dumps(v2()).encode() + b"}",
    "a field given twice": json.dumps({"inputs": v2()}).encode().replace(b'"data": [41.0]',
                                                                         b'"data": [1.0], "data": [41.0]'),
    "an int past 64 bits": json.dumps({"inputs": v2(ages=(2**70,))}).encode(),
    "an int at 2**24": json.dumps({"inputs": v2(ages=(2**24, ), incomes=(-2**24,))}).encode(),
    "a number past float64": json.dumps({"inputs": v2()}).encode().replace(b"41.0", b"1e400"),
    "FP32's largest and negative zero": json.dumps({"inputs": v2(ages=(-0.0,), incomes=(3.4028234663852886e38,))}
                                                   ).encode(),
    "a NaN token": json.dumps({"inputs": v2(ages=(float("nan"),))}).encode(),
    "inputs that is not a list": b'{"inputs": {"age": 1}}',
    "no inputs": b'{"id": "x"}',
    "not an object": b"[1, 2]",
    "malformed": b'{"inputs": [',
    "fields in another order": json.dumps({"outputs": [{"name": "label"}], "inputs": v2(), "id": "r2"}).encode(),
    **{f"{field} nested past the recursion limit": b'{"inputs": [], "' + field.encode() + b'": '
       + b"[" * 5000 + b"]" * 5000 + b"}" for field in ("id", "parameters", "outputs")},
}
# over 16 rows the generic path checks the values by numpy, not one by one: the same rule must hold there
ROWS = 17
V2_MANY_ROWS: dict[str, bytes] = {
    "floats": json.dumps({"inputs": v2(ages=(41.5,) * ROWS, incomes=(2.5e7,) * ROWS)}).encode(),
    "ints with floats past 2**24": json.dumps({"inputs": v2(ages=(41,) * ROWS, incomes=(2.5e7,) * ROWS)}).encode(),
    "an int past 2**24": json.dumps({"inputs": v2(ages=(41,) * (ROWS - 1) + (2**25,), incomes=(1.5,) * ROWS)}
                                    ).encode(),
    "a float over FP32": json.dumps({"inputs": v2(ages=(41,) * ROWS, incomes=(1.5,) * (ROWS - 1) + (1e39,))}
                                    ).encode(),
}


def body_outcome(predictor: Predictor, parse: Any, raw: bytes) -> Any:
    try:
        body = parse(raw)
    except RequestError as exc:
        return ("error", exc.status, exc.field, exc.message)
    if not isinstance(body, dict):
        return ("not an object", body)
    rest = {k: v for k, v in body.items() if k != "inputs"}
    return rest, outcome(predictor, "v2", body.get("inputs"))


def same(a: Any, b: Any) -> bool:
    # the body's other fields as dicts (their order is no one's concern), the feeds by repr (NaN, -0.0)
    return type(a) is type(b) and (a == b if not isinstance(a, tuple) or len(a) != 2
                                   else a[0] == b[0] and repr(a[1]) == repr(b[1]))


@pytest.mark.parametrize("only_packed", [True, False], ids=["numbers only", "a model with other inputs"])
@pytest.mark.parametrize("case", list(V2_BODIES))
def test_a_plain_v2_body_decodes_as_the_generic_one(predictor: Predictor, case: str, only_packed: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if not only_packed:  # the plain tensors then go the general way, as the JSON's objects
        monkeypatch.setattr(predictor, "_only_packed", None)
    raw = V2_BODIES[case]
    assert same(body_outcome(predictor, parse_v2_body, raw), body_outcome(predictor, parse_json_body, raw))


@pytest.mark.parametrize("case", list(V2_MANY_ROWS))
def test_many_rows_decode_as_the_generic_ones(predictor: Predictor, case: str) -> None:
    wide = Predictor(predictor.path, max_batch=64)
    raw = V2_MANY_ROWS[case]
    typed, generic = body_outcome(wide, parse_v2_body, raw), body_outcome(wide, parse_json_body, raw)
    assert same(typed, generic)
    wide._only_packed = None  # the general path's own block (_v2_block) holds the same rule
    assert repr(body_outcome(wide, parse_json_body, raw)[1][1]) == repr(generic[1][1])


def test_a_plain_v2_body_is_decoded_in_one_pass(predictor: Predictor) -> None:
    body = parse_v2_body(json.dumps({"id": "r1", "inputs": list(reversed(v2(ages=(41.0, 42), incomes=(50.0, 7.5))))
                                     }).encode())
    assert type(body["inputs"]) is PlainTensors and body["id"] == "r1"
    feeds = predictor.feeds_from_v2(body["inputs"])
    block = feeds[predictor.block_key]
    assert list(feeds) == [predictor.block_key] and block.flags.c_contiguous and block.dtype == np.float32
    assert block.tolist() == [[41.0, 50.0], [42.0, 7.5]]
    # a body the decoder refuses (a bool) is read by the generic decoder: its inputs are the JSON's list
    assert type(parse_v2_body(json.dumps({"inputs": v2(ages=(True,))}).encode())["inputs"]) is list


def test_a_log_row_is_the_block_row_named(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    assert predictor._block_is_row
    feeds = predictor.feeds_from_v2(v2(ages=(41.0, -0.0), incomes=(0.1, 2**24)))
    fast = predictor.log_rows(feeds)
    monkeypatch.setattr(predictor, "_block_is_row", False)  # the general path, column by column
    general = predictor.log_rows(feeds)
    assert repr(fast) == repr(general) == repr([{"age": 41.0, "income": 0.1}, {"age": -0.0, "income": 16777216.0}])
    assert [list(r) for r in fast] == [list(predictor.columns)] * 2  # the inputs' order, as the general path
