"""The serving benchmark's peers, LitServe and BentoML, each serving the bundle's ONNX model as the bare floor does
(benchmarks/onnx_floor.py: V1 or V2 JSON in, ONNX Runtime, JSON out, no validation, log or metrics) with the
settings their documentation gives for production throughput on one core. They run on `.venv-peers` (`make
bench-deps`: litserve, bentoml, onnxruntime, numpy, pinned in benchmarks/peers-requirements.txt), never on the
project's environment; benchmarks/serve.py starts them:

    .venv-peers/bin/python benchmarks/peers.py litserve BUNDLE --port N
    BENCH_BUNDLE=BUNDLE .venv-peers/bin/python -m bentoml serve peers:BentoPeer --working-dir benchmarks --port N

* LitServe: `LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=True)` ("enable ZeroMQ for
  high-throughput scenarios (>100 RPS)"), `run(num_api_servers=1)`: one HTTP process and one inference worker,
  as one core allows; its route `/predict`, its health `/health`.
* BentoML: a `@bentoml.service(workers=1)` class with one `@bentoml.api` taking the body's `instances` (V1) or
  `inputs` (V2), `bentoml serve` (production mode is its default); its route `/predict`, its health `/readyz`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_floor import FloorModel  # noqa: E402 - beside this file

ROUTE = "/predict"
HEALTH = {"litserve": "/health", "bentoml": "/readyz"}


def run_litserve(bundle: Path, port: int) -> None:
    server = ls.LitServer(LitPeer(bundle), accelerator="cpu", workers_per_device=1, fast_queue=True)
    server.run(host="127.0.0.1", port=port, num_api_servers=1, generate_client_file=False, log_level="warning")


try:  # only .venv-peers has LitServe; the class is at module level: LitServe pickles it into its worker process
    import litserve as ls
except ImportError:
    pass
else:
    class LitPeer(ls.LitAPI):
        def __init__(self, bundle: Path) -> None:
            super().__init__()
            self.bundle = bundle

        def setup(self, device: str) -> None:
            self.model = FloorModel(self.bundle)

        def decode_request(self, request):  # type: ignore[no-untyped-def]  # unannotated: LitServe then reads the JSON body
            return request

        def predict(self, body: dict[str, Any]) -> dict[str, Any]:
            return self.model.answer(body)

        def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
            return output


if os.environ.get("BENCH_BUNDLE"):  # imported by `bentoml serve peers:BentoPeer`
    import bentoml

    @bentoml.service(workers=1)
    class BentoPeer:
        def __init__(self) -> None:
            self.model = FloorModel(Path(os.environ["BENCH_BUNDLE"]))

        @bentoml.api
        def predict(self, instances: list[dict[str, Any]] | None = None,
                    inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            return self.model.answer({"instances": instances} if instances is not None else {"inputs": inputs})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=["litserve"])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run_litserve(args.bundle, args.port)


if __name__ == "__main__":
    main()
