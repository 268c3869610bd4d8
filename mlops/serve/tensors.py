"""The V2 model metadata of a bundle (`GET /v2/models/<name>`): its inputs and outputs as V2 tensors, the same
lists from both runtimes (our app and the kserve.Model), so a client cannot tell them apart.

An input is what a request sends for it, one value per row: a number (FP32), a category or a text (BYTES), an
image as BYTES (base64 of the encoded file; a UINT8 [N, height, width, channels] tensor of pixels is taken too,
but a tensor's metadata has one datatype and one shape). Outputs are what an answer holds: the `embedding`
output, for monitoring only, is never one.
"""

from __future__ import annotations

from typing import Any

from mlops.package.bundle import BundleMeta
from mlops.package.predictor import EMBEDDING


def input_tensors(meta: BundleMeta) -> list[dict[str, Any]]:
    return [{"name": i.name, "datatype": "BYTES" if i.dtype == "string" or not i.scalar else "FP32",
             "shape": [-1, 1]} for i in meta.inputs]


def output_tensors(meta: BundleMeta) -> list[dict[str, Any]]:
    return [{"name": o["name"], "datatype": "BYTES" if o["dtype"] == "string" else "FP32",
             "shape": [-1 if isinstance(d, str) else d for d in o["shape"]]}
            for o in meta.outputs if o["name"] != EMBEDDING]
