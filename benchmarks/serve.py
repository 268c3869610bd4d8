"""Serving throughput and latency: `mlops serve` vs KServe's stock ModelServer vs a bare ASGI loop, in one run.

    .venv/bin/python benchmarks/serve.py [--duration 5] [--rounds 3] [--bundle DIR]
                                         [--batch-args "--batch-max 32 ..."] [--venv PATH]

All servers serve the same bundle, each in its own process started with `taskset -c <server core>`; the load
generator (Debian's `wrk`, `make bench-deps` installs it) runs with `taskset -c <client core>`, one thread,
1, 8 and 32 connections, a fixed single-row request body per protocol (V1 `{"instances": [...]}`, V2 one
tensor per column) after a short warm-up. The variants, all started at once and measured interleaved (for each
protocol and concurrency, every server in turn) so that the machine's background load hits them alike; while
one is measured the others are stopped (SIGSTOP to their process groups), so that each has the server core to
itself, as it would deployed, and no other server's timers, workers or leftover backlog run beside it:

* `mlops serve`: `python -m mlops.cli serve BUNDLE`, its defaults: the SQLite prediction log and the
  Prometheus metrics on (the log goes to a temporary file);
* `mlops serve` + adaptive batching: the same with the batching flags, when `mlops serve --help` lists them
  (`--batch-max` and `--batch-wait-ms`, or whatever `--batch-args` gives); otherwise the row is skipped;
* `mlops serve --shadow BUNDLE`: the same bundle again as the shadow (its cost on the answered requests);
* KServe stock: `kserve.ModelServer(http_port=...).start([model])` over our kserve.Model, every other setting
  at KServe's default (its per-request logging on): the goals compare with this one;
* KServe tuned: `mlops serve BUNDLE --runtime kserve`, the same with its per-request logging off;
* LitServe and BentoML (benchmarks/peers.py, on `--peers-venv`, default .venv-peers from `make bench-deps`):
  each serves the bundle's model.onnx as the floor does (benchmarks/onnx_floor.py), with the settings its
  documentation gives for throughput on one core, on its own route (`/predict`, both protocols' bodies);
  without that environment their rows say so and the peer goal is not judged;
* bare ASGI: a raw ASGI callable under uvicorn (same uvicorn settings as `mlops serve`: uvloop and httptools
  when installed, access log off, log level warning) that decodes the JSON with no validation,
  runs the ONNX Runtime session (1 intra-op thread, as ours) and answers JSON. The floor for any server.

`--venv PATH`: `mlops serve` (all three rows) and the bare floor run on PATH's python, the environment the
serving image installs: created when PATH does not exist, from what `mlops deploy` writes into the image's
requirements.txt (mlops/deploy/container.py: the server's packages, pinned by requirements.lock, the lock as
constraints). mlops itself comes from this checkout, as the image copies it. KServe is not in that image: both
KServe rows run on this interpreter. The header prints each environment's versions and the stack line `mlops
serve` prints (event loop, HTTP parser, JSON library), so a result names what it measured.

The bundle: `--bundle DIR`, else the quickstart model already downloaded from the registry under
$MLOPS_HOME/bundles/quickstart/ (what `mlops serve quickstart@champion` left there), else
`quickstart@champion` from an existing local MLflow store, else the test fixture bundle
(tests/serve_fixtures.build_bundle: the ONNX preprocessing graph over age/income/city, a linear layer,
the label postprocessing) built into a temporary directory. The header says which.

`--rounds N` (default 3): every server measured N times at each protocol and concurrency, the rounds
interleaved too (round 1 of every server, then round 2, ...); the table gives each cell's median requests/s and
median p99, and each goal its ratio of those medians with the range of the same ratio round by round (this
machine moves 10-20 % between runs of minutes, so one round's ratio may land on either side of a goal).

Reports per protocol a table of requests/s and p99 latency at each concurrency, then the issue's goals:
ours / KServe throughput at c=8 (>= 3x), ours / KServe p99 at c=8 (<= 0.3x), ours / bare at c=8 (>= 1.2x:
issue 19 asks for more than the floor, doing the same work smarter), batched / unbatched throughput at c=32
(>= 1.5x), what the shadow adds to p99 at c=8 (<= 5 %), and ours / the best of KServe stock, LitServe and
BentoML at c=8 (> 1x: issue 19's "ahead of every peer").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_floor import FloorModel  # noqa: E402 - beside this file, shared with the peers' processes

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)
PROTOCOLS = ("v1", "v2")
SETTLE_S = 0.5  # after each wrk run, before the next server's turn stops this one (see measure)
DEFAULT_BATCH_ARGS = ["--batch-max", "32", "--batch-wait-ms", "2"]

OURS, BATCHED, SHADOW, STOCK, KSERVE, BARE = "ours", "batched", "shadow", "stock", "kserve", "bare"
LITSERVE, BENTOML = "litserve", "bentoml"
PEERS = (STOCK, LITSERVE, BENTOML)  # issue 19's "every peer"
PEERS_VENV = ROOT / ".venv-peers"  # `make bench-deps`: LitServe and BentoML, never mlops's dependencies
LABELS = {OURS: "`mlops serve` (log + metrics)", BATCHED: "`mlops serve` + adaptive batching",
          SHADOW: "`mlops serve --shadow` (same bundle)", STOCK: "KServe ModelServer, stock settings",
          KSERVE: "KServe ModelServer, tuned (`mlops serve --runtime kserve`)",
          BARE: "bare ASGI + ONNX Runtime (floor)",
          LITSERVE: "LitServe (fast_queue, 1 worker, 1 API server)", BENTOML: "BentoML (`bentoml serve`, 1 worker)"}


# --------------------------------------------------------------------------- the bare ASGI floor


def bare_asgi_app(bundle: Path) -> Any:
    """A raw ASGI app: V1/V2 JSON in, ONNX Runtime, JSON out; no validation, no log, no metrics."""
    model = FloorModel(bundle)
    routes = set(paths(model.name).values())

    async def respond(send: Any, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if scope["method"] == "GET":
            await respond(send, 200 if path.startswith("/v2/health") else 404, {"ready": True})
            return
        raw, more = b"", True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        if path not in routes:
            await respond(send, 404, {"error": path})
            return
        await respond(send, 200, model.answer(json.loads(raw)))

    return app


def run_kserve_stock(bundle: Path, port: int) -> None:
    """`kserve.ModelServer(http_port=...).start([model])` with every other setting at KServe's default (its
    per-request latency and access logging, gRPC on its default port): what the issue calls stock."""
    from mlops.serve.kserve_runtime import BundleModel, kserve

    model = BundleModel(bundle)
    model.load()
    kserve.ModelServer(http_port=port).start([model])


def run_bare(bundle: Path, host: str, port: int) -> None:
    import uvicorn

    from mlops.serve.run import event_loop

    # the settings mlops.serve.run.serve gives uvicorn: uvloop and httptools when installed, no access log
    print(f"bare ASGI: event loop {event_loop()}", flush=True)
    uvicorn.run(bare_asgi_app(bundle), host=host, port=port, log_level="warning", access_log=False,
                loop=event_loop(), http="auto")


# --------------------------------------------------------------------------- the serving image's environment


def image_venv(path: Path) -> Path:
    """PATH's python, after creating PATH from the serving image's requirements when it does not exist."""
    python = path / "bin" / "python"
    if python.is_file():
        return python
    if path.exists():
        raise SystemExit(f"--venv {path}: exists but holds no bin/python")
    from mlops.deploy.container import project_lock, requirements_txt, serve_requirements

    lock = project_lock()
    if lock is None:
        raise SystemExit("--venv: no requirements.lock beside this checkout's mlops package to pin the image from")
    print(f"creating {path} from the serving image's requirements (constraints {lock})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    requirements = path / "image-requirements.txt"
    # every input kind: the bundle benchmarked may read images or text (pillow, tokenizers)
    requirements.write_text(requirements_txt(serve_requirements({"image", "text"}, lock)))
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements), "-c", str(lock)],
                   check=True)
    return python


def stack_of(server: Server) -> str:
    """The stack line `mlops serve` printed at start (event loop, HTTP parser, JSON library)."""
    if server.log is None or not server.log.is_file():
        return ""
    found = re.search(r"^mlops serve: stack: (.*)$", server.log.read_text(errors="replace"), re.M)
    return found.group(1) if found else ""


# --------------------------------------------------------------------------- the bundle and its request


def find_bundle(arg: str | None, tmp: Path) -> tuple[Path, str]:
    """The bundle to serve and a line saying where it came from (see the module doc for the order)."""
    if arg:
        path = Path(arg).resolve()
        if not (path / "bundle.json").is_file():
            raise SystemExit(f"--bundle {arg}: no bundle.json there")
        return path, f"--bundle {path}"
    home = Path(os.environ.get("MLOPS_HOME") or ROOT / ".mlops").resolve()
    downloaded = sorted((p for p in (home / "bundles" / "quickstart").glob("*/bundle")
                         if (p / "bundle.json").is_file() and p.parent.name.isdigit()),
                        key=lambda p: int(p.parent.name))
    if downloaded:
        return downloaded[-1], f"quickstart version {downloaded[-1].parent.name}, downloaded under {home}/bundles"
    if os.environ.get("MLFLOW_TRACKING_URI") or (home / "mlflow.db").is_file():
        with contextlib.suppress(Exception):  # no registry, no quickstart, no champion: the fixture below
            os.environ.setdefault("MLOPS_HOME", str(home))
            from mlops.core.refs import fetch

            served = fetch("quickstart@champion")
            path, version = served.path, served.version
            return path, f"quickstart@champion (version {version}) from the MLflow registry"
    sys.path.insert(0, str(ROOT))
    from tests.serve_fixtures import build_bundle

    path = build_bundle(tmp / "bundle", name="toy")
    return path, ("tests/serve_fixtures.build_bundle (no quickstart model registered here): ONNX preprocessing "
                  "of age, income, city + a linear layer + label postprocessing, built in a temp dir")


def example_row(bundle: Path, image: Path | None = None) -> dict[str, Any]:
    """One real row of the bundle's data where it is known, else the training means / first categories; an
    image input gets `image` (an encoded file, sent as KServe's {"b64": ...}), a text input a short review."""
    meta = json.loads((bundle / "bundle.json").read_text())
    if any(i["kind"] in ("image", "text") for i in meta["inputs"]):
        import base64

        encoded = base64.b64encode(image.read_bytes()).decode() if image else ""
        return {i["name"]: ({"b64": encoded} if i["kind"] == "image" else
                            "Great coffee, fresh and strong: I would buy it again." if i["kind"] == "text" else
                            0.0 if i["dtype"] == "float32" else "a") for i in meta["inputs"]}
    names = [i["name"] for i in meta["inputs"]]
    with contextlib.suppress(Exception):
        if meta["name"] == "quickstart":
            from sklearn.datasets import load_breast_cancer

            data = load_breast_cancer()
            row = {f.replace(" ", "_"): float(v) for f, v in zip(data.feature_names, data.data[0], strict=True)}
            if set(names) <= set(row):
                return {n: row[n] for n in names}
        if set(names) == {"age", "income", "city"}:
            sys.path.insert(0, str(ROOT))
            from tests.serve_fixtures import training_frame

            first = training_frame().iloc[0]
            return {"age": round(float(first["age"]), 4), "income": round(float(first["income"]), 4),
                    "city": str(first["city"])}
    columns = {c["name"]: c for c in meta.get("data_schema", {}).get("columns", [])}
    row = {}
    for i in meta["inputs"]:
        c = columns.get(i["name"], {})
        if i["dtype"] == "string":
            row[i["name"]] = (c.get("categories") or ["a"])[0]
        else:
            row[i["name"]] = round(float(c.get("mean") or 0.0), 4)
    return row


def request_bodies(bundle: Path, image: Path | None = None) -> tuple[str, dict[str, str]]:
    """The model name and the single-row request body per protocol."""
    meta = json.loads((bundle / "bundle.json").read_text())
    row = example_row(bundle, image)

    def v2_input(i: dict[str, Any]) -> dict[str, Any]:
        value = row[i["name"]]
        if i["kind"] in ("image", "text"):  # BYTES: the image's base64 (KServe's convention in JSON), the text
            return {"name": i["name"], "shape": [1], "datatype": "BYTES",
                    "data": [value["b64"] if isinstance(value, dict) else value]}
        return {"name": i["name"], "shape": [1, 1], "datatype": "BYTES" if i["dtype"] == "string" else "FP32",
                "data": [value]}

    v1 = {"instances": [row]}
    v2 = {"inputs": [v2_input(i) for i in meta["inputs"]]}
    return meta["name"], {"v1": json.dumps(v1), "v2": json.dumps(v2)}


def paths(name: str) -> dict[str, str]:
    return {"v1": f"/v1/models/{name}:predict", "v2": f"/v2/models/{name}/infer"}


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


@dataclass
class Server:
    key: str
    cmd: list[str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    note: str = ""
    ok: dict[str, bool] = field(default_factory=dict)
    route: str | None = None  # one route for both protocols (the peers' own), else the KServe protocols' paths
    ready: str = "/v2/health/ready"
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def infer_url(self, name: str, proto: str) -> str:
        return self.url(self.route or paths(name)[proto])


def start(server: Server, cpu: int | None, tmp: Path, env: dict[str, str]) -> None:
    server.port = free_port()
    server.log = tmp / f"{server.key}.out"
    cmd = pinned([*server.cmd, "--port", str(server.port)], cpu)
    with open(server.log, "wb") as out:
        server.proc = subprocess.Popen(cmd, cwd=server.cwd, env=env | server.env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)


def wait_ready(server: Server, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    assert server.proc is not None and server.log is not None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"exited with {server.proc.returncode}:\n{server.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(server.url(server.ready), timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout:.0f}s:\n{server.log.read_text()[-2000:]}")


def stop(server: Server) -> None:
    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and anything it started
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def signal_group(server: Server, sig: signal.Signals) -> None:
    if server.proc is not None and server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, sig)  # its own session: a peer's worker processes too


def focus(servers: list[Server], measured: Server | None) -> None:
    """Only `measured` runs on the server core (every server when None): the others are stopped (SIGSTOP to
    their process groups) until their turn. Idle servers are not idle: KServe's, LitServe's and BentoML's loops,
    timers and workers wake up on that core, and a server that just answered a backlog is still finishing it,
    so with all of them running each measurement also took whatever the others did at that moment (measured
    alone, the bare floor answered 6,500-6,800 requests/s where a full run gave it 4,669)."""
    for s in servers:
        if s is not measured and measured is not None:
            signal_group(s, signal.SIGSTOP)
    for s in servers:
        if s is measured or measured is None:
            signal_group(s, signal.SIGCONT)


def measure(servers: list[Server], s: Server, url: str, script: Path, connections: int, seconds: float,
            cpu: int | None) -> dict[str, float]:
    """One wrk run against `s` alone on the server core, then a moment for it to finish what it still holds
    (a queued backlog, its log's commit) before the next server's turn stops it."""
    focus(servers, s)
    result = wrk(url, script, connections, seconds, cpu)
    time.sleep(SETTLE_S)
    return result


def check_answers(server: Server, name: str, bodies: dict[str, str]) -> None:
    """Every server must answer 200 with a prediction to the exact body wrk will send, before timing."""
    for proto, body in bodies.items():
        req = urllib.request.Request(server.infer_url(name, proto), data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                answer = json.loads(r.read())
                server.ok[proto] = r.status == 200 and ("predictions" in answer or "outputs" in answer)
                if not server.ok[proto]:
                    print(f"  {server.key} {proto}: 200 but no prediction: {json.dumps(answer)[:500]}")
        except urllib.error.HTTPError as exc:
            server.ok[proto] = False
            print(f"  {server.key} {proto}: HTTP {exc.code}: {exc.read()[:500].decode(errors='replace')}")
            if server.log is not None:
                print("  its output ends:\n" + server.log.read_text(errors="replace")[-1500:])
        except OSError as exc:
            server.ok[proto] = False
            print(f"  {server.key} {proto}: {exc}")


def metric(server: Server, name: str) -> float:
    """Sum of one Prometheus counter on the server's /metrics (0 when absent)."""
    try:
        with urllib.request.urlopen(server.url("/metrics"), timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return float("nan")
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def batching_args(override: str | None) -> tuple[list[str] | None, str]:
    """The adaptive batching flags of `mlops serve`, read from its --help at run time."""
    if override:
        return shlex.split(override), f"--batch-args {override}"
    out = subprocess.run([sys.executable, "-m", "mlops.cli", "serve", "--help"], cwd=ROOT, capture_output=True,
                         text=True).stdout
    flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", out))
    if {"--batch-max", "--batch-wait-ms"} <= flags:
        return DEFAULT_BATCH_ARGS, " ".join(DEFAULT_BATCH_ARGS)
    batchy = sorted(f for f in flags if "batch" in f and f != "--max-batch")
    seen = f" (it lists {', '.join(batchy)}: pass them with --batch-args)" if batchy else ""
    return None, f"`mlops serve --help` shows no adaptive batching flags (--batch-max, --batch-wait-ms){seen}"


# --------------------------------------------------------------------------- load


LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {{"requests": %d, "duration_us": %d, "p50": %.1f, "p75": %.1f, "p90": %.1f, '
    .. '"p99": %.1f, "non2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def wrk(url: str, script: Path, connections: int, seconds: float, cpu: int | None) -> dict[str, float]:
    cmd = pinned(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
                  "-s", str(script), url], cpu)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = re.search(r"^BENCH_JSON (.*)$", proc.stdout, re.M)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    r = json.loads(found.group(1))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", proc.stdout)  # the same count as r["non2xx"]
    return {"rps": float(rps.group(1)) if rps else r["requests"] / (r["duration_us"] / 1e6),
            "p50": r["p50"] / 1000, "p90": r["p90"] / 1000, "p99": r["p99"] / 1000, "requests": r["requests"],
            "non2xx": max(r["non2xx"], int(non2xx.group(1)) if non2xx else 0),
            "socket_errors": r["connect"] + r["read"] + r["write"] + r["timeout"]}


# --------------------------------------------------------------------------- report


def machine_line(server_cpu: int | None, client_cpu: int | None, cpus: list[int]) -> str:
    model = "?"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = found.group(1).strip() if found else model
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    pin = (f"servers on core {server_cpu}, wrk on core {client_cpu}" if server_cpu is not None
           else "NOT pinned (fewer than 2 usable cores or no taskset): servers and wrk share the cores")
    return f"{len(cpus)} usable cores of {os.cpu_count()} ({model}), load average {load}; {pin}"


VERSIONS = """
import contextlib, importlib.metadata as md, platform
got = []
for pkg in ("uvicorn", "uvloop", "httptools", "orjson", "starlette", "kserve", "litserve", "bentoml", "pyzmq",
            "onnxruntime"):
    with contextlib.suppress(md.PackageNotFoundError):
        got.append(f"{pkg} {md.version(pkg)}")
print(f"Python {platform.python_version()}, " + ", ".join(got))
"""


def versions(python: str = sys.executable) -> str:
    """The versions `python` imports (this interpreter's, or the --venv's)."""
    env_versions = subprocess.run([python, "-c", VERSIONS], capture_output=True, text=True, timeout=60).stdout.strip()
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    wrk_version = (out.stdout or out.stderr).split(" [")[0].strip()
    return f"{env_versions}, {wrk_version}"


def cell(result: dict[str, float] | None, what: str) -> str:
    if result is None:
        return "-"
    value = f"{result[what]:,.0f}" if what == "rps" else f"{result[what]:.2f}"
    bad = result["non2xx"] + result["socket_errors"]
    return f"{value} ⚠" if bad else value


def table(proto: str, servers: list[Server], results: dict[tuple[str, str, int], dict[str, float]]) -> list[str]:
    head = "| server | " + " | ".join(f"c={c} req/s | c={c} p99 ms" for c in CONCURRENCY) + " | errors |"
    lines = [head, "|" + "---|" * (2 + 2 * len(CONCURRENCY))]
    for s in servers:
        row, errors = [], []
        for c in CONCURRENCY:
            r = results.get((s.key, proto, c))
            row += [cell(r, "rps"), cell(r, "p99")]
            if r and r["non2xx"]:
                errors.append(f"c={c}: {r['non2xx']:.0f} non-2xx")
            if r and r["socket_errors"]:
                errors.append(f"c={c}: {r['socket_errors']:.0f} socket errors")
        if not s.ok.get(proto, False):
            errors.append("not measured: " + (s.note or "did not answer 200 to the request body"))
        lines.append(f"| {LABELS[s.key]} | " + " | ".join(row) + f" | {'; '.join(errors) or '0'} |")
    return lines


def ratio(a: dict[str, float] | None, b: dict[str, float] | None, what: str) -> float | None:
    if not a or not b or not b[what]:
        return None
    return a[what] / b[what]


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """One cell from its rounds: the median of each figure; errors summed (any round's count)."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["non2xx"] = sum(r["non2xx"] for r in runs)
    out["socket_errors"] = sum(r["socket_errors"] for r in runs)
    return out


def goals(proto: str, results: dict[tuple[str, str, int], dict[str, float]], batch_note: str,
          rounds: dict[tuple[str, str, int], list[dict[str, float]]]) -> list[str]:
    def get(key: str, c: int) -> dict[str, float] | None:
        return results.get((key, proto, c))

    def spread(a: tuple[str, int], b: tuple[str, int], what: str) -> str:
        """The same ratio round by round (each round's two runs were made one after the other)."""
        ours, theirs = (rounds.get((key, proto, c), []) for key, c in (a, b))
        if len(ours) != len(theirs):  # one of them not measured
            return ""
        each = [x for x in (ratio(ra, rb, what) for ra, rb in zip(ours, theirs, strict=True)) if x is not None]
        return f" [rounds {min(each):.2f}-{max(each):.2f}]" if len(each) > 1 else ""

    def shown(value: float | None, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    def line(text: str, value: float | None, goal: str, met: bool | None, fmt: str, why: str = "",
             each: str = "") -> str:
        verdict = "n/a" if value is None or met is None else ("MET" if met else "NOT MET")
        return f"- {text}: **{shown(value, fmt)}**{each} (goal {goal}) {verdict}{why}"

    tput = ratio(get(OURS, 8), get(STOCK, 8), "rps")
    p99 = ratio(get(OURS, 8), get(STOCK, 8), "p99")
    bare = ratio(get(OURS, 8), get(BARE, 8), "rps")
    batched = ratio(get(BATCHED, 32), get(OURS, 32), "rps")
    peers = {k: get(k, 8) for k in PEERS}
    missing = [LABELS[k] for k, r in peers.items() if not r]
    best = max((r["rps"] for r in peers.values() if r), default=0.0)
    ahead = ratio(get(OURS, 8), {"rps": best}, "rps")
    floor_p99 = ratio(get(BARE, 8), get(STOCK, 8), "p99")
    shadow = ratio(get(SHADOW, 8), get(OURS, 8), "p99")
    shadow = None if shadow is None else shadow - 1
    return [
        line("ours / KServe stock throughput at c=8", tput, ">= 3x", tput is not None and tput >= 3.0, ".2f",
             each=spread((OURS, 8), (STOCK, 8), "rps")),
        line("ours / KServe stock p99 at c=8", p99, "<= 0.3x", p99 is not None and p99 <= 0.3, ".2f",
             each=spread((OURS, 8), (STOCK, 8), "p99")),
        # the p99 goal's bound on this machine: the floor decodes, runs the model and answers, nothing more (no
        # validation, no log, no metrics), so a p99 ratio it cannot reach is out of reach of any server doing more
        f"  - the bare floor's own p99 / KServe stock's at c=8: **{shown(floor_p99, '.2f')}**"
        f"{spread((BARE, 8), (STOCK, 8), 'p99')} (the bound: the same ratio for a server that does less than ours)",
        line("ours / bare ASGI throughput at c=8", bare, ">= 1.2x", bare is not None and bare >= 1.2, ".2f",
             each=spread((OURS, 8), (BARE, 8), "rps")),
        line("ours / the best peer's throughput at c=8 (KServe stock, LitServe, BentoML)", ahead, "> 1x: ahead "
             "of every peer", None if missing else ahead is not None and ahead > 1, ".2f",
             f": not measured: {', '.join(missing)}" if missing else ""),
        line("batched / unbatched throughput at c=32", batched, ">= 1.5x", batched is not None and batched >= 1.5,
             ".2f", "" if batched is not None else f": {batch_note}", spread((BATCHED, 32), (OURS, 32), "rps")),
        line("shadow's p99 overhead at c=8", shadow, "<= +5 %", shadow is not None and shadow <= 0.05, "+.1%"),
    ]


# --------------------------------------------------------------------------- main


def pinned_cores() -> tuple[int | None, int | None, list[int]]:
    """(the servers' core, wrk's core, the usable cores): the first two when the machine has two and `taskset`,
    else None; this process then moves to wrk's core: it only waits on wrk, and must not take the servers'."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("taskset"):
        return None, None, cpus
    os.sched_setaffinity(0, {cpus[1]})
    return cpus[0], cpus[1], cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5, help="seconds per timed wrk run (default 5)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per server and protocol")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per server, protocol and concurrency, "
                        "interleaved; the table shows medians (default 3)")
    parser.add_argument("--bundle", help="bundle directory to serve (default: see the module doc)")
    parser.add_argument("--batch-args", help="adaptive batching flags of `mlops serve` (default: read --help)")
    parser.add_argument("--example-image", type=Path, help="the image file a request sends, for a bundle that "
                        "takes images (benchmarks/media.py passes one of its PNG files)")
    parser.add_argument("--venv", type=Path, metavar="PATH", help="run `mlops serve` and the bare floor on this "
                        "virtual environment's python (created from the serving image's requirements when absent)")
    parser.add_argument("--peers-venv", type=Path, default=PEERS_VENV, metavar="PATH", help="the environment "
                        "LitServe and BentoML run on (default .venv-peers, which `make bench-deps` creates)")
    parser.add_argument("--bare-asgi", metavar="BUNDLE", help=argparse.SUPPRESS)  # the floor's own process
    parser.add_argument("--kserve-stock", metavar="BUNDLE", help=argparse.SUPPRESS)  # stock KServe's process
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8080, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_asgi:
        run_bare(Path(args.bare_asgi), args.host, args.port)
        return
    if args.kserve_stock:
        run_kserve_stock(Path(args.kserve_stock), args.port)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks/serve.py needs wrk: `make bench-deps` (Debian: apt-get install wrk)")

    if args.rounds < 1:
        raise SystemExit(f"--rounds {args.rounds}: expected at least 1")
    server_cpu, client_cpu, cpus = pinned_cores()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        bundle, origin = find_bundle(args.bundle, tmp)
        name, bodies = request_bodies(bundle, args.example_image)
        batch, batch_note = batching_args(args.batch_args)
        env = os.environ | {"MLOPS_HOME": str(tmp / ".mlops"), "PYTHONUNBUFFERED": "1"}
        env.pop("MLOPS_SERVE_TOKEN", None)
        # the servers the image runs: on the --venv's python when given (mlops from this checkout: cwd=ROOT)
        served = str(image_venv(args.venv.absolute())) if args.venv else sys.executable
        if args.venv:  # the floor runs this file as a script: mlops from the checkout, as the image copies it
            env["PYTHONPATH"] = str(ROOT)
        ours = [served, "-m", "mlops.cli", "serve", str(bundle)]
        servers = [Server(OURS, [*ours, "--log", str(tmp / "ours.sqlite")])]
        if batch:
            servers.append(Server(BATCHED, [*ours, "--log", str(tmp / "batched.sqlite"), *batch]))
        servers += [Server(SHADOW, [*ours, "--log", str(tmp / "shadow.sqlite"), "--shadow", str(bundle)]),
                    Server(STOCK, [sys.executable, str(Path(__file__).resolve()), "--kserve-stock", str(bundle)]),
                    Server(KSERVE, [sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--runtime", "kserve"]),
                    Server(BARE, [served, str(Path(__file__).resolve()), "--bare-asgi", str(bundle)])]
        peer_python = args.peers_venv.absolute() / "bin" / "python"
        here = Path(__file__).resolve().parent
        peers = [Server(LITSERVE, [str(peer_python), str(here / "peers.py"), "litserve", str(bundle)],
                        route="/predict", ready="/health"),
                 Server(BENTOML, [str(peer_python), "-m", "bentoml", "serve", "peers:BentoPeer", "--host", "127.0.0.1"],
                        route="/predict", ready="/readyz", cwd=here,
                        env={"BENCH_BUNDLE": str(bundle), "BENTOML_DO_NOT_TRACK": "True"})]
        if peer_python.exists():
            servers += peers
        # the table's rows: a server that cannot run still has its row, saying why
        shown = servers if batch else [*servers[:1], Server(BATCHED, [], note=batch_note), *servers[1:]]
        if not peer_python.exists():
            shown = [*shown, *(Server(p.key, [], note=f"no {peer_python}: `make bench-deps` creates it")
                               for p in peers)]

        print(f"\nserving benchmark: {machine_line(server_cpu, client_cpu, cpus)}")
        if args.venv:
            print(f"`mlops serve` and the floor on {served}: {versions(served)}")
            print(f"KServe on {sys.executable}: {versions()}")
        else:
            print(f"{versions()}")
        if peer_python.exists():
            print(f"LitServe and BentoML on {peer_python}: {versions(str(peer_python))}")
        print(f"bundle: {origin}")
        print(f"load: wrk -t1 -c{{{','.join(map(str, CONCURRENCY))}}} -d{args.duration:g}s --latency, one "
              f"single-row body per protocol, after a {args.warmup:g}s warm-up; servers measured interleaved, "
              f"{args.rounds} round(s) each")
        print(f"V1 body: {bodies['v1'][:300]}")
        rounds: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        shadow_counts: dict[str, tuple[float, float]] = {}
        try:
            for s in servers:
                start(s, server_cpu, tmp, env)
            for s in servers:
                try:
                    wait_ready(s)
                    check_answers(s, name, bodies)
                except RuntimeError as exc:
                    s.note = f"failed to start: {str(exc).splitlines()[0]}"
                    print(f"  {s.key}: {exc}")
            for s in servers:
                if s.key == OURS and stack_of(s):
                    print(f"`mlops serve` stack: {stack_of(s)}")
            scripts = {}
            for proto, body in bodies.items():
                scripts[proto] = tmp / f"{proto}.lua"
                scripts[proto].write_text(LUA.format(body=body))
            for proto in PROTOCOLS:
                live = [s for s in servers if s.ok.get(proto)]
                for s in live:
                    measure(servers, s, s.infer_url(name, proto), scripts[proto], 8, args.warmup, client_cpu)
                focus(servers, None)
                before = {s.key: (metric(s, "mlops_shadow_rows_total"), metric(s, "mlops_shadow_dropped_total"))
                          for s in live if s.key == SHADOW}
                for c in CONCURRENCY:
                    for _ in range(args.rounds):
                        for s in live:
                            rounds.setdefault((s.key, proto, c), []).append(measure(
                                servers, s, s.infer_url(name, proto), scripts[proto], c, args.duration, client_cpu))
                focus(servers, None)
                for s in live:
                    if s.key == SHADOW:
                        time.sleep(1)  # let the shadow queue drain before counting
                        rows, dropped = metric(s, "mlops_shadow_rows_total"), metric(s, "mlops_shadow_dropped_total")
                        shadow_counts[proto] = (rows - before[s.key][0], dropped - before[s.key][1])
        finally:
            focus(servers, None)  # a stopped process would not act on SIGTERM
            for s in servers:
                stop(s)

        results = {key: median_run(runs) for key, runs in rounds.items()}
        for proto in PROTOCOLS:
            print(f"\n### {proto.upper()} (`POST {paths(name)[proto]}`, one row per request, median of "
                  f"{args.rounds} rounds)\n")
            print("\n".join(table(proto, shown, results)))
            print(f"\nGoals ({proto.upper()}):")
            print("\n".join(goals(proto, results, batch_note, rounds)))
            if proto in shadow_counts:
                rows, dropped = shadow_counts[proto]
                print(f"- shadow during the timed runs: {rows:,.0f} rows compared, {dropped:,.0f} requests dropped "
                      "(queue full)")
        print("\n⚠ = non-2xx responses or socket errors in that run (see the errors column). p99 from wrk's "
              "latency distribution; req/s from wrk's Requests/sec.")
        print(f"batching: {batch_note}")
        print(f"finished in {time.monotonic() - started:.0f}s; load average now "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
