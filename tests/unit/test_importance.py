"""Permutation importance on real ONNX bundles (built without torch): a fitted linear model over a column that
leaks the label must rank it first by far and fail an `importance/<column>` gate, the interval must hold the
mean, a seed must repeat the result, and the evaluation report must show it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.linear_model import LogisticRegression

from mlops.data.preprocess import fit_preprocessor
from mlops.data.schema import encode_labels, infer_schema
from mlops.evaluate.assess import assess_bundle
from mlops.evaluate.gates import evaluate_gates
from mlops.evaluate.importance import JSON_NAME, PLOT_NAME, main_score, permutation_importance
from mlops.evaluate.report import write_report
from mlops.package.bundle import write_bundle
from mlops.package.graph import ML_OPSET, assemble, io_description, postprocessing_graph, preprocessing_graph
from mlops.recipe.metrics import importance_metrics, is_importance_metric
from mlops.recipe.schema import DataConfig, Recipe
from tests.serve_fixtures import build_bundle, training_frame


def _leaky(n: int, seed: int) -> pd.DataFrame:
    """The serve fixture's rows with `leak`, a copy of the label."""
    frame = training_frame(n, seed)
    return frame.assign(leak=frame["y"])


def _fitted_bundle(dest: Path, frame: pd.DataFrame) -> Path:
    """The serve fixture's bundle, its linear layer fitted (logistic regression) instead of drawn."""
    cfg = DataConfig.model_validate({"path": "x.csv", "target": "y", "categories": {"trim": False}})
    schema = infer_schema(cfg, frame)
    pre = fit_preprocessor(schema, frame, trim=False)
    fit = LogisticRegression(C=10.0, max_iter=2000).fit(pre.transform(frame), encode_labels(frame["y"], schema.labels or []))
    # two logits whose softmax is the fitted model's probability
    w = np.stack([np.zeros(pre.n_features), fit.coef_[0]], axis=1).astype(np.float32)
    b = np.array([0.0, fit.intercept_[0]], np.float32)
    net = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["logits"])], "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", pre.n_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    net.ir_version = 10
    full = assemble(preprocessing_graph(pre, 18, 10), net, postprocessing_graph("binary", 2, schema.labels, None, 18, 10))
    inputs = [{"name": s.name, "kind": "numeric", "dtype": "float32"} for s in pre.numeric]
    inputs += [{"name": c.name, "kind": "categorical", "dtype": "string"} for c in pre.categorical]
    write_bundle(dest, full.SerializeToString(), {
        "name": dest.name, "task": "binary", "inputs": inputs, "outputs": io_description(full)["outputs"],
        "labels": schema.labels, "recipe_hash": "test", "data_fingerprint": "sha256:test", "metrics": {},
        "data_schema": schema.model_dump(), "parity": {}, "mlops_version": "test"})
    return dest


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    train = _leaky(200, 0)
    return _fitted_bundle(tmp_path_factory.mktemp("leaky") / "leaky", train), train, _leaky(120, 1)


def test_a_column_that_leaks_the_label_dominates(leaky: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    bundle, _, test = leaky

    result = permutation_importance(bundle, test, "y", repeats=4, seed=0)

    by = {c["column"]: c for c in result["columns"]}
    assert set(by) == {"age", "income", "city", "leak"}  # every raw input column, the categorical ones included
    assert result["metric"] == "auroc" and result["baseline"] > 0.95 and result["rows"] == 120
    assert result["columns"][0]["column"] == "leak"
    assert by["leak"]["mean"] > 0.2 and by["leak"]["mean"] > 3 * max(abs(by[c]["mean"]) for c in ("age", "income"))
    means = [c["mean"] for c in result["columns"]]
    assert means == sorted(means, reverse=True)
    for c in result["columns"]:
        assert len(c["drops"]) == 4
        assert c["ci"][0] <= c["mean"] <= c["ci"][1]
        assert c["mean"] == pytest.approx(np.mean(c["drops"]))


def test_a_seed_repeats_the_shuffles_and_another_does_not(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "toy")
    test = training_frame(80, seed=3)

    first = permutation_importance(bundle, test, "y", repeats=3, seed=7)

    assert permutation_importance(bundle, test, "y", repeats=3, seed=7) == first
    assert permutation_importance(bundle, test, "y", repeats=3, seed=8)["columns"] != first["columns"]
    single = permutation_importance(bundle, test, "y", repeats=1, max_rows=30, seed=7)
    assert single["rows"] == 30 and all(c["ci"] == [c["mean"], c["mean"]] for c in single["columns"])


def _recipe(gates: list[dict[str, Any]], **importance: Any) -> Recipe:
    return Recipe.model_validate({
        "name": "leak", "data": {"path": "x.csv", "target": "y"},
        "evaluate": {"robustness": {"enabled": False}, "performance": {"enabled": False},
                     "importance": {"repeats": 3} | importance, "gates": gates}})


def test_an_importance_gate_fails_the_leaking_column_and_passes_a_harmless_one(
        leaky: tuple[Path, pd.DataFrame, pd.DataFrame], tmp_path: Path) -> None:
    bundle, train, test = leaky
    recipe = _recipe([{"metric": "importance/leak", "max": 0.1}, {"metric": "importance/income", "max": 0.1}])

    results = assess_bundle(recipe, bundle, test, train, out=tmp_path / "assess")
    verdicts = evaluate_gates(recipe.evaluate.gates, results, {}, None, None, {}, {}, recipe.eval_seed)

    assert [v.status for v in verdicts] == ["failed", "passed"]
    assert "above the maximum 0.1" in verdicts[0].detail
    assert results["metrics"]["importance/leak"] == results["importance"]["columns"][0]["mean"]
    assert set(results["importance"]["files"]) == {JSON_NAME, PLOT_NAME}  # no module: no attributions
    assert json.loads((tmp_path / "assess" / JSON_NAME).read_text())["columns"][0]["column"] == "leak"
    with Image.open(tmp_path / "assess" / PLOT_NAME) as plot:
        assert plot.width > 100 and plot.height > 100

    report = {"model": {"name": "leak", "task": "binary"}, "outcome": "failed",
              "gates": [v.model_dump() for v in verdicts]} | results
    paths = write_report(report, tmp_path / "report")
    page = Path(paths["html"]).read_text()
    assert "Feature importance" in page and "drop of auroc" in page
    assert page.index("<td>leak</td>") < page.index("<td>income</td>")  # ranked
    assert "feature importance" in page and "data:image/png;base64," in page  # the bar chart, embedded


def test_importance_can_be_turned_off(leaky: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    bundle, train, test = leaky

    results = assess_bundle(_recipe([], enabled=False), bundle, test, train)

    assert results["importance"] == {} and not any(is_importance_metric(k) for k in results["metrics"])


def test_importance_metric_names() -> None:
    assert importance_metrics(["age", "city"]) == {"importance/age": "lower", "importance/city": "lower"}
    assert is_importance_metric("importance/age") and not is_importance_metric("importance/")
    assert not is_importance_metric("test/auroc")


def test_the_main_score_follows_the_task() -> None:
    assert main_score("regression", np.zeros(3), 0)[0] == "r2"
    assert main_score("binary", np.array([0, 1, 1]), 2)[0] == "auroc"
    assert main_score("binary", np.array([1, 1, 1]), 2)[0] == "accuracy"  # AUROC is undefined on one class
    assert main_score("multiclass", np.array([0, 1, 2]), 3)[0] == "accuracy"


def test_validate_accepts_an_importance_gate_and_names_a_wrong_declared_column() -> None:
    from mlops.recipe.checks import gate_problems

    def recipe(metric: str, **data: Any) -> Recipe:
        return Recipe.model_validate({"name": "t", "data": {"path": "x.csv", "target": "y"} | data,
                                      "evaluate": {"gates": [{"metric": metric, "max": 0.1}]}})

    assert gate_problems(recipe("importance/anything")) == []  # the columns are known once the data is read
    assert gate_problems(recipe("importance/age", features=["age", "city"])) == []
    [problem] = gate_problems(recipe("importance/agee", features=["age", "city"]))
    assert "not a column of data.features" in problem.message and "importance/age" in problem.hint
    off = Recipe.model_validate({"name": "t", "data": {"path": "x.csv", "target": "y"},
                                 "evaluate": {"importance": {"enabled": False},
                                              "gates": [{"metric": "importance/age", "max": 0.1}]}})
    assert "evaluate.importance.enabled" in gate_problems(off)[0].message


def test_a_gate_on_a_column_the_model_lacks_names_the_nearest(
        leaky: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    bundle, train, test = leaky
    recipe = _recipe([{"metric": "importance/leek", "max": 0.1}])

    results = assess_bundle(recipe, bundle, test, train)
    [verdict] = evaluate_gates(recipe.evaluate.gates, results, {}, None, None, {}, {}, recipe.eval_seed)

    assert verdict.status == "error" and "did you mean 'importance/leak'" in verdict.detail
