"""What the bare floor and the peers do per request, and nothing more: V1 or V2 JSON in, the bundle's model.onnx
through ONNX Runtime (one intra-op thread, as mlops.package.predictor.Predictor), JSON out; no validation, log or
metrics. Imports only numpy and onnxruntime, so that the peers' own environment (`.venv-peers`, without mlops) can
load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class FloorModel:
    def __init__(self, bundle: Path) -> None:
        import numpy as np
        import onnxruntime as ort

        meta = json.loads((bundle / "bundle.json").read_text())
        self.np, self.name = np, meta["name"]
        self.dtypes = {i["name"]: (object if i["dtype"] == "string" else np.float32) for i in meta["inputs"]}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(bundle / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """The answer to a V1 body (`instances`) or a V2 one (`inputs`), in the same protocol."""
        np = self.np
        if "instances" in body:
            rows = body["instances"]
            feeds = {n: np.array([r[n] for r in rows], dtype=t).reshape(-1, 1) for n, t in self.dtypes.items()}
        else:
            feeds = {t["name"]: np.array(t["data"], dtype=self.dtypes[t["name"]]).reshape(-1, 1)
                     for t in body["inputs"]}
        outputs = dict(zip(self.output_names, self.session.run(None, feeds), strict=True))
        if "instances" in body:
            columns = {k: v.tolist() for k, v in outputs.items()}
            n = len(next(iter(feeds.values())))
            return {"predictions": [{k: v[i] for k, v in columns.items()} for i in range(n)]}
        return {"model_name": self.name, "outputs": [
            {"name": k, "datatype": "BYTES" if v.dtype == object else "FP32", "shape": list(v.shape),
             "data": v.reshape(-1).tolist()} for k, v in outputs.items()]}
