"""A small real image + text bundle built by hand (no torch): an ONNX graph over an 8x8 grey image, a review's
token ids and one numeric column (through the scalar preprocessing graph), with a tokenizer trained by
`mlops.data.media.train_tokenizer` saved as the bundle's asset.

    image   uint8 [N, 8, 8, 1]  -> pixels / 255, flattened                     (64 features)
    review  int64 [N, 16]       -> mean of a 4-wide embedding of its tokens     (4 features)
    age     float32 [N, 1]      -> the preprocessing graph (imputed, scaled)    (1 feature)
    -> tanh(x W1) = embedding [N, 8] -> logits [N, 2] -> label, probabilities

Every input moves the answer (the weights are drawn, not trained), so a test can tell two images or two texts
apart by the probabilities. Another `weights_seed` gives a model that answers differently; `size` changes the
image size (a challenger that is not compatible), `texts` the tokenizer's corpus (another vocabulary).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, compose, helper, numpy_helper

from mlops.data.media import train_tokenizer
from mlops.data.preprocess import fit_preprocessor
from mlops.data.schema import infer_schema
from mlops.package.bundle import write_bundle
from mlops.package.graph import ML_OPSET, io_description, postprocessing_graph, preprocessing_graph
from mlops.recipe.schema import DataConfig

NAME = "reviews"
IMAGE, TEXT, NUMBER = "image", "review", "age"
SIZE = (8, 8)
MAX_LENGTH = 16
MAX_CHARS = 200
MAX_BYTES = 20_000
MAX_PIXELS = 256 * 256
TOKENIZER = "review.tokenizer.json"
LABELS = ["neg", "pos"]
OPSET, IR_VERSION = 18, 10
EMBED = 4  # width of the token embedding
HIDDEN = 8  # width of the `embedding` output

CORPUS = [
    "great product would buy again", "terrible taste never again", "the coffee was fresh and strong",
    "awful packaging arrived broken", "my dog loves these treats", "too sweet for me", "excellent value for money",
    "stale chips bad smell", "fast delivery good quality", "not worth the price at all",
]


def training_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """The scalar part of the training data (what the preprocessing graph is fitted on)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({NUMBER: rng.normal(40, 10, n)})
    frame["y"] = np.where(frame[NUMBER] > 40, "pos", "neg")
    return frame


def image_png(seed: int = 0, size: tuple[int, int] = SIZE, mode: str = "L") -> bytes:
    """A PNG of random pixels (height, width) in Pillow's `mode` (L: grey, RGB, RGBA, ...)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    pixels = rng.integers(0, 256, size=(size[0], size[1], channels), dtype=np.uint8)
    img = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode=mode)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def instance(seed: int = 0, text: str = "great coffee, fresh and strong",
             age: float | None = 41.0) -> dict[str, Any]:
    """One V1 instance the bundle takes."""
    return {IMAGE: {"b64": b64(image_png(seed))}, TEXT: text, NUMBER: age}


def build_media_bundle(dest: Path, name: str = NAME, weights_seed: int = 2, size: tuple[int, int] = SIZE,
                       texts: list[str] | None = None, vocab_size: int = 80, max_chars: int = MAX_CHARS,
                       payloads: dict[str, Any] | None = None) -> Path:
    """Write the bundle at `dest` (model.onnx, bundle.json, the tokenizer) and return `dest`. `payloads`: what
    the log keeps (default: no image payloads, so that what a test finds in the log does not depend on a draw)."""
    tokenizer = train_tokenizer(texts or CORPUS, vocab_size=vocab_size)
    vocab = tokenizer.get_vocab_size()
    frame = training_frame()
    schema = infer_schema(DataConfig(path="x.csv", target="y"), frame)
    pre = fit_preprocessor(schema, frame)
    model = _model(pre, vocab, size, weights_seed, schema.labels or LABELS)
    inputs = [
        {"name": IMAGE, "kind": "image", "dtype": "uint8", "nullable": False,
         "image": {"size": list(size), "channels": 1, "max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS}},
        {"name": TEXT, "kind": "text", "dtype": "int64", "nullable": False,
         "text": {"tokenizer": TOKENIZER, "max_length": MAX_LENGTH, "max_chars": max_chars, "vocab_size": vocab}},
        {"name": NUMBER, "kind": "numeric", "dtype": "float32"},
    ]
    write_bundle(dest, model.SerializeToString(), {
        "name": name, "task": "binary", "inputs": inputs, "outputs": io_description(model)["outputs"],
        "labels": schema.labels, "recipe_hash": "test", "data_fingerprint": "sha256:test", "metrics": {},
        "data_schema": schema.model_dump(), "parity": {}, "mlops_version": "test",
        "payloads": {"image_sample": 0.0} | (payloads or {})},
        assets={TOKENIZER: tokenizer.to_str()})
    return dest


def _model(pre: Any, vocab: int, size: tuple[int, int], seed: int, labels: list[str]) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    pixels = size[0] * size[1]
    width = pre.n_features + pixels + EMBED
    table = rng.normal(size=(vocab, EMBED)).astype(np.float32)
    table[0] = 0.0  # the padding token adds nothing
    inits = [
        numpy_helper.from_array(np.array([1 / 255], np.float32), "inv255"),
        numpy_helper.from_array(np.array([-1, pixels], np.int64), "flat"),
        numpy_helper.from_array(table, "tokens"),
        numpy_helper.from_array(np.array([1], np.int64), "seq_axis"),
        numpy_helper.from_array((rng.normal(size=(width, HIDDEN)) * 0.2).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.normal(size=(HIDDEN, 2)) * 3).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Cast", [IMAGE], ["img_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["img_f", "flat"], ["img_flat"]),
        helper.make_node("Mul", ["img_flat", "inv255"], ["img_x"]),
        helper.make_node("Gather", ["tokens", TEXT], ["tok_e"], axis=0),
        helper.make_node("ReduceMean", ["tok_e", "seq_axis"], ["txt_x"], keepdims=0),
        helper.make_node("Concat", ["features", "img_x", "txt_x"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w2"], ["logits"]),
    ]
    net = helper.make_graph(nodes, "net", [
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", pre.n_features]),
        helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, ["N", size[0], size[1], 1]),
        helper.make_tensor_value_info(TEXT, TensorProto.INT64, ["N", MAX_LENGTH]),
    ], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", HIDDEN])], initializer=inits)
    net_model = helper.make_model(net, opset_imports=[helper.make_opsetid("", OPSET),
                                                      helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    net_model.ir_version = IR_VERSION
    head = compose.merge_models(preprocessing_graph(pre, OPSET, IR_VERSION), net_model,
                                io_map=[("features", "features")])
    full = compose.merge_models(head, postprocessing_graph("binary", 2, labels, None, OPSET, IR_VERSION),
                                io_map=[("logits", "logits")])
    full.graph.name = "mlops"
    # the answer's outputs first, the embedding last, as an exported model lists them
    outputs = sorted(full.graph.output, key=lambda o: o.name == "embedding")
    del full.graph.output[:]
    full.graph.output.extend(outputs)
    onnx.checker.check_model(full, full_check=True)
    return full
