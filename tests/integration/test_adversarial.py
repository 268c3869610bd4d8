"""Gradient attacks through real trained modules, scored by their exported bundles: the digits CNN (8x8 PNG
images beside a numeric column, the multi-input network) and a tabular MLP on breast cancer, each trained here
for a second and exported as the export step does; a text-only and a regression bundle are skipped with the
reason in their check (bundles built by hand: their module is never run)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from onnx import TensorProto, compose, helper, numpy_helper
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

from mlops.data.media import ImageSpec, ModelInputs, TextSpec, decode_images, train_tokenizer
from mlops.data.preprocess import fit_preprocessor, pixel_stats
from mlops.data.schema import DataSchema, encode_labels, infer_schema
from mlops.evaluate.adversarial import adversarial_checks
from mlops.evaluate.robustness import robustness_summary
from mlops.package.bundle import write_bundle
from mlops.package.export import export_network
from mlops.package.graph import (
    ML_OPSET,
    assemble,
    assemble_inputs,
    io_description,
    postprocessing_graph,
    preprocessing_graph,
)
from mlops.recipe.schema import DataConfig, RobustnessConfig
from mlops.train.models import TabularMLP
from mlops.train.multimodal import MultiInputNet
from tests.media_fixtures import CORPUS

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("adversarial")]

OPSET = 18
TOKENIZER = "review.tokenizer.json"


@dataclass
class Trained:
    """A trained module and its exported bundle, with the rows it was trained and is tested on."""

    bundle: Path
    module: Any
    network: ModelInputs | None  # what the module takes when its forward takes a dict
    train: pd.DataFrame
    test: pd.DataFrame

    def attack(self, **cfg: Any) -> dict[str, dict[str, Any]]:
        with one_thread():
            checks = adversarial_checks(self.bundle, self.test, self.train, self.module, self.network,
                                        RobustnessConfig.Adversarial(**cfg), seed=0)
        return {c["name"]: c for c in checks}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """A busy two-core box makes torch's thread pool spin rather than work: tiny models run on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(module: Any, inputs: Any, y: np.ndarray, epochs: int, lr: float = 3e-3) -> Any:
    """Plain Adam, batches of 64 (seeded by the caller, before it builds the module)."""
    target = torch.from_numpy(y)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    with one_thread():
        for _ in range(epochs):
            order = torch.randperm(len(target))
            for start in range(0, len(target), 64):
                rows = order[start:start + 64]
                batch = {k: v[rows] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[rows]
                loss = torch.nn.functional.cross_entropy(module(batch), target[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return module.eval()


def _export(dest: Path, module: Any, network: ModelInputs | None, schema: DataSchema, train: pd.DataFrame) -> Path:
    """The bundle as the export step writes it: preprocessing, the network, postprocessing."""
    pre = fit_preprocessor(schema, train)
    net = export_network(module, network if network is not None else pre.n_features, OPSET)
    n_out = 1 if schema.task == "regression" else len(schema.labels or [])
    scale = (0.0, 1.0) if schema.task == "regression" else None
    post = postprocessing_graph(schema.task, n_out, schema.labels, scale, OPSET, net.ir_version)
    head = preprocessing_graph(pre, OPSET, net.ir_version) if pre.n_features else None
    full = assemble(head, net, post) if network is None else assemble_inputs(head, net, post)
    inputs: list[dict[str, Any]] = [{"name": s.name, "kind": "numeric", "dtype": "float32"} for s in pre.numeric]
    if network is not None:
        inputs += [{"name": n, "kind": "image", "dtype": "uint8", "nullable": False, "image": s.model_dump()}
                   for n, s in network.images.items()]
    return _write(dest, full, schema, inputs)


def _write(dest: Path, full: Any, schema: DataSchema, inputs: list[dict[str, Any]],
           assets: dict[str, str] | None = None) -> Path:
    write_bundle(dest, full.SerializeToString(), {
        "name": dest.name, "task": schema.task, "inputs": inputs, "outputs": io_description(full)["outputs"],
        "labels": schema.labels, "recipe_hash": "test", "data_fingerprint": "sha256:test", "metrics": {},
        "data_schema": schema.model_dump(), "parity": {}, "mlops_version": "test"}, assets)
    return dest


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels * (255 / 16), 0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """sklearn's digits as 8x8 grey PNGs beside their share of ink: the CNN of the multi-input network."""
    d = load_digits()
    frame = pd.DataFrame({"image": [_png(p) for p in d.images], "ink": (d.images > 4).mean(axis=(1, 2)),
                          "label": [f"d{t}" for t in d.target]})
    train, test = frame.iloc[:1400].reset_index(drop=True), frame.iloc[1400:].reset_index(drop=True)
    spec = ImageSpec(size=(8, 8), channels=1)
    schema = infer_schema(DataConfig(path="x.csv", target="label",
                                     columns={"image": {"kind": "image", "size": [8, 8], "channels": 1}}), train)
    pre = fit_preprocessor(schema, train)
    network = ModelInputs(tabular=pre.n_features, images={"image": spec})
    pixels = decode_images(train["image"], spec)
    torch.manual_seed(0)
    module = MultiInputNet(network.model_dump(mode="json"), 10, "multiclass", hidden=[32], dropout=0.0,
                           image={"channels": [8, 16], "embedding": 32},
                           pixel_stats={"image": pixel_stats(pixels).model_dump()})
    inputs = {"tabular": torch.from_numpy(pre.transform(train)), "image": torch.from_numpy(pixels)}
    _fit(module, inputs, encode_labels(train["label"], schema.labels or []), epochs=12)
    bundle = _export(tmp_path_factory.mktemp("digits") / "digits", module, network, schema, train)
    return Trained(bundle, module, network, train, test)


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Breast cancer's 30 numeric columns: the tabular MLP, which takes the preprocessed matrix."""
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns={"target": "y"})
    frame["y"] = np.where(frame["y"] == 1, "benign", "malignant")
    train, test = frame.iloc[:400].reset_index(drop=True), frame.iloc[400:].reset_index(drop=True)
    schema = infer_schema(DataConfig(path="x.csv", target="y"), train)
    pre = fit_preprocessor(schema, train)
    torch.manual_seed(0)
    module = TabularMLP(pre.n_features, 2, "binary", hidden=[16], dropout=0.0)
    _fit(module, torch.from_numpy(pre.transform(train)), encode_labels(train["y"], schema.labels or []), epochs=20)
    bundle = _export(tmp_path_factory.mktemp("cancer") / "cancer", module, None, schema, train)
    return Trained(bundle, module, None, train, test)


def test_a_larger_epsilon_lowers_accuracy_more(digits: Trained) -> None:
    checks = digits.attack(epsilons=[0.005, 0.05, 0.2])

    fgsm = [checks[f"adversarial/fgsm/{e}"]["measures"] for e in ("0.005", "0.05", "0.2")]
    clean = fgsm[0]["accuracy"] + fgsm[0]["accuracy_drop"]
    assert clean >= 0.8  # the module learnt digits: an attack has something to destroy
    assert fgsm[0]["accuracy_drop"] <= 0.1 < fgsm[1]["accuracy_drop"] < fgsm[2]["accuracy_drop"]
    assert fgsm[0]["flip_rate"] < fgsm[1]["flip_rate"] < fgsm[2]["flip_rate"]
    pgd = checks["adversarial/pgd/0.05"]["measures"]
    assert pgd["accuracy"] <= fgsm[1]["accuracy"] + 0.05  # iterated steps find at least as much
    assert all(c["passed"] and not c["crashed"] for c in checks.values())
    assert "image (pixels 0..1) and 1 numeric column(s)" in checks["adversarial/fgsm/0.05"]["detail"]
    assert "over 64 scored rows" in checks["adversarial/fgsm/0.05"]["detail"]

    metrics = robustness_summary(list(checks.values()))
    for measure in ("accuracy", "accuracy_drop", "flip_rate"):  # the largest epsilon's, and each epsilon's
        assert metrics[f"robustness/adversarial/fgsm/{measure}"] == fgsm[2][measure]
        assert metrics[f"robustness/adversarial/pgd/0.05/{measure}"] == pgd[measure]
    assert metrics["robustness/failed_checks"] == 0.0

    # the same seed attacks the same way (PGD starts from a random point of the ball)
    assert digits.attack(epsilons=[0.05], methods=["pgd"], pgd_steps=3) == \
        digits.attack(epsilons=[0.05], methods=["pgd"], pgd_steps=3)


def test_a_tabular_model_is_attacked_on_its_standardized_numeric_features(cancer: Trained) -> None:
    checks = cancer.attack(epsilons=[0.01, 0.5])

    small, large = checks["adversarial/fgsm/0.01"]["measures"], checks["adversarial/fgsm/0.5"]["measures"]
    assert small["accuracy"] + small["accuracy_drop"] >= 0.85
    assert small["accuracy_drop"] < large["accuracy_drop"] and large["flip_rate"] > 0.1
    assert checks["adversarial/pgd/0.5"]["measures"]["accuracy"] <= large["accuracy"] + 0.05
    assert "30 numeric column(s) (training stds)" in checks["adversarial/fgsm/0.5"]["detail"]


def test_a_module_that_is_not_the_bundles_is_skipped(cancer: Trained) -> None:
    untrained = TabularMLP(30, 2, "binary", hidden=[16], dropout=0.0).eval()
    torch.nn.init.zeros_(untrained.net[-1].weight)
    torch.nn.init.constant_(untrained.net[-1].bias[0], 1.0)  # answers one class whatever it is shown

    checks = list(Trained(cancer.bundle, untrained, None, cancer.train, cancer.test).attack().values())

    assert len(checks) == 1 and checks[0]["skipped"] and checks[0]["passed"]
    assert "the module is not this bundle's" in checks[0]["detail"]
    assert robustness_summary(checks) == {"robustness/failed_checks": 0.0}


def test_text_and_regression_models_are_skipped_with_the_reason(tmp_path: Path) -> None:
    texts = pd.DataFrame({"review": CORPUS * 3, "y": ["pos", "neg"] * 15})
    diabetes = load_diabetes(as_frame=True).frame.rename(columns={"target": "y"}).iloc[:200]
    module = torch.nn.Identity()  # never run: the bundle alone decides that there is nothing to attack

    text = adversarial_checks(_text_bundle(tmp_path / "text", texts), texts, texts, module, None,
                              RobustnessConfig.Adversarial(), 0)
    reg = adversarial_checks(_regression_bundle(tmp_path / "reg", diabetes), diabetes, diabetes, module, None,
                             RobustnessConfig.Adversarial(), 0)

    assert [c["detail"] for c in text] == ["skipped: text inputs are discrete tokens: gradient attacks do not apply"]
    assert len(reg) == 1 and reg[0]["skipped"] and "regression" in reg[0]["detail"]
    assert all(c["passed"] and c["kind"] == "adversarial" for c in text + reg)
    assert robustness_summary(text + reg) == {"robustness/failed_checks": 0.0}


def _text_bundle(dest: Path, frame: pd.DataFrame) -> Path:
    """A text-only classifier built by hand: the mean of its tokens' embeddings, then a linear layer."""
    tokenizer = train_tokenizer(frame["review"], vocab_size=100)
    vocab = tokenizer.get_vocab_size()
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["table", "review"], ["tokens"], axis=0),
             helper.make_node("ReduceMean", ["tokens", "axis"], ["mean"], keepdims=0),
             helper.make_node("MatMul", ["mean", "w"], ["logits"])]
    inits = [numpy_helper.from_array(rng.normal(size=(vocab, 4)).astype(np.float32), "table"),
             numpy_helper.from_array(np.array([1], np.int64), "axis"),
             numpy_helper.from_array(rng.normal(size=(4, 2)).astype(np.float32), "w")]
    net = helper.make_model(helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("review", TensorProto.INT64, ["N", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], initializer=inits),
        opset_imports=[helper.make_opsetid("", OPSET)])
    net.ir_version = 10
    schema = infer_schema(DataConfig(path="x.csv", target="y", columns={"review": {"kind": "text"}}), frame)
    full = compose.merge_models(net, postprocessing_graph("binary", 2, schema.labels, None, OPSET, 10),
                                io_map=[("logits", "logits")])
    spec = TextSpec(tokenizer=TOKENIZER, max_length=8, vocab_size=vocab)
    return _write(dest, full, schema, [{"name": "review", "kind": "text", "dtype": "int64", "nullable": False,
                                        "text": spec.model_dump()}], {TOKENIZER: tokenizer.to_str()})


def _regression_bundle(dest: Path, frame: pd.DataFrame) -> Path:
    """A linear regression over the preprocessed numeric columns, built by hand."""
    schema = infer_schema(DataConfig(path="x.csv", target="y"), frame)
    pre = fit_preprocessor(schema, frame)
    w = numpy_helper.from_array(np.full((pre.n_features, 1), 0.1, np.float32), "w")
    net = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", pre.n_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1])], initializer=[w]),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    net.ir_version = 10
    full = assemble(preprocessing_graph(pre, OPSET, 10), net,
                    postprocessing_graph("regression", 1, None, (0.0, 1.0), OPSET, 10))
    return _write(dest, full, schema, [{"name": s.name, "kind": "numeric", "dtype": "float32"} for s in pre.numeric])
