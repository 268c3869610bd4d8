"""Export the trained network to ONNX, wrap it with pre/post-processing, and prove parity."""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.core.errors import ParityError
from mlops.data.preprocess import Preprocessor, category_strings, numeric_column

if TYPE_CHECKING:
    import onnx
    import pandas as pd
    import torch


def export_network(module: torch.nn.Module, input_dim: int, opset: int) -> onnx.ModelProto:
    """The network alone, `x` [batch, input_dim] -> `logits`, with a dynamic batch dimension."""
    import logging

    import torch

    # the exporter warns about every torchvision op it cannot register when torchvision is absent
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

    class Forward(torch.nn.Module):  # only forward(x): a LightningModule's other methods stay out
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    wrapped = Forward(module).eval()
    example = (torch.zeros(2, input_dim),)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        program = torch.onnx.export(
            wrapped, example, dynamo=True, opset_version=opset, input_names=["x"], output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False,
        )
    return program.model_proto


def onnx_feeds(frame: pd.DataFrame, pre: Preprocessor) -> dict[str, np.ndarray]:
    """Raw columns as the graph takes them: float32 [N,1] numbers (NaN = missing), strings [N,1]."""
    feeds = {s.name: numeric_column(frame[s.name])[:, None] for s in pre.numeric}
    feeds |= {c.name: category_strings(frame[c.name])[:, None] for c in pre.categorical}
    return feeds


def torch_outputs(module: torch.nn.Module, features: np.ndarray, task: str) -> np.ndarray:
    """What the trained model computes: probabilities, or the standardised regression output."""
    import torch

    module.eval()
    with torch.no_grad():
        out = module(torch.from_numpy(features))
        out = torch.softmax(out, dim=-1) if task != "regression" else out.squeeze(-1)
    return out.numpy()


def check_parity(session: Any, module: torch.nn.Module, frame: pd.DataFrame, pre: Preprocessor, task: str,
                 target_scale: tuple[float, float] | None, batch_sizes: list[int], atol: float) -> dict[str, Any]:
    """ONNX Runtime on raw columns vs torch on preprocessed features, over several batch sizes."""
    expected = torch_outputs(module, pre.transform(frame), task)
    feeds = onnx_feeds(frame, pre)
    worst = 0.0
    for bs in batch_sizes:
        parts = []
        for start in range(0, len(frame), bs):
            chunk = {k: v[start:start + bs] for k, v in feeds.items()}
            out = dict(zip([o.name for o in session.get_outputs()], session.run(None, chunk), strict=True))
            parts.append(out["prediction"] if task == "regression" else out["probabilities"])
        got = np.concatenate(parts)
        if task == "regression" and target_scale is not None:
            mean, std = target_scale
            got = (got - np.float32(mean)) / np.float32(std)  # compare the network's own output scale
        diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
        worst = max(worst, diff)
        if not np.all(np.isfinite(got)) or diff > atol:
            raise ParityError(
                f"ONNX export disagrees with the trained model at batch size {bs}: max |diff| = {diff:.3g} "
                f"> {atol:g} over {len(frame)} test rows; the model was not packaged"
            )
    return {"max_abs_diff": worst, "rows": len(frame), "batch_sizes": batch_sizes, "atol": atol}
