"""V2 JSON vs the V2 binary tensor extension (HTTP) vs V2 gRPC, on one `mlops serve` process, in one run.

    .venv/bin/python benchmarks/serve_binary.py [--duration 3] [--rounds 2] [--concurrency 8]

Two bundles, each served by `mlops serve BUNDLE --grpc-port G` with its defaults (the SQLite prediction log and
the metrics on), pinned with `taskset` to one core while the load generator runs on another (when the machine
has two cores and taskset; the header says):

* a 30-column row: the test fixture's tabular bundle (tests/serve_fixtures.build_bundle) over 24 numeric and 6
  categorical columns; a request is one row, one tensor per column ([1, 1] FP32, or BYTES);
* a 32x32x3 image tensor: the image + text fixture bundle (tests/media_fixtures.build_media_bundle, images
  resized to 32x32), a request one UINT8 [1, 32, 32, 3] tensor of pixels, with the bundle's two other inputs
  (a short text and a number) the same in every protocol.

Each request is built once per protocol: JSON (`data` lists, answer in JSON), binary (what tritonclient.http
sends by default: every input as `binary_data_size` bytes after the JSON header, `binary_data_output: true`),
gRPC (a ModelInferRequest with `raw_input_contents`, tritonclient.grpc's default). Every answer is checked
once against the JSON one before timing.

The load generator is this Python process, the same for every protocol (wrk cannot send a V2 binary body with
its header, nor gRPC): asyncio with `--concurrency` workers (default 8), HTTP/1.1 keep-alive over raw streams
(the request bytes prepared, the answer read by its Content-Length) and a `grpc.aio` channel with identity
serializers (the message prepared). Cells are interleaved (each round runs every protocol of both bundles in
turn) after a warm-up; the table gives requests/s and p99 latency per protocol, best round by throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.serve.grpc import SERVICE, v2_messages  # noqa: E402 - after the path
from tests.media_fixtures import build_media_bundle  # noqa: E402
from tests.serve_fixtures import build_bundle  # noqa: E402

NUMERIC, CATEGORICAL = 24, 6
HEADER = "Inference-Header-Content-Length"


@dataclass
class Case:
    """One bundle's request in each protocol."""

    name: str
    model: str
    inputs: list[tuple[str, str, list[int], np.ndarray]]  # name, datatype, shape, values

    def json_body(self) -> bytes:
        tensors = []
        for name, datatype, shape, values in self.inputs:
            data = [v.decode() if isinstance(v, bytes) else v for v in values.reshape(-1).tolist()]
            tensors.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
        return json.dumps({"inputs": tensors}).encode()

    def binary_body(self) -> tuple[bytes, int]:
        tensors, raw = [], []
        for name, datatype, shape, values in self.inputs:
            blob = serialize(datatype, values)
            tensors.append({"name": name, "datatype": datatype, "shape": shape,
                            "parameters": {"binary_data_size": len(blob)}})
            raw.append(blob)
        header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}}).encode()
        return header + b"".join(raw), len(header)

    def grpc_message(self) -> bytes:
        pb = v2_messages()
        request = pb.ModelInferRequest(model_name=self.model)
        for name, datatype, shape, values in self.inputs:
            request.inputs.add(name=name, datatype=datatype, shape=shape)
            request.raw_input_contents.append(serialize(datatype, values))
        return request.SerializeToString()


def serialize(datatype: str, values: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(len(v).to_bytes(4, "little") + v for v in values.reshape(-1).tolist())
    return np.ascontiguousarray(values, dtype={"FP32": "<f4", "UINT8": "u1"}[datatype]).tobytes()


def tabular_case(tmp: Path) -> tuple[Case, Path]:
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame({f"x{i:02d}": rng.normal(0, 1, n) for i in range(NUMERIC)}
                         | {f"c{i}": rng.choice(["a", "b", "c", "d"], n) for i in range(CATEGORICAL)})
    frame["y"] = np.where(frame["x00"] > 0, "yes", "no")
    bundle = build_bundle(tmp / "row30", name="row30", frame=frame)
    row = frame.iloc[0]
    inputs = [(f"x{i:02d}", "FP32", [1, 1], np.array([[row[f"x{i:02d}"]]], dtype=np.float32)) for i in range(NUMERIC)]
    inputs += [(f"c{i}", "BYTES", [1, 1], np.array([[row[f"c{i}"].encode()]], dtype=object))
               for i in range(CATEGORICAL)]
    return Case("30-column row", "row30", inputs), bundle


def rgb_bundle(tmp: Path) -> Path:
    """The image + text fixture bundle at 32x32, its image input widened to 3 channels (the fixture's is grey):
    the pixel reshape and the first layer's rows follow."""
    import onnx
    from onnx import numpy_helper

    from mlops.package.bundle import write_bundle
    from tests.media_fixtures import TOKENIZER

    grey = build_media_bundle(tmp / "image-grey", name="image32", size=(32, 32))
    model = onnx.load(str(grey / "model.onnx"))
    meta = json.loads((grey / "bundle.json").read_text())
    pixels = 32 * 32
    for tensor in model.graph.input:
        if tensor.name == "image":
            tensor.type.tensor_type.shape.dim[3].dim_value = 3
    for k, init in enumerate(model.graph.initializer):
        if init.name == "flat":
            model.graph.initializer[k].CopyFrom(numpy_helper.from_array(np.array([-1, 3 * pixels], np.int64), "flat"))
        elif init.name == "w1":
            w = numpy_helper.to_array(init)
            start = w.shape[0] - 4 - pixels  # rows: the scalar features, the pixels, the text's 4
            extra = (np.random.default_rng(1).normal(size=(2 * pixels, w.shape[1])) * 0.2).astype(np.float32)
            wide = np.concatenate([w[:start + pixels], extra, w[start + pixels:]])
            model.graph.initializer[k].CopyFrom(numpy_helper.from_array(wide, "w1"))
    for i in meta["inputs"]:
        if i["name"] == "image":
            i["image"]["channels"] = 3
    meta.pop("onnx_sha256", None)
    write_bundle(tmp / "image", model.SerializeToString(), meta, assets={TOKENIZER: (grey / TOKENIZER).read_text()})
    return tmp / "image"


def image_case(tmp: Path) -> tuple[Case, Path]:
    bundle = rgb_bundle(tmp)
    pixels = np.random.default_rng(0).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
    inputs = [("image", "UINT8", [1, 32, 32, 3], pixels),
              ("review", "BYTES", [1, 1], np.array([[b"great coffee, fresh and strong"]], dtype=object)),
              ("age", "FP32", [1, 1], np.array([[41.0]], dtype=np.float32))]
    return Case("32x32x3 image tensor", "image32", inputs), bundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    case: Case
    port: int
    grpc_port: int
    proc: subprocess.Popen[bytes]
    out: Path


def start(case: Case, bundle: Path, tmp: Path, cpu: int | None) -> Served:
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--port", str(port), "--grpc-port",
           str(grpc_port), "--log", str(tmp / f"{case.model}.sqlite")]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = tmp / f"{case.model}.out"
    env = os.environ | {"MLOPS_HOME": str(tmp / ".mlops"), "PYTHONUNBUFFERED": "1"}
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{out.read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            if r.status == 200:
                return Served(case, port, grpc_port, proc, out)
        time.sleep(0.2)
    raise RuntimeError(f"server not ready:\n{out.read_text()[-2000:]}")


def stop(served: Served) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(served.proc.pid, signal.SIGTERM)
    try:
        served.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(served.proc.pid, signal.SIGKILL)
        served.proc.wait(timeout=5)


def http_request(served: Served, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST /v2/models/{served.case.model}/infer HTTP/1.1", "Host: 127.0.0.1",
            f"Content-Length: {len(body)}", *[f"{k}: {v}" for k, v in headers.items()]]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def http_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
                        ) -> tuple[int, dict[str, str], bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def http_load(served: Served, request: bytes, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            while time.perf_counter() < end:
                started = time.perf_counter()
                status, _, _ = await http_exchange(reader, writer, request)
                latencies.append(time.perf_counter() - started)
                assert status == 200, status
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def grpc_load(served: Served, message: bytes, concurrency: int, seconds: float) -> list[float]:
    import grpc

    latencies: list[float] = []
    end = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=None, response_deserializer=None)

        async def worker() -> None:
            while time.perf_counter() < end:
                started = time.perf_counter()
                await call(message)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def decode_binary(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    header = json.loads(body[:header_length])
    out, at = {}, header_length
    for o in header["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = decode_raw(o["datatype"], body[at:at + size])
        at += size
    return out


def decode_raw(datatype: str, raw: bytes) -> np.ndarray:
    if datatype == "BYTES":
        values, at = [], 0
        while at < len(raw):
            n = int.from_bytes(raw[at:at + 4], "little")
            values.append(raw[at + 4:at + 4 + n].decode())
            at += 4 + n
        return np.array(values, dtype=object)
    return np.frombuffer(raw, dtype="<f4")


async def check(served: Served, requests: dict[str, Any]) -> None:
    """Every protocol's answer is the JSON one (labels equal, probabilities within float32 rounding)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    status, _, body = await http_exchange(reader, writer, requests["JSON"])
    assert status == 200, body
    expected = {o["name"]: np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else np.float32)
                for o in json.loads(body)["outputs"]}
    status, headers, body = await http_exchange(reader, writer, requests["binary"])
    writer.close()
    assert status == 200, body
    answers = {"binary": decode_binary(body, int(headers[HEADER.lower()]))}
    import grpc

    pb = v2_messages()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=None, response_deserializer=None)
        response = pb.ModelInferResponse.FromString(await call(requests["gRPC"]))
    answers["gRPC"] = {o.name: decode_raw(o.datatype, raw)
                       for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)}
    for protocol, got in answers.items():
        assert set(got) == set(expected), (protocol, set(got))
        for name, values in expected.items():
            if values.dtype == object:
                assert got[name].tolist() == values.tolist(), (protocol, name)
            else:
                np.testing.assert_allclose(got[name], values, rtol=1e-6, err_msg=f"{protocol} {name}")


def pinned_cores() -> tuple[int | None, int | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("taskset"):
        return None, None
    os.sched_setaffinity(0, {cpus[1]})
    return cpus[0], cpus[1]


def summary(latencies: list[float], seconds: float) -> tuple[float, float]:
    return len(latencies) / seconds, float(np.percentile(latencies, 99) * 1000) if latencies else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per timed cell (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per cell (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is kept (default 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent requests (default 8)")
    args = parser.parse_args()
    server_cpu, client_cpu = pinned_cores()
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} cores, load average {load:.2f}; " + (
        f"servers on core {server_cpu}, this load generator on core {client_cpu}" if server_cpu is not None
        else "NOT pinned: servers and the load generator share the cores"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = [tabular_case(tmp), image_case(tmp)]
        served = [start(case, bundle, tmp, server_cpu) for case, bundle in cases]
        try:
            requests: dict[str, dict[str, Any]] = {}
            for s in served:
                binary, header_length = s.case.binary_body()
                requests[s.case.name] = {
                    "JSON": http_request(s, s.case.json_body(), {"Content-Type": "application/json"}),
                    "binary": http_request(s, binary, {"Content-Type": "application/octet-stream",
                                                       HEADER: str(header_length)}),
                    "gRPC": s.case.grpc_message()}
                asyncio.run(check(s, requests[s.case.name]))
            best: dict[tuple[str, str], tuple[float, float]] = {}
            for _ in range(args.rounds):
                for s in served:
                    for protocol, request in requests[s.case.name].items():
                        for seconds in (args.warmup, args.duration):
                            if protocol == "gRPC":
                                latencies = asyncio.run(grpc_load(s, request, args.concurrency, seconds))
                            else:
                                latencies = asyncio.run(http_load(s, request, args.concurrency, seconds))
                        result = summary(latencies, args.duration)
                        key = (s.case.name, protocol)
                        if key not in best or result[0] > best[key][0]:
                            best[key] = result
        finally:
            for s in served:
                stop(s)
    print(f"\nc={args.concurrency}, {args.duration:g} s per cell, best of {args.rounds} interleaved rounds by "
          "throughput; bytes: one request as sent (HTTP: request line and headers included)")
    print(f"{'request':<22} {'protocol':<8} {'bytes':>7} {'req/s':>8} {'p99 ms':>8} {'vs JSON':>8}")
    for s in served:
        for protocol, request in requests[s.case.name].items():
            rps, p99 = best[(s.case.name, protocol)]
            base = best[(s.case.name, "JSON")][0]
            print(f"{s.case.name:<22} {protocol:<8} {len(request):>7} {rps:>8.0f} {p99:>8.2f} {rps / base:>7.2f}x")


if __name__ == "__main__":
    main()
