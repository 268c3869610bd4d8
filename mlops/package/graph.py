"""The ONNX graph around the trained network: raw named columns in, labels/probabilities out.

Preprocessing is built here op for op as `Preprocessor.transform` computes it in numpy (float32
Where/Sub/Div, one-hot by comparing label-encoded codes), so serving cannot drift from training. A category
reaches the graph trimmed of whitespace already (data.categories.trim): no ONNX op strips a string, so the
bundle's Predictor applies `mlops.data.preprocess.category_text`, the function training's rows go through.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from mlops.data.media import TABULAR
from mlops.data.preprocess import Preprocessor

ML_OPSET = 3
# the numeric columns joined in schema order: a value inside model.onnx, and the one input of packed.onnx
PACKED_NUMERIC = "mlops.numeric"
PACK_NODE = "mlops.pack_numeric"


def preprocessing_graph(pre: Preprocessor, opset: int, ir_version: int) -> onnx.ModelProto:
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    blocks: list[str] = []
    if pre.numeric:
        # every numeric column joins one [N, K] block first and is imputed and scaled at once: four ops in all,
        # not four per column (ONNX Runtime's cost per op is most of a small model's time). Same float32
        # arithmetic, per element, as Preprocessor.transform
        names = [s.name for s in pre.numeric]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1]) for n in names]
        inits += [numpy_helper.from_array(np.array([[s.mean for s in pre.numeric]], np.float32), "num_mean"),
                  numpy_helper.from_array(np.array([[s.std for s in pre.numeric]], np.float32), "num_std")]
        nodes += [
            helper.make_node("Concat", names, [PACKED_NUMERIC], axis=1, name=PACK_NODE),
            # a missing number (NaN) becomes its column's mean: one ai.onnx.ml op, where IsNaN + Where took two
            # and a broadcast (about 3x the time at batch 64)
            helper.make_node("Imputer", [PACKED_NUMERIC], ["num_filled"], domain="ai.onnx.ml",
                             imputed_value_floats=[float(np.float32(s.mean)) for s in pre.numeric],
                             replaced_value_float=float("nan")),
            helper.make_node("Sub", ["num_filled", "num_mean"], ["num_centred"]),
            helper.make_node("Div", ["num_centred", "num_std"], ["num_scaled"]),
        ]
        blocks.append("num_scaled")
    for j, c in enumerate(pre.categorical):
        inputs.append(helper.make_tensor_value_info(c.name, TensorProto.STRING, ["N", 1]))
        if not c.levels:
            continue
        levels = f"cat{j}_levels"
        inits.append(numpy_helper.from_array(np.arange(len(c.levels), dtype=np.int64), levels))
        nodes += [
            helper.make_node("LabelEncoder", [c.name], [f"cat{j}_code"], domain="ai.onnx.ml",
                             keys_strings=c.levels, values_int64s=list(range(len(c.levels))), default_int64=-1),
            helper.make_node("Equal", [f"cat{j}_code", levels], [f"cat{j}_hot"]),
            helper.make_node("Cast", [f"cat{j}_hot"], [f"cat{j}_onehot"], to=TensorProto.FLOAT),
        ]
        blocks.append(f"cat{j}_onehot")
    if len(blocks) == 1 and nodes[-1].output[0] == blocks[0]:
        nodes[-1].output[0] = "features"  # one block is the features: no Concat, one op less per call
    else:
        nodes.append(helper.make_node("Concat", blocks, ["features"], axis=1))
    out = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", pre.n_features])
    graph = helper.make_graph(nodes, "preprocess", inputs, [out], initializer=inits)
    return _model(graph, opset, ir_version)


def packed_graph(full: onnx.ModelProto) -> onnx.ModelProto | None:
    """`full` with its numeric columns taken as one float32 [N, K] input (PACKED_NUMERIC, columns in schema
    order) instead of K [N, 1] inputs; its string inputs unchanged. ONNX Runtime's cost per input is most of a
    small tabular model's time, so the bundle's Predictor runs this one and packs the columns itself; model.onnx
    keeps a named input per column for every other client. None when there is nothing to pack."""
    pack = next((n for n in full.graph.node if n.name == PACK_NODE), None)
    if pack is None or any(i.name == PACKED_NUMERIC for i in full.graph.input):
        return None
    columns = list(pack.input)
    packed = onnx.ModelProto()
    packed.CopyFrom(full)
    graph = packed.graph
    graph.node.remove(next(n for n in graph.node if n.name == PACK_NODE))
    kept = [i for i in graph.input if i.name not in columns]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(PACKED_NUMERIC, TensorProto.FLOAT, ["N", len(columns)]), *kept])
    _fold_scaling(graph)
    onnx.checker.check_model(packed, full_check=True)
    return packed


def _fold_scaling(graph: onnx.GraphProto) -> None:
    """When the scaled numbers are the network's whole input and its first op is a Gemm on constant weights,
    fold the scaling into that Gemm: (x - mean) / std @ W.T + b = x @ (W / std).T + (b - (mean / std) @ W.T).
    Two ops less per call; the answers move by float32 rounding only (export checks packed.onnx's parity).
    Anything else is left as it is."""
    by_output = {o: n for n in graph.node for o in n.output}
    div = by_output.get("features")
    users = [n for n in graph.node if "features" in n.input]
    if div is None or div.op_type != "Div" or list(div.input) != ["num_centred", "num_std"] or len(users) != 1:
        return
    gemm, inits = users[0], {t.name: t for t in graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    if (gemm.op_type != "Gemm" or len(gemm.input) != 3 or gemm.input[0] != "features"
            or any(n not in inits for n in gemm.input[1:]) or attrs.get("transA", 0) != 0
            or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
        return
    if sum(gemm.input[1] in n.input or gemm.input[2] in n.input for n in graph.node) != 1:
        return  # the weights are shared with another op
    w = numpy_helper.to_array(inits[gemm.input[1]]).astype(np.float64)
    bias = numpy_helper.to_array(inits[gemm.input[2]]).astype(np.float64)
    mean = numpy_helper.to_array(inits["num_mean"]).astype(np.float64).reshape(-1)
    std = numpy_helper.to_array(inits["num_std"]).astype(np.float64).reshape(-1)
    wt = w.T if attrs.get("transB", 0) else w  # [K, H]
    if wt.shape[0] != len(mean) or bias.shape[-1] != wt.shape[1]:
        return
    folded_w = wt / std[:, None]
    folded_b = bias - (mean / std) @ wt
    inits[gemm.input[1]].CopyFrom(numpy_helper.from_array(
        (folded_w.T if attrs.get("transB", 0) else folded_w).astype(np.float32), gemm.input[1]))
    inits[gemm.input[2]].CopyFrom(numpy_helper.from_array(folded_b.astype(np.float32), gemm.input[2]))
    gemm.input[0] = "num_filled"
    for op in (div, by_output["num_centred"]):
        graph.node.remove(op)
    used = {i for n in graph.node for i in n.input}
    for name in ("num_mean", "num_std"):  # ONNX Runtime warns at every load about an unused initializer
        if name not in used:
            graph.initializer.remove(inits[name])


def packed_columns(full: onnx.ModelProto) -> list[str]:
    """The columns packed.onnx takes in its PACKED_NUMERIC input, in order."""
    return list(next(n for n in full.graph.node if n.name == PACK_NODE).input)


def postprocessing_graph(task: str, n_out: int, labels: list[str] | None, target_scale: tuple[float, float] | None,
                         opset: int, ir_version: int) -> onnx.ModelProto:
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])
    if task == "regression":
        mean, std = target_scale or (0.0, 1.0)
        inits = [numpy_helper.from_array(np.array([std], np.float32), "target_std"),
                 numpy_helper.from_array(np.array([mean], np.float32), "target_mean"),
                 numpy_helper.from_array(np.array([1], np.int64), "squeeze_axis")]
        nodes = [helper.make_node("Mul", ["logits", "target_std"], ["scaled"]),
                 helper.make_node("Add", ["scaled", "target_mean"], ["shifted"]),
                 helper.make_node("Squeeze", ["shifted", "squeeze_axis"], ["prediction"])]
        outputs = [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N"])]
        graph = helper.make_graph(nodes, "postprocess", [logits], outputs, initializer=inits)
    else:
        assert labels is not None
        nodes = [
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
            helper.make_node("ArgMax", ["logits"], ["label_index"], axis=1, keepdims=0),
            helper.make_node("LabelEncoder", ["label_index"], ["label"], domain="ai.onnx.ml",
                             keys_int64s=list(range(len(labels))), values_strings=labels, default_string=""),
        ]
        outputs = [helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
                   helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_out])]
        graph = helper.make_graph(nodes, "postprocess", [logits], outputs)
    return _model(graph, opset, ir_version)


def assemble(pre: onnx.ModelProto, net: onnx.ModelProto, post: onnx.ModelProto) -> onnx.ModelProto:
    """pre -> net -> post as one model; the network's names get a prefix so nothing collides."""
    net_in, net_out = net.graph.input[0].name, net.graph.output[0].name
    head = compose.merge_models(pre, net, io_map=[("features", net_in)], prefix2="net/")
    full = compose.merge_models(head, post, io_map=[(f"net/{net_out}", "logits")])
    full.graph.name = "mlops"
    onnx.checker.check_model(full, full_check=True)
    return full


def assemble_inputs(pre: onnx.ModelProto | None, net: onnx.ModelProto, post: onnx.ModelProto) -> onnx.ModelProto:
    """A multi-input network between its pre- and post-processing: the scalar columns' preprocessing (`pre`,
    None without scalar columns) feeds the network's `tabular` input; its image and text inputs stay graph inputs
    under their column names (the bundle's Predictor decodes and tokenizes into them); `post` turns its logits
    into the answer, and its `embedding` output is kept as the graph's `embedding`."""
    # the network's own names get a prefix so nothing collides; its inputs keep the names the bundle documents
    net = compose.add_prefix(net, "net/", rename_inputs=False)
    outputs = [o.name for o in post.graph.output]
    head = net
    if pre is not None:
        head = compose.merge_models(pre, net, io_map=[("features", TABULAR)])
    full = compose.merge_models(head, post, io_map=[("net/logits", "logits")],
                                outputs=[*outputs, *(["net/embedding"] if _has_output(net, "net/embedding") else [])])
    if _has_output(full, "net/embedding"):
        full.graph.node.append(helper.make_node("Identity", ["net/embedding"], ["embedding"], name="embedding"))
        kept = [o for o in full.graph.output if o.name != "net/embedding"]
        embedding = next(o for o in full.graph.output if o.name == "net/embedding")
        renamed = onnx.ValueInfoProto()
        renamed.CopyFrom(embedding)
        renamed.name = "embedding"
        del full.graph.output[:]
        full.graph.output.extend([*kept, renamed])
    full.graph.name = "mlops"
    onnx.checker.check_model(full, full_check=True)
    return full


def _has_output(model: onnx.ModelProto, name: str) -> bool:
    return any(o.name == name for o in model.graph.output)


def _model(graph: onnx.GraphProto, opset: int, ir_version: int) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    model.ir_version = ir_version
    return model


def io_description(model: onnx.ModelProto) -> dict[str, Any]:
    def describe(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        dtype = "string" if t.elem_type == TensorProto.STRING else helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return {"name": v.name, "dtype": dtype, "shape": dims}

    return {"inputs": [describe(v) for v in model.graph.input], "outputs": [describe(v) for v in model.graph.output]}
