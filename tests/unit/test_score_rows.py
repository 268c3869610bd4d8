"""Batch and stream scoring judge a row exactly as the server does, and say which column failed and why."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.package.predictor import Predictor, RequestError
from mlops.score.rows import from_text, from_typed, judge, score_frame
from tests.serve_fixtures import build_bundle

ROWS = [
    {"age": 41.0, "income": 50.0, "city": "a"},
    {"age": None, "income": 20, "city": None},            # missing values: imputed by the graph
    {"age": "41", "income": 50.0, "city": "b"},           # a string where a number belongs
    {"age": 30.0, "income": math.inf, "city": "c"},       # non-finite
    {"age": 2**25, "income": 1.0, "city": "a"},           # an integer FP32 cannot hold exactly
    {"age": 1e39, "income": 1.0, "city": "a"},            # overflows FP32
    {"age": True, "income": 1.0, "city": "a"},            # a boolean is not a number
    {"age": 50, "income": 1.0, "city": 7},                # a number in a column of strings is no category
    {"age": 50, "income": 1.0, "city": False},            # a boolean is not a category
    {"age": 33.5, "income": [1], "city": "zz"},           # a list; and an unseen category (fine)
    {"age": 60.0, "income": 80.0, "city": "c"},
]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor(build_bundle(tmp_path_factory.mktemp("score-rows") / "bundle"))


def test_a_row_gets_the_same_verdict_and_prediction_as_in_a_request(predictor: Predictor) -> None:
    columns = {n: [r[n] for r in ROWS] for n in predictor.columns}
    judged = judge(predictor, columns, len(ROWS))
    expected = predictor.predict(predictor.feeds_from_rows([r for r in ROWS if _server_accepts(predictor, r)]))
    scored = predictor.predict(judged.feeds)

    for i, row in enumerate(ROWS):
        try:
            predictor.feeds_from_rows([row])
        except RequestError as exc:
            assert not judged.ok[i], f"row {i} was accepted in batch but refused by the server: {exc}"
            assert exc.message in judged.error(i)
        else:
            assert judged.ok[i], f"row {i} was refused in batch ({judged.error(i)}) but the server accepts it"
    assert judged.ok.tolist() == [True, True, False, False, False, False, False, False, False, False, True]
    assert list(scored.outputs["label"]) == list(expected.outputs["label"])
    np.testing.assert_allclose(scored.outputs["probabilities"], expected.outputs["probabilities"], atol=1e-6)


def _server_accepts(predictor: Predictor, row: dict) -> bool:
    try:
        predictor.feeds_from_rows([row])
        return True
    except RequestError:
        return False


def test_every_failing_column_of_a_row_is_named(predictor: Predictor) -> None:
    columns = {"age": ["x", 1.0], "income": [math.nan, 2.0], "city": ["a", ["b"]]}

    judged = judge(predictor, columns, 2)

    assert judged.ok.tolist() == [False, False]
    assert [f for f, _ in judged.problems[0]] == ["age", "income"]
    assert judged.error(0).startswith("age: expected a number for 'age', got str (value 'x'); income: non-finite")
    assert judged.error(1) == "city: expected a string category, got list (value ['b'])"


@pytest.mark.parametrize(("cell", "numeric", "value"), [
    ("", True, None), ("NA", True, None), ("nan", True, None), ("null", False, None), ("#N/A", False, None),
    ("12", True, 12), (" -7 ", True, -7), ("1.5", True, 1.5), ("1e3", True, 1000.0), (".5", True, 0.5),
    ("inf", True, math.inf), ("abc", True, "abc"), ("1_000", True, "1_000"), ("0x10", True, "0x10"),
    ("007", False, "007"), ("12", False, "12"),
])
def test_a_text_cell_becomes_the_value_a_request_would_carry(cell: str, numeric: bool, value: object) -> None:
    parsed = from_text(cell, numeric)

    assert parsed == value and type(parsed) is type(value)


def test_typed_cells_lose_numpy_types_and_missing_markers() -> None:
    assert from_typed(np.float64("nan")) is None and from_typed(pd.NA) is None and from_typed(pd.NaT) is None
    assert from_typed(None) is None
    assert type(from_typed(np.int64(3))) is int and from_typed(np.int64(3)) == 3
    assert type(from_typed(np.float32(0.5))) is float and from_typed("a") == "a"


def test_a_scored_chunk_has_one_row_per_input_row_with_outputs_or_an_error(predictor: Predictor,
                                                                         tmp_path: Path) -> None:
    frame = pd.DataFrame({"key": ["k0", "", "k2"], "age": ["40", "41", "old"], "income": ["50", "", "1"],
                          "city": ["a", "b", "c"]})
    fields = [("label", "string", False), ("probabilities", "float32", True)]

    out = score_frame(predictor, frame, True, 100, "f.csv", "key", "3", fields)
    anonymous = score_frame(predictor, frame, True, 100, "f.csv", None, None, fields)

    assert out["id"].tolist() == ["k0", "f.csv:101", "k2"]
    assert out["row"].tolist() == [100, 101, 102]
    assert out["error"].tolist() == [None, "key: missing id", "age: expected a number for 'age', got str (value 'old')"]
    assert out["version"].tolist() == ["3"] * 3 and out["model"].tolist() == ["toy"] * 3
    assert out["label"][0] in ("yes", "no") and out["label"][1] is None and out["label"][2] is None
    assert out["probabilities"][0].dtype == np.float32 and abs(float(out["probabilities"][0].sum()) - 1) < 1e-5
    assert anonymous["id"].tolist() == ["f.csv:100", "f.csv:101", "f.csv:102"]
    assert anonymous["error"].tolist()[:2] == [None, None]  # no id column: the empty key is just another column
