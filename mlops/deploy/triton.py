"""The Triton model repository of one model version, for KServe's stock `kserve-tritonserver` runtime:
`<name>/config.pbtxt` and `<name>/1/model.onnx`, to be copied to `<storage_uri>/<name>/v<version>`.

Triton runs the bundle's graph as it is. A tabular graph takes the raw columns and preprocesses them itself;
an image or text input is what the network takes, uint8 pixels or int64 token ids, so a Triton client decodes
and resizes its images and tokenizes its texts (the rendered config says how, input by input). Our own server
(runtime `mlops`) takes encoded images and texts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlops.core.atomic import publishing
from mlops.core.refs import ModelVersion
from mlops.deploy.render import render
from mlops.package.bundle import BundleInput, BundleMeta, read_bundle
from mlops.package.predictor import EMBEDDING

TRITON_TYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "uint8": "TYPE_UINT8", "string": "TYPE_STRING", "bool": "TYPE_BOOL"}


def input_dims(i: BundleInput) -> list[int]:
    """What the graph takes for one input: a scalar column [N, 1], an image's pixels [N, H, W, C], a text's
    token ids [N, L] (Triton serves the network's raw inputs: it neither decodes images nor tokenizes)."""
    if i.image is not None:
        return [-1, *i.image.shape]
    if i.text is not None:
        return [-1, i.text.max_length]
    return [-1, 1]


def client_notes(meta: BundleMeta) -> list[str]:
    """What a Triton client must do itself for each image and text input (empty for a tabular model)."""
    notes = []
    for i in meta.inputs:
        if i.image is not None:
            h, w, c = i.image.shape
            notes.append(f"{json.dumps(i.name)}: decoded pixels, uint8 [N, {h}, {w}, {c}]: convert each image to "
                         f"{'grey (L)' if c == 1 else 'RGB'} and resize it to {w}x{h} (bilinear), as "
                         "mlops.data.media.decode_image does")
        elif i.text is not None:
            notes.append(f"{json.dumps(i.name)}: token ids, int64 [N, {i.text.max_length}]: tokenize each text "
                         f"with the bundle's tokenizer ({i.text.tokenizer}, copied beside this file), pad with 0 and "
                         f"truncate to {i.text.max_length}, as mlops.data.media.encode_texts does")
    return notes


def config_pbtxt(meta: BundleMeta, version: str) -> str:
    """Triton's config for the bundle's graph: its inputs as the graph takes them; outputs as the bundle describes
    them, less the embedding (for monitoring, never part of an answer)."""
    inputs = [{"name": i.name, "data_type": TRITON_TYPES[i.dtype], "dims": input_dims(i)} for i in meta.inputs]
    outputs = [{"name": o["name"], "data_type": TRITON_TYPES[o["dtype"]],
                "dims": [-1 if not isinstance(d, int) else d for d in o["shape"]]}
               for o in meta.outputs if o["name"] != EMBEDDING]
    return render("triton_config.pbtxt.j2", name=meta.name, version=version, inputs=inputs, outputs=outputs,
                  notes=client_notes(meta))


def build_repository(dest: Path, bundle_dir: Path, mv: ModelVersion) -> Path:
    """Write the repository at `dest` atomically; returns `dest`. The assets of text inputs (tokenizers) go
    beside config.pbtxt, for the clients that must tokenize (Triton ignores them)."""

    meta = read_bundle(bundle_dir)
    with publishing(dest) as tmp:
        (tmp / meta.name / "1").mkdir(parents=True)
        shutil.copy2(bundle_dir / "model.onnx", tmp / meta.name / "1" / "model.onnx")
        (tmp / meta.name / "config.pbtxt").write_text(config_pbtxt(meta, mv.version))
        for i in meta.inputs:
            if i.text is not None:
                shutil.copy2(bundle_dir / i.text.tokenizer, tmp / meta.name / i.text.tokenizer)
    return dest
