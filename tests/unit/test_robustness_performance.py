"""Robustness checks and the inference benchmark, on real small bundles built without training.

The healthy bundle (tests/serve_fixtures.py) must pass every check; hand-built broken bundles (NaN or a
crash for values far outside the training range) must be caught by exactly the checks meant to catch
them. Performance tests check shapes and units only: speed figures are machine-dependent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlops.data.preprocess import fit_preprocessor
from mlops.data.schema import infer_schema
from mlops.evaluate.performance import benchmark_onnx, benchmark_torch, perf_metrics
from mlops.evaluate.robustness import robustness_checks, robustness_summary
from mlops.package.bundle import write_bundle
from mlops.package.graph import ML_OPSET, assemble, io_description, postprocessing_graph, preprocessing_graph
from mlops.package.predictor import Predictor
from mlops.recipe.schema import DataConfig, PerformanceConfig, RobustnessConfig
from tests.serve_fixtures import build_bundle, training_frame

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"missing", "wrong_type", "out_of_range", "unseen_category", "out_of_distribution", "perturbation"}
CHECK_KEYS = {"name", "kind", "column", "passed", "crashed", "finite", "value", "detail"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("robust") / "b")


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return training_frame()


@pytest.fixture(scope="module")
def test_rows() -> pd.DataFrame:
    return training_frame(n=80, seed=7)


def _by_kind(checks: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in checks:
        out.setdefault(c["kind"], []).append(c)
    return out


def _custom_bundle(dest: Path, frame: pd.DataFrame, net_nodes: list[Any], net_inits: list[Any],
                   n_out: int) -> Path:
    """A bundle whose network is `net_nodes` from input "x" [N, F] to "logits" [N, n_out], as serve_fixtures
    builds one: the real preprocessing and postprocessing graphs around it."""
    schema = infer_schema(DataConfig(path="x.csv", target="y"), frame)
    pre = fit_preprocessor(schema, frame)
    net_graph = helper.make_graph(
        net_nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", pre.n_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])], initializer=net_inits)
    net = helper.make_model(net_graph, opset_imports=[helper.make_opsetid("", 18),
                                                      helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    net.ir_version = 10
    y = frame["y"]
    scale = (float(y.mean()), float(y.std())) if schema.task == "regression" else None
    post = postprocessing_graph(schema.task, n_out, schema.labels, scale, 18, 10)
    full = assemble(preprocessing_graph(pre, 18, 10), net, post)
    inputs = [{"name": s.name, "kind": "numeric", "dtype": "float32"} for s in pre.numeric]
    inputs += [{"name": c.name, "kind": "categorical", "dtype": "string"} for c in pre.categorical]
    write_bundle(dest, full.SerializeToString(), {
        "name": "custom", "task": schema.task, "inputs": inputs, "outputs": io_description(full)["outputs"],
        "labels": schema.labels, "recipe_hash": "test", "data_fingerprint": "sha256:test", "metrics": {},
        "data_schema": schema.model_dump(), "parity": {}, "mlops_version": "test"})
    return dest


def _weights(n_features: int, n_out: int) -> Any:
    w = np.random.default_rng(1).normal(size=(n_features, n_out)).astype(np.float32)
    return numpy_helper.from_array(w, "w")


def _nan_bundle(dest: Path) -> Path:
    """exp(x^2) @ w: fine for standardised values within a few stds, inf (then NaN) far outside the range."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Exp", ["sq"], ["big"]),
             helper.make_node("MatMul", ["big", "w"], ["logits"])]
    return _custom_bundle(dest, training_frame(), nodes, [_weights(5, 2)], 2)


def _crash_bundle(dest: Path) -> Path:
    """Logits looked up in a 10-row table at index int(max |x|): onnxruntime raises for an index past it."""
    table = numpy_helper.from_array(np.random.default_rng(2).normal(size=(10, 2)).astype(np.float32), "table")
    nodes = [helper.make_node("Abs", ["x"], ["ax"]),
             helper.make_node("ReduceMax", ["ax", "axes"], ["mx"], keepdims=0),
             helper.make_node("Cast", ["mx"], ["idx"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "idx"], ["logits"], axis=0)]
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    return _custom_bundle(dest, training_frame(), nodes, [table, axes], 2)


# --- robustness -------------------------------------------------------------------------------------


def test_every_kind_appears_with_the_right_columns(bundle: Path, test_rows: pd.DataFrame,
                                                   train: pd.DataFrame) -> None:
    checks = robustness_checks(bundle, test_rows, train, RobustnessConfig(rows=50), seed=0)

    kinds = _by_kind(checks)
    assert set(kinds) == KINDS
    assert all(set(c) == CHECK_KEYS for c in checks)
    assert [c["column"] for c in kinds["missing"]] == ["age", "income", "city"]
    assert [c["column"] for c in kinds["wrong_type"]] == ["age", "income", "city"]
    assert [c["column"] for c in kinds["out_of_range"]] == ["age", "income"]
    assert [c["column"] for c in kinds["unseen_category"]] == ["city"]
    assert [c["column"] for c in kinds["out_of_distribution"]] == [None]
    assert [c["column"] for c in kinds["perturbation"]] == [None]
    assert len({c["name"] for c in checks}) == len(checks)
    json.dumps(checks)  # goes into reports and run artifacts as is


def test_the_healthy_bundle_passes_every_check(bundle: Path, test_rows: pd.DataFrame,
                                                train: pd.DataFrame) -> None:
    checks = robustness_checks(bundle, test_rows, train, RobustnessConfig(rows=50), seed=0)

    assert [c["name"] for c in checks if not c["passed"]] == []
    assert not any(c["crashed"] for c in checks) and all(c["finite"] for c in checks)
    for c in checks:
        if c["kind"] in ("missing", "out_of_range", "unseen_category"):
            assert 0.0 <= c["value"] <= 1.0, c
    ood = _by_kind(checks)["out_of_distribution"][0]
    assert 0.5 <= ood["value"] <= 1.0  # mean max-probability of a two-class model
    flip = _by_kind(checks)["perturbation"][0]["value"]
    assert robustness_summary(checks) == {"robustness/failed_checks": 0.0, "robustness/flip_rate": flip}


def test_a_wrong_type_is_rejected_not_crashed(bundle: Path, test_rows: pd.DataFrame,
                                              train: pd.DataFrame) -> None:
    checks = robustness_checks(bundle, test_rows, train, RobustnessConfig(rows=20), seed=0)
    wrong = _by_kind(checks)["wrong_type"]

    assert all(c["passed"] and not c["crashed"] for c in wrong)
    assert "rejected" in wrong[0]["detail"]


@pytest.mark.parametrize("serving_bug", ["crashes", "accepts"])
def test_a_serving_layer_that_mishandles_a_wrong_type_fails(bundle: Path, test_rows: pd.DataFrame,
                                                            train: pd.DataFrame, serving_bug: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    original = Predictor.column

    def lenient(self: Predictor, name: str, values: list[Any], where: str,
                datatype: str | None = None) -> Any:
        if self.columns[name].dtype == "string" and not all(v is None or isinstance(v, str) for v in values):
            if serving_bug == "crashes":
                raise TypeError("unhashable type")
            return np.asarray([str(v) for v in values], dtype=object).reshape(-1, 1)
        return original(self, name, values, where, datatype)

    monkeypatch.setattr(Predictor, "column", lenient)
    checks = robustness_checks(bundle, test_rows, train, RobustnessConfig(rows=20), seed=0)
    wrong = {c["column"]: c for c in _by_kind(checks)["wrong_type"]}

    assert wrong["age"]["passed"] and wrong["income"]["passed"]
    assert not wrong["city"]["passed"]
    assert wrong["city"]["crashed"] is (serving_bug == "crashes")
    assert ("silently" in wrong["city"]["detail"]) is (serving_bug == "accepts")


def test_flip_rate_is_zero_for_tiny_noise_and_grows_with_epsilon(bundle: Path, test_rows: pd.DataFrame,
                                                                 train: pd.DataFrame) -> None:
    def flip(epsilon: float) -> float:
        cfg = RobustnessConfig(epsilon=epsilon, repeats=5)
        checks = robustness_checks(bundle, test_rows, train, cfg, seed=0)
        return robustness_summary(checks)["robustness/flip_rate"]

    tiny, mid, large = flip(1e-6), flip(0.5), flip(5.0)
    assert tiny == 0.0
    assert large > 0.0
    assert tiny <= mid <= large


def test_same_seed_same_checks(bundle: Path, train: pd.DataFrame) -> None:
    many = training_frame(n=300, seed=11)  # more rows than cfg.rows: the sample itself is seeded too
    cfg = RobustnessConfig(rows=40, epsilon=1.0, repeats=3)

    first = robustness_checks(bundle, many, train, cfg, seed=123)
    assert robustness_checks(bundle, many, train, cfg, seed=123) == first


def test_columns_the_model_does_not_take_are_ignored(bundle: Path, test_rows: pd.DataFrame,
                                                     train: pd.DataFrame) -> None:
    extra = test_rows.assign(unrelated=["x"] * len(test_rows))

    checks = robustness_checks(bundle, extra, train, RobustnessConfig(rows=20), seed=0)

    assert all(c["column"] != "unrelated" for c in checks)
    assert all(c["passed"] for c in checks)


def test_nan_far_outside_the_range_is_caught(tmp_path: Path, test_rows: pd.DataFrame,
                                             train: pd.DataFrame) -> None:
    broken = _nan_bundle(tmp_path / "nan")

    kinds = _by_kind(robustness_checks(broken, test_rows, train, RobustnessConfig(rows=50), seed=0))

    for c in kinds["out_of_range"]:
        assert not c["passed"] and c["finite"] is False and c["crashed"] is False, c
        assert c["value"] is None and "non-finite" in c["detail"]
    assert not kinds["out_of_distribution"][0]["passed"]
    # in-range inputs are fine: the checks point at the real problem, not everything
    healthy_kinds = ("missing", "wrong_type", "unseen_category", "perturbation")
    assert all(c["passed"] for k in healthy_kinds for c in kinds[k])
    summary = robustness_summary([c for cs in kinds.values() for c in cs])
    assert summary["robustness/failed_checks"] == 3.0


def test_a_crash_far_outside_the_range_is_caught(tmp_path: Path, test_rows: pd.DataFrame,
                                                 train: pd.DataFrame) -> None:
    broken = _crash_bundle(tmp_path / "crash")

    kinds = _by_kind(robustness_checks(broken, test_rows, train, RobustnessConfig(rows=50), seed=0))

    for c in kinds["out_of_range"]:
        assert not c["passed"] and c["crashed"] is True and c["finite"] is False, c
        assert "crashed" in c["detail"]
    assert kinds["out_of_distribution"][0]["crashed"]
    assert all(c["passed"] for c in kinds["missing"] + kinds["unseen_category"] + kinds["perturbation"])


def test_regression_bundle(tmp_path: Path) -> None:
    frame = training_frame()
    noise = np.random.default_rng(3).normal(0, 1, len(frame))
    frame["y"] = frame["age"] * 0.5 + frame["income"] * 0.1 + noise
    reg = _custom_bundle(tmp_path / "reg", frame, [helper.make_node("MatMul", ["x", "w"], ["logits"])],
                         [_weights(5, 1)], 1)
    test = frame.sample(60, random_state=0)

    checks = robustness_checks(reg, test, frame, RobustnessConfig(epsilon=0.1), seed=0)

    assert set(_by_kind(checks)) == KINDS and all(c["passed"] for c in checks)
    perturbation = _by_kind(checks)["perturbation"][0]
    assert perturbation["value"] is not None and perturbation["value"] > 0.0
    assert _by_kind(checks)["out_of_distribution"][0]["value"] > 1.0  # extrapolates far past its data
    assert robustness_checks(reg, test, frame, RobustnessConfig(epsilon=1e-9), seed=0)[-1]["value"] < 1e-5


# --- performance ------------------------------------------------------------------------------------


def _assert_sane(result: dict[str, Any], cfg: PerformanceConfig) -> None:
    assert 0.0 < result["latency_p50_ms"] <= result["latency_p95_ms"] <= result["latency_p99_ms"]
    assert result["throughput_rps"] > 0.0
    assert len(result["latencies_ms"]) == cfg.iterations
    assert all(isinstance(v, float) and v > 0 for v in result["latencies_ms"])
    assert result["batch_size"] == cfg.batch_size and result["iterations"] == cfg.iterations
    if sys.platform.startswith("linux"):
        assert result["peak_memory_mb"] is None or result["peak_memory_mb"] >= 0.0
    json.dumps(result)


def test_benchmark_onnx(bundle: Path, train: pd.DataFrame) -> None:
    cfg = PerformanceConfig(batch_size=16, iterations=40)

    result = benchmark_onnx(bundle, train, cfg)

    _assert_sane(result, cfg)
    assert result["model_size_mb"] == (bundle / "model.onnx").stat().st_size / 2**20


def test_benchmark_torch_restores_threads_and_mode() -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    module.train()
    threads = torch.get_num_threads()
    cfg = PerformanceConfig(batch_size=8, iterations=25)

    result = benchmark_torch(module, np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32), cfg)

    _assert_sane(result, cfg)
    assert "model_size_mb" not in result
    assert torch.get_num_threads() == threads and module.training


def test_perf_metrics_flattens_and_skips_none() -> None:
    onnx = {"latency_p50_ms": 1.0, "latency_p95_ms": 2.0, "latency_p99_ms": 3.0, "throughput_rps": 100.0,
            "peak_memory_mb": None, "model_size_mb": 0.5, "latencies_ms": [1.0, 2.0], "batch_size": 64,
            "iterations": 2}
    torch_result = {"latency_p50_ms": 4.0, "latency_p95_ms": 5.0, "latency_p99_ms": 6.0, "throughput_rps": 50,
                    "peak_memory_mb": 1.5, "latencies_ms": [4.0], "batch_size": 64, "iterations": 1}

    assert perf_metrics(onnx, None) == {"perf/latency_p50_ms": 1.0, "perf/latency_p95_ms": 2.0,
                                        "perf/latency_p99_ms": 3.0, "perf/throughput_rps": 100.0,
                                        "perf/model_size_mb": 0.5}
    both = perf_metrics(onnx, torch_result)
    assert both["perf/torch/latency_p50_ms"] == 4.0 and both["perf/torch/peak_memory_mb"] == 1.5
    assert isinstance(both["perf/torch/throughput_rps"], float)
    assert not any("latencies" in k or "batch_size" in k for k in both)


def test_modules_import_without_torch_or_onnxruntime() -> None:
    code = ("import sys, mlops.evaluate.performance, mlops.evaluate.robustness; "
            "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
