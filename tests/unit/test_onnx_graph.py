"""The ONNX preprocessing graph computes exactly what training's numpy transform computes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from mlops.core.errors import ParityError
from mlops.data.preprocess import fit_preprocessor
from mlops.data.schema import infer_schema
from mlops.package.export import check_parity, export_network, onnx_feeds
from mlops.package.graph import (
    PACKED_NUMERIC,
    assemble,
    packed_columns,
    packed_graph,
    postprocessing_graph,
    preprocessing_graph,
)
from mlops.package.predictor import pack_feeds
from mlops.recipe.schema import DataConfig


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({
        "age": rng.normal(40, 10, n), "income": rng.lognormal(10, 1, n),
        "city": rng.choice(["a", "b", "c"], n), "flag": rng.choice([1.0, 2.0], n), "y": rng.choice(["n", "y"], n),
    })
    df.loc[::7, "age"] = np.nan
    df.loc[::5, "city"] = None
    return df


def fitted(frame: pd.DataFrame):  # type: ignore[no-untyped-def]
    cfg = DataConfig(path="x.csv", target="y", categorical=["flag"])
    schema = infer_schema(cfg, frame)
    return schema, fit_preprocessor(schema, frame)


def test_schema_records_types_ranges_categories_and_missing(frame: pd.DataFrame) -> None:
    schema, _ = fitted(frame)
    assert schema.task == "binary" and schema.labels == ["n", "y"]
    assert schema.of_kind("categorical") == ["city", "flag"] and schema.of_kind("numeric") == ["age", "income"]
    assert schema.column("city").categories == ["a", "b", "c"]
    assert schema.column("flag").categories == ["1", "2"]
    assert schema.column("age").missing_rate == pytest.approx(9 / 60)
    assert schema.column("income").min == pytest.approx(frame["income"].min())


def test_preprocessing_graph_matches_numpy_transform_exactly(frame: pd.DataFrame) -> None:
    _, pre = fitted(frame)
    model = preprocessing_graph(pre, opset=18, ir_version=10)
    session = ort.InferenceSession(model.SerializeToString())
    test = frame.copy()
    test.loc[0, "city"] = "unseen"
    test.loc[1, "income"] = np.nan
    (got,) = session.run(["features"], onnx_feeds(test, pre))
    expected = pre.transform(test)
    assert got.shape == (60, 2 + 3 + 2)
    np.testing.assert_array_equal(got, expected)
    assert not got[0, 2:5].any()  # an unseen category encodes as all zeros
    assert got[1, 1] == 0.0  # a missing number is imputed with the mean, i.e. 0 after scaling


def _full_model(frame: pd.DataFrame, net: torch.nn.Module):  # type: ignore[no-untyped-def]
    _, pre = fitted(frame)
    onnx_net = export_network(net, pre.n_features, 18)
    full = assemble(preprocessing_graph(pre, 18, onnx_net.ir_version), onnx_net,
                    postprocessing_graph("binary", 2, ["n", "y"], None, 18, onnx_net.ir_version))
    return pre, ort.InferenceSession(full.SerializeToString())


def test_parity_passes_for_the_exported_model_and_fails_for_another(frame: pd.DataFrame) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    pre, session = _full_model(frame, net)
    report = check_parity(session, net, frame, pre, "binary", None, [1, 7, 64], 1e-5)
    assert report["max_abs_diff"] <= 1e-5 and report["rows"] == 60
    labels = session.run(["label"], onnx_feeds(frame, pre))[0]
    assert set(labels) <= {"n", "y"}
    other = torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    with pytest.raises(ParityError, match="max \\|diff\\|"):
        check_parity(session, other, frame, pre, "binary", None, [7], 1e-5)


def test_the_packed_graph_answers_as_the_named_one_with_one_numeric_input(frame: pd.DataFrame) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    pre, named = _full_model(frame, net)
    onnx_net = export_network(net, pre.n_features, 18)
    full = assemble(preprocessing_graph(pre, 18, onnx_net.ir_version), onnx_net,
                    postprocessing_graph("binary", 2, ["n", "y"], None, 18, onnx_net.ir_version))
    packed = packed_graph(full)
    assert packed is not None and packed_columns(full) == ["age", "income"]
    inputs = {i.name: i for i in packed.graph.input}
    assert list(inputs) == [PACKED_NUMERIC, "city", "flag"]  # the numbers joined, the strings as they were
    session = ort.InferenceSession(packed.SerializeToString())
    test = frame.copy()
    test.loc[1, "income"] = np.nan  # imputed inside the packed block as in the named graph
    feeds = onnx_feeds(test, pre)
    got = session.run(None, pack_feeds(feeds, PACKED_NUMERIC, ["age", "income"], ["city", "flag"]))
    want = named.run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    check_parity(session, net, test, pre, "binary", None, [1, 7], 1e-5, packed=(PACKED_NUMERIC, ["age", "income"]))
    assert packed_graph(packed) is None  # nothing left to pack


def test_a_graph_without_numeric_columns_has_nothing_to_pack(frame: pd.DataFrame) -> None:
    cfg = DataConfig(path="x.csv", target="y", categorical=["flag"])
    only = frame[["city", "flag", "y"]]
    pre = fit_preprocessor(infer_schema(cfg, only), only)
    assert packed_graph(preprocessing_graph(pre, 18, 10)) is None


def test_numbers_alone_have_their_scaling_folded_into_the_first_layer(frame: pd.DataFrame) -> None:
    torch.manual_seed(0)
    numbers = frame[["age", "income", "y"]]
    cfg = DataConfig(path="x.csv", target="y")
    pre = fit_preprocessor(infer_schema(cfg, numbers), numbers)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    onnx_net = export_network(net, 2, 18)
    full = assemble(preprocessing_graph(pre, 18, onnx_net.ir_version), onnx_net,
                    postprocessing_graph("binary", 2, ["n", "y"], None, 18, onnx_net.ir_version))
    packed = packed_graph(full)
    assert packed is not None
    ops = [n.op_type for n in packed.graph.node]
    assert "Sub" not in ops and "Div" not in ops and "Concat" not in ops  # scaling inside the first Gemm
    used = {i for n in packed.graph.node for i in n.input}
    assert all(t.name in used for t in packed.graph.initializer)  # ONNX Runtime warns at load of an unused one
    named = ort.InferenceSession(full.SerializeToString())
    session = ort.InferenceSession(packed.SerializeToString())
    feeds = onnx_feeds(numbers, pre)  # age has missing values: imputed before the folded layer
    got = session.run(["probabilities"], pack_feeds(feeds, PACKED_NUMERIC, ["age", "income"], []))[0]
    np.testing.assert_allclose(got, named.run(["probabilities"], feeds)[0], atol=1e-6)
    check_parity(session, net, numbers, pre, "binary", None, [1, 60], 1e-5, packed=(PACKED_NUMERIC, ["age", "income"]))
