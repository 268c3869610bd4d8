"""Strict request values and invisible whitespace (data.categories): a number where a category belongs, a category
never seen in training, V2 values outside their datatype, and categories that differ only by leading or trailing
spaces, in training, in both request protocols, and in batch scoring."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from mlops.cli import main
from mlops.core.errors import ExpectationError
from mlops.data.expectations import category_whitespace, check_expectations
from mlops.data.preprocess import fit_preprocessor
from mlops.data.schema import infer_schema
from mlops.engine.cache import Cache
from mlops.engine.plan import compile_plan
from mlops.engine.validate import load_validated
from mlops.package.predictor import Predictor
from mlops.recipe.compose import SHIPPED_CONFIGS
from mlops.recipe.schema import DataConfig, ExpectationsConfig
from mlops.score.batch import score_local
from mlops.score.rows import judge, output_fields, score_frame
from mlops.score.source import open_input
from mlops.serve.app import Server
from tests.conftest import ROOT
from tests.serve_fixtures import build_bundle, training_frame

V1 = "/v1/models/toy:predict"
V2 = "/v2/models/toy/infer"
ROW = {"age": 41.0, "income": 50.0, "city": "a"}


def spaced_frame() -> pd.DataFrame:
    """The fixture's training rows with city 'c' written as '  gold ' (a space typed in a spreadsheet)."""
    frame = training_frame()
    frame["city"] = frame["city"].replace({"c": "  gold "})
    return frame


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("strict")
    made = {policy: build_bundle(root / policy, frame=spaced_frame(), data={"categories": {"unseen": policy}})
            for policy in ("impute", "error", "allow")}
    made["legacy"] = build_bundle(root / "legacy", frame=spaced_frame())  # bundle.json without `categories`
    zips = training_frame().assign(city=lambda f: f["city"].map({"a": 94110, "b": 10001, "c": 60601}))
    made["numeric-categories"] = build_bundle(root / "zips", frame=zips, data={"categorical": ["city"]})
    return made


def served(bundle: Path) -> tuple[TestClient, Server]:
    server = Server(Predictor(bundle), None)
    return TestClient(server.app()), server


def v2_body(city: list[Any], datatype: str = "BYTES", age: list[Any] | None = None,
            age_datatype: str = "FP64") -> dict[str, Any]:
    n = len(city)
    return {"inputs": [{"name": "age", "shape": [n], "datatype": age_datatype, "data": age or [41.0] * n},
                       {"name": "income", "shape": [n], "datatype": "FP64", "data": [50.0] * n},
                       {"name": "city", "shape": [n], "datatype": datatype, "data": city}]}


# --- whitespace (item 3) ---------------------------------------------------------------------------------------

def test_training_trims_categories_by_default_and_the_schema_keeps_them_trimmed() -> None:
    frame = spaced_frame()
    schema = infer_schema(DataConfig(path="x.csv", target="y"), frame)
    assert schema.column("city").categories == ["a", "b", "gold"]
    pre = fit_preprocessor(schema, frame, trim=True)
    retyped = frame.assign(city=frame["city"].str.strip())
    np.testing.assert_array_equal(pre.transform(frame), pre.transform(retyped))
    assert pre.transform(frame)[:, -3:].sum(axis=1).min() == 1.0  # no spaced row fell to "missing"

    kept = infer_schema(DataConfig(path="x.csv", target="y", categories={"trim": False}), frame)
    assert kept.column("city").categories == ["  gold ", "a", "b"]


def test_a_request_with_or_without_the_spaces_gets_the_training_answer(bundles: dict[str, Path]) -> None:
    predictor = Predictor(bundles["impute"])
    spaced = predictor.predict(predictor.feeds_from_rows([ROW | {"city": "  gold "}]))
    trimmed = predictor.predict(predictor.feeds_from_rows([ROW | {"city": "gold"}]))
    np.testing.assert_array_equal(spaced.outputs["probabilities"], trimmed.outputs["probabilities"])
    # the graph saw a known category: not the all-zero encoding of a missing one
    missing = predictor.predict(predictor.feeds_from_rows([ROW | {"city": None}]))
    assert not np.allclose(trimmed.outputs["probabilities"], missing.outputs["probabilities"])
    # a data frame (evaluation, monitoring) goes through the same trimming
    frame_feeds = predictor.frame_feeds(pd.DataFrame([ROW | {"city": " gold"}]))
    assert frame_feeds["city"].tolist() == [["gold"]]


def test_a_bundle_from_before_the_policies_reads_categories_as_sent(bundles: dict[str, Path]) -> None:
    client, _ = served(bundles["legacy"])
    with client:
        answer = client.post(V1, json={"instances": [ROW | {"city": "gold"}, ROW | {"city": "  gold "}]})
    assert answer.status_code == 200
    assert "imputed" not in answer.json()  # silent, as such a bundle always was
    predictor = Predictor(bundles["legacy"])
    assert predictor.unseen(predictor.feeds_from_rows([ROW | {"city": "gold"}])) == {"city": [0]}


def test_validate_warns_of_spaced_categories_naming_the_column_and_quoting_the_values() -> None:
    frame = spaced_frame()
    warnings = category_whitespace(frame, DataConfig(path="x.csv", target="y"))
    assert len(warnings) == 1
    assert warnings[0].startswith("column 'city': categories with leading or trailing whitespace: '  gold '")
    assert "strips it" in warnings[0]
    off = category_whitespace(frame, DataConfig(path="x.csv", target="y", categories={"trim": False}))
    assert "trim is off" in off[0]
    assert category_whitespace(training_frame(), DataConfig(path="x.csv", target="y")) == []


def test_an_expectation_error_quotes_the_values_so_whitespace_shows() -> None:
    frame = pd.DataFrame({"tier": ["gold", "gold ", "silver"]})
    cfg = ExpectationsConfig.model_validate({"columns": {"tier": {"allowed": ["gold", "silver"]}}})
    with pytest.raises(ExpectationError, match=r"values outside \['gold', 'silver'\]: 'gold '; rows \(0-based\) 1"):
        check_expectations(frame, cfg, "tiers.csv")


# --- numbers where a category belongs (item 2) -----------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_number_in_a_string_category_is_a_400_naming_the_field(bundles: dict[str, Path], protocol: str) -> None:
    client, _ = served(bundles["impute"])
    with client:
        if protocol == "v1":
            answer = client.post(V1, json={"instances": [ROW, ROW | {"city": 3}]})
            field = "instances[].city[1]"
        else:
            answer = client.post(V2, json=v2_body(["a", 3]))
            field = "inputs[2].data[1]"
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field
    assert "expected a string category for 'city', got the number 3" in answer.json()["error"]


def test_a_column_of_numbers_declared_categorical_still_takes_numbers(bundles: dict[str, Path]) -> None:
    predictor = Predictor(bundles["numeric-categories"])
    as_number = predictor.predict(predictor.feeds_from_rows([ROW | {"city": 94110}]))
    as_text = predictor.predict(predictor.feeds_from_rows([ROW | {"city": "94110"}]))
    np.testing.assert_array_equal(as_number.outputs["probabilities"], as_text.outputs["probabilities"])


# --- unseen categories ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_unseen_error_is_a_400_naming_the_field_and_the_value(bundles: dict[str, Path], protocol: str) -> None:
    client, _ = served(bundles["error"])
    with client:
        if protocol == "v1":
            answer = client.post(V1, json={"instances": [ROW, ROW | {"city": "platinum"}]})
        else:
            answer = client.post(V2, json=v2_body(["a", "platinum"]))
        assert client.post(V1, json={"instances": [ROW | {"city": " gold"}, ROW | {"city": None}]}).status_code == 200
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == ("instances[].city[1]" if protocol == "v1" else "inputs[2].data[1]")
    assert "category 'platinum' of 'city' was never seen in training" in answer.json()["error"]


def test_unseen_impute_answers_names_the_rows_and_counts_them(bundles: dict[str, Path]) -> None:
    client, server = served(bundles["impute"])
    with client:
        v1 = client.post(V1, json={"instances": [ROW, ROW | {"city": "platinum"}, ROW | {"city": None}]})
        v2 = client.post(V2, json=v2_body(["zinc", "a"]))
        clean = client.post(V1, json={"instances": [ROW]})
    assert v1.status_code == 200 and v2.status_code == 200
    assert v1.json()["imputed"] == [[], ["city"], []]  # a missing value is no unseen one
    assert v2.json()["parameters"]["imputed"] == "city[0]"
    assert "imputed" not in clean.json()
    metrics = server.metrics.render()[0].decode()
    assert 'mlops_unseen_categories_total{feature="city",model="toy"} 2.0' in metrics


def test_unseen_allow_answers_without_a_word_but_counts(bundles: dict[str, Path]) -> None:
    client, server = served(bundles["allow"])
    with client:
        answer = client.post(V1, json={"instances": [ROW | {"city": "platinum"}]})
    assert answer.status_code == 200 and "imputed" not in answer.json()
    assert 'mlops_unseen_categories_total{feature="city",model="toy"} 1.0' in server.metrics.render()[0].decode()


# --- V2 datatypes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("datatype", "value", "message"), [
    ("INT8", 1000, "1000 is outside INT8 (-128 to 127) for input 'age'"),
    ("UINT8", -5, "-5 is outside UINT8 (0 to 255) for input 'age'"),
    ("FP16", 70000.0, "70000.0 is outside FP16 (largest 65504) for input 'age'"),
    ("INT32", 1.5, "INT32 takes integers, got 1.5 for input 'age'"),
])
def test_a_v2_value_outside_its_datatype_is_a_400_naming_the_input(bundles: dict[str, Path], datatype: str,
                                                                  value: Any, message: str) -> None:
    client, _ = served(bundles["impute"])
    with client:
        answer = client.post(V2, json=v2_body(["a", "b"], age=[40, value], age_datatype=datatype))
        fits = client.post(V2, json=v2_body(["a"], age=[40], age_datatype=datatype))
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"error": f"inputs[0].data[1]: {message}", "field": "inputs[0].data[1]"}
    assert fits.status_code == 200


def test_an_integer_past_any_float_is_a_400_not_a_crash(bundles: dict[str, Path]) -> None:
    client, _ = served(bundles["impute"])
    with client:
        v1 = client.post(V1, content=b'{"instances": [{"age": 1' + b"0" * 400 + b', "income": 1, "city": "a"}]}')
        v2 = client.post(V2, json=v2_body(["a"], age=[10**400], age_datatype="FP16"))
    assert (v1.status_code, v1.json()["field"]) == (400, "instances[].age[0]")
    assert (v2.status_code, v2.json()["field"]) == (400, "inputs[0].data[0]")


# --- batch scoring: the same verdicts --------------------------------------------------------------------------

def test_batch_rows_meet_the_same_rules(bundles: dict[str, Path]) -> None:
    rows = [ROW, ROW | {"city": 3}, ROW | {"city": "platinum"}, ROW | {"city": "  gold "}]
    columns = {n: [r[n] for r in rows] for n in ("age", "income", "city")}

    strict = judge(Predictor(bundles["error"]), columns, len(rows))
    assert strict.ok.tolist() == [True, False, False, True]
    assert strict.error(1).startswith("city: expected a string category for 'city', got the number 3")
    assert strict.error(2).startswith("city: category 'platinum' of 'city' was never seen in training")

    predictor = Predictor(bundles["impute"])
    frame = pd.DataFrame(rows)
    unseen: dict[str, int] = {}
    scored = score_frame(predictor, frame, False, 0, "f.parquet", None, None, output_fields(predictor.meta),
                         unseen=unseen)
    assert scored["error"].notna().tolist() == [False, True, False, False]
    assert unseen == {"city": 1}


def test_a_batch_file_counts_its_unseen_categories(bundles: dict[str, Path], tmp_path: Path) -> None:
    rows = pd.DataFrame([ROW, ROW | {"city": "platinum"}, ROW | {"city": " gold"}, ROW | {"city": "zinc"}, ROW])
    rows.to_csv(tmp_path / "in.csv", index=False)

    result = score_local(open_input(tmp_path / "in.csv"), bundles["impute"], None, tmp_path / "out.parquet",
                         chunk_rows=2, progress=False)

    assert (result.scored, result.failed) == (5, 0)
    assert result.unseen_by_column == {"city": 2}


# --- the recipe: validate's warning, the export's cache key --------------------------------------------------

def test_mlops_validate_warns_of_spaced_categories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(SHIPPED_CONFIGS, tmp_path / "configs")
    spaced_frame().to_csv(tmp_path / "rows.csv", index=False)
    recipe = tmp_path / "spaced.yaml"
    recipe.write_text("name: spaced\ndata:\n  path: rows.csv\n  target: y\n")
    monkeypatch.delenv("MLOPS_CONFIG_PATH", raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    monkeypatch.chdir(tmp_path)

    assert main(["validate", str(recipe)]) == 0

    err = capsys.readouterr().err
    assert ("data.path: column 'city': categories with leading or trailing whitespace: '  gold ' "
            "(data.categories.trim strips it in training and serving alike)") in err


def test_the_category_policies_are_part_of_the_export_key(tmp_path: Path) -> None:
    def keys(*overrides: str) -> dict[str, str]:
        plan = compile_plan(load_validated(ROOT / "recipes" / "quickstart.yaml", list(overrides)), Cache(tmp_path))
        return {s.name: s.key for s in plan.steps}

    default = keys()
    unseen, trim = keys("data.categories.unseen=error"), keys("data.categories.trim=false")
    # the unseen policy acts in the bundle only: the model is kept, exported again
    assert [s for s in default if default[s] == unseen[s]] == ["load_data", "check_data", "split", "preprocess",
                                                                 "train", "evaluate"]
    # trimming changes what training sees
    assert [s for s in default if default[s] == trim[s]] == ["load_data", "check_data", "split"]
