"""Export the trained network to ONNX, wrap it with pre/post-processing, and prove parity."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.core.errors import ParityError
from mlops.data.media import TABULAR, ModelInputs
from mlops.data.preprocess import Preprocessor, category_strings, numeric_column
from mlops.package.predictor import pack_feeds

if TYPE_CHECKING:
    import onnx
    import pandas as pd
    import torch


def export_network(module: torch.nn.Module, inputs: int | ModelInputs, opset: int) -> onnx.ModelProto:
    """The network alone, with a dynamic batch dimension.

    `inputs` an int (the tabular MLP, or any module whose forward takes one tensor): `x` [batch, inputs] ->
    `logits`. `inputs` a ModelInputs (a network whose forward takes a dict): one graph input per network
    input, named as the batch keys are (`tabular` float32 [batch, F], each image column uint8
    [batch, H, W, C], each text column int64 [batch, L]) -> `logits` and, when the module has `embed`,
    `embedding` (its last hidden layer)."""
    import logging

    import torch

    # the exporter warns about every torchvision op it cannot register when torchvision is absent
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    if isinstance(inputs, int):
        return _export_tabular(module, inputs, opset)

    names = inputs.names
    with_embedding = callable(getattr(module, "embed", None))

    class Forward(torch.nn.Module):  # positional tensors in `names` order -> the dict the module takes
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: torch.Tensor) -> Any:
            return network_outputs(self.inner, dict(zip(names, tensors, strict=True)))

    outputs = ["logits", "embedding"] if with_embedding else ["logits"]
    example = tuple(torch.from_numpy(a) for a in example_inputs(inputs, rows=2).values())
    batch = torch.export.Dim("batch")
    shapes = (tuple({0: batch} for _ in names),)  # *tensors: one spec per positional input
    program = _export(Forward(module).eval(), example, opset, dynamic_shapes=shapes)
    _name_io(program.model, names, outputs)
    return program.model_proto


def _export_tabular(module: torch.nn.Module, input_dim: int, opset: int) -> onnx.ModelProto:
    import torch

    class Forward(torch.nn.Module):  # only forward(x): a LightningModule's other methods stay out
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    wrapped = Forward(module).eval()
    example = (torch.zeros(2, input_dim),)
    program = _export(wrapped, example, opset, input_names=["x"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    return program.model_proto


def _export(wrapped: torch.nn.Module, example: tuple[Any, ...], opset: int, **options: Any) -> Any:
    import torch

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the exporter prints progress
        warnings.filterwarnings("ignore", ".*axis name.*will not be used.*")  # one Dim shared by every input
        return torch.onnx.export(wrapped, example, dynamo=True, opset_version=opset, verbose=False, **options)


def _name_io(model: Any, inputs: list[str], outputs: list[str]) -> None:
    """Name the graph's inputs and outputs (an onnx_ir model, renamed in place). The exporter names inner
    values after their ops, so `embedding` (nn.Embedding's output) or a column called `linear` may already
    be taken: such inner values are renamed first, graph values must be unique."""
    graph = model.graph
    io = {id(v) for v in [*graph.inputs, *graph.outputs]}
    inner = [v for node in graph for v in node.outputs] + list(graph.initializers.values())
    taken = {v.name for v in inner} | {v.name for v in graph.inputs}
    wanted = set(inputs) | set(outputs)
    for value in inner:
        if value.name in wanted and id(value) not in io:
            n = 1
            while f"{value.name}_{n}" in taken or f"{value.name}_{n}" in wanted:
                n += 1
            value.name = f"{value.name}_{n}"
            taken.add(value.name)
    for value, name in zip(graph.inputs, inputs, strict=True):
        value.name = name
    for value, name in zip(graph.outputs, outputs, strict=True):
        value.name = name


def example_inputs(inputs: ModelInputs, rows: int) -> dict[str, np.ndarray]:
    """Zeros shaped and typed as the network takes them, one array per input (`ModelInputs.names` order)."""
    arrays: dict[str, np.ndarray] = {}
    if inputs.tabular:
        arrays[TABULAR] = np.zeros((rows, inputs.tabular), np.float32)
    arrays |= {c: np.zeros((rows, *s.shape), np.uint8) for c, s in inputs.images.items()}
    arrays |= {c: np.zeros((rows, s.max_length), np.int64) for c, s in inputs.texts.items()}
    return arrays


def network_outputs(module: Any, batch: dict[str, torch.Tensor]) -> Any:
    """What a dict-input network's graph returns: (logits, embedding), or logits alone without `embed`."""
    if callable(getattr(module, "forward_with_embedding", None)):
        return module.forward_with_embedding(batch)  # one pass for both (MultiInputNet)
    if callable(getattr(module, "embed", None)):
        return module(batch), module.embed(batch)
    return module(batch)


def onnx_feeds(frame: pd.DataFrame, pre: Preprocessor) -> dict[str, np.ndarray]:
    """Raw columns as the graph takes them: float32 [N,1] numbers (NaN = missing), strings [N,1]."""
    feeds = {s.name: numeric_column(frame[s.name])[:, None] for s in pre.numeric}
    feeds |= {c.name: category_strings(frame[c.name], pre.trim)[:, None] for c in pre.categorical}
    return feeds


def torch_outputs(module: torch.nn.Module, features: np.ndarray | dict[str, np.ndarray],
                  task: str) -> np.ndarray:
    """What the trained model computes: probabilities, or the standardised regression output. `features` is
    the preprocessed matrix, or {input: array} for a network that takes a dict (see torch_dict_outputs)."""
    import torch

    if isinstance(features, dict):
        return torch_dict_outputs(module, features, task)[0]
    module.eval()
    with torch.no_grad():
        out = module(torch.from_numpy(features))
        out = torch.softmax(out, dim=-1) if task != "regression" else out.squeeze(-1)
    return out.numpy()


def torch_dict_outputs(module: torch.nn.Module, inputs: dict[str, np.ndarray], task: str,
                       batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """A dict-input network (MultiInputNet) on {input: array} (`tabular` float32, images uint8 [N, H, W, C],
    texts int64 [N, L]): probabilities or the standardised regression output, and the embeddings (None for a
    module without `embed`). In batches, so a test split of images never becomes one float tensor."""
    import torch

    module.eval()
    rows = len(next(iter(inputs.values()))) if inputs else 0
    outs: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, rows, batch_size):
            batch = {k: torch.from_numpy(np.ascontiguousarray(v[start:start + batch_size]))
                     for k, v in inputs.items()}
            got = network_outputs(module, batch)
            logits, emb = got if isinstance(got, tuple) else (got, None)
            out = torch.softmax(logits, dim=-1) if task != "regression" else logits.squeeze(-1)
            outs.append(out.numpy())
            if emb is not None:
                embs.append(emb.numpy())
    if not outs:
        return np.zeros((0,), np.float32), None
    return np.concatenate(outs), (np.concatenate(embs) if embs else None)


def check_parity(session: Any, module: torch.nn.Module, frame: pd.DataFrame, pre: Preprocessor, task: str,
                 target_scale: tuple[float, float] | None, batch_sizes: list[int], atol: float,
                 media: dict[str, np.ndarray] | None = None, packed: tuple[str, list[str]] | None = None
                 ) -> dict[str, Any]:
    """ONNX Runtime on raw columns vs torch on preprocessed features, over several batch sizes.

    `media`: a dict-input network's image and text inputs for the same rows (uint8 pixels, int64 token ids,
    as mlops.data.media makes them), fed to the graph as they are and to the module beside `tabular`.
    `packed`: the session is packed.onnx (its packed input's name and columns), fed as the Predictor feeds it."""
    if media is None:
        expected = torch_outputs(module, pre.transform(frame), task)
    else:
        tabular = {TABULAR: pre.transform(frame)} if pre.n_features else {}
        expected = torch_dict_outputs(module, tabular | media, task)[0]
    feeds = onnx_feeds(frame, pre) | (media or {})
    if packed is not None:
        name, columns = packed
        feeds = pack_feeds(feeds, name, columns, [k for k in feeds if k not in set(columns)])
    return compare_outputs(session, feeds, expected, task, target_scale, batch_sizes, atol)


def compare_outputs(session: Any, feeds: dict[str, np.ndarray], expected: np.ndarray, task: str,
                    target_scale: tuple[float, float] | None, batch_sizes: list[int], atol: float) -> dict[str, Any]:
    """The graph on `feeds` at each batch size against `expected` (what the trained module computed for the same
    rows: probabilities, or the standardised regression output). Raises ParityError past `atol`."""
    rows = len(next(iter(feeds.values()))) if feeds else 0
    worst = 0.0
    for bs in batch_sizes:
        parts = []
        for start in range(0, rows, bs):
            chunk = {k: v[start:start + bs] for k, v in feeds.items()}
            out = dict(zip([o.name for o in session.get_outputs()], session.run(None, chunk), strict=True))
            parts.append(out["prediction"] if task == "regression" else out["probabilities"])
        got = np.concatenate(parts) if parts else np.zeros_like(expected)
        if task == "regression" and target_scale is not None:
            mean, std = target_scale
            got = (got - np.float32(mean)) / np.float32(std)  # compare the network's own output scale
        diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
        worst = max(worst, diff)
        if not np.all(np.isfinite(got)) or diff > atol:
            raise ParityError(
                f"ONNX export disagrees with the trained model at batch size {bs}: max |diff| = {diff:.3g} "
                f"> {atol:g} over {rows} test rows; the model was not packaged"
            )
    return {"max_abs_diff": worst, "rows": rows, "batch_sizes": batch_sizes, "atol": atol}
