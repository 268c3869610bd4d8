"""The whole loop on one machine, with no human in it (`make demo-loop`):

1. train the quickstart model: it becomes champion (`mlops run`);
2. serve it as production would run it (`mlops serve quickstart@champion --shadow quickstart@challenger
   --ab quickstart@challenger:0`): the arms follow their aliases, so nothing restarts later;
3. replay production traffic from the breast-cancer data, each answer followed by its ground truth
   (`POST /v1/feedback`): first as the model was trained, then drifted (tumours measured larger);
4. `mlops monitor`: quiet on the first window, the drift alert fires on the drifted one;
5. `mlops retrain --reason auto --live-url ...`: answers that alert; refreshes the data (reference plus the
   labelled production rows), trains, gates the challenger against the champion on the same held-out
   rows, shadows it on live traffic, walks the canary steps on the live server, promotes it;
6. checks that the same server process now answers with the new champion.

With --images (`make demo-loop-images`) the loop runs on the digits CNN (recipes/digits_loop.yaml): production
sends PNGs, and drifts as a new scanner would (brighter, noisier images); the monitor fires on the images'
embedding and descriptors, and the retrain learns from the production images the log kept.

    .venv/bin/python examples/demo_loop.py [--images] [--home DIR] [--port PORT] [--json] [OVERRIDES...]

Everything goes under --home (default .mlops/demo-loop), so the loop never touches your own store. The last
line with --json is a summary the e2e test reads.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# (recipe, model name) of the tabular loop and of the image loop
TABULAR = ("recipes/quickstart_loop.yaml", "quickstart")
IMAGES = ("recipes/digits_loop.yaml", "digits-loop")
# the tabular drift: tumours measured about 25 % larger (what a recalibrated instrument might do)
DRIFTED = ("mean_radius", "mean_perimeter", "mean_area", "worst_radius", "worst_perimeter", "worst_area")
# the image drift: a new scanner, brighter and noisier
BRIGHTER, NOISE_SD = 70, 30.0


def say(text: str) -> None:
    print(f"\n== demo-loop: {text}", flush=True)


def mlops(args: list[str], env: dict[str, str], check: bool = True) -> dict[str, Any]:
    """Run `mlops ARGS --json` as a user would; its output streams through, its JSON summary is returned."""
    proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", *args, "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        print(f"   {line}", end="", flush=True)
    code = proc.wait()
    if check and code != 0:
        raise SystemExit(f"demo-loop: `mlops {' '.join(args)}` exited {code}")
    for line in reversed(lines):
        if line.startswith("{"):
            return dict(json.loads(line)) | {"exit": code}
    return {"exit": code}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, None if body is None else json.dumps(body),
                     {"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


class Production:
    """Client threads replaying rows of the data set against the server, each prediction followed by its
    ground truth (`POST /v1/feedback`). `send(n)` replays exactly n answered requests and returns, so each
    monitor run judges known windows; `start()` keeps traffic flowing until `close()` (for the shadow window
    and the canary steps, which watch live traffic)."""

    def __init__(self, port: int, model: str, rows: list[tuple[dict[str, Any], str]],
                 drifted: list[tuple[dict[str, Any], str]], threads: int = 2) -> None:
        self.port, self.model, self.rows, self.drifted, self.n_threads = port, model, rows, drifted, threads
        self.drift = False
        self.answered = 0
        self.errors: dict[int, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.quota: int | None = None
        self.threads: list[threading.Thread] = []

    def _row(self, rng: random.Random) -> tuple[dict[str, Any], str]:
        return rng.choice(self.drifted if self.drift else self.rows)

    def _take(self) -> bool:
        with self.lock:
            if self.stop.is_set() or (self.quota is not None and self.quota <= 0):
                return False
            if self.quota is not None:
                self.quota -= 1
            return True

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while self._take():
            row, label = self._row(rng)
            pid = uuid.uuid4().hex
            try:
                status, _ = call(self.port, "POST", f"/v1/models/{self.model}:predict", {"id": pid, "instances": [row]},
                                 {"X-Request-Key": pid})
                if status == 200:
                    call(self.port, "POST", "/v1/feedback", {"id": pid, "label": label})
            except OSError:
                status = 0
            with self.lock:
                if status == 200:
                    self.answered += 1
                else:
                    self.errors[status] = self.errors.get(status, 0) + 1
                    if self.quota is not None:
                        self.quota += 1  # a failed request does not count towards the n answered
            time.sleep(0.002)

    def _spawn(self, seed: int) -> None:
        self.stop.clear()
        self.threads = [threading.Thread(target=self._run, args=(seed + i,), daemon=True)
                        for i in range(self.n_threads)]
        for t in self.threads:
            t.start()

    def send(self, n: int, seed: int) -> None:
        self.quota = n
        self._spawn(seed)
        for t in self.threads:
            t.join()

    def start(self, seed: int) -> None:
        self.quota = None
        self._spawn(seed)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


Rows = list[tuple[dict[str, Any], str]]


def tabular_rows() -> tuple[Rows, Rows]:
    """The breast-cancer rows as requests, and the same rows drifted."""
    from mlops.data.sources import load_builtin

    frame = load_builtin("breast_cancer")
    target = frame.pop("target").astype(str)
    rows = [(dict(zip(frame.columns, map(float, values), strict=True)), label)
            for values, label in zip(frame.itertuples(index=False), target, strict=True)]
    drifted = [({k: v * 1.25 if k in DRIFTED else v for k, v in row.items()}, label) for row, label in rows]
    return rows, drifted


def image_rows() -> tuple[Rows, Rows]:
    """The digits as PNG requests (with their `ink` metadata), and the same images as a brighter, noisier
    scanner would send them."""
    import base64
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    sys.path.insert(0, str(ROOT / "examples"))
    from make_digits import write_digits

    manifest = ROOT / "examples" / "digits" / "manifest.csv"
    if not manifest.is_file():
        write_digits(manifest.parent)
    frame = pd.read_csv(manifest)
    rng = np.random.default_rng(0)
    rows, drifted = [], []
    for path, label, ink in zip(frame["image"], frame["label"], frame["ink"], strict=True):
        raw = (manifest.parent / path).read_bytes()
        grey = np.asarray(Image.open(io.BytesIO(raw)).convert("L"), dtype=np.float64)
        shifted = np.clip(grey + BRIGHTER + rng.normal(0, NOISE_SD, grey.shape), 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(shifted, mode="L").save(out, format="PNG")
        for target, data in ((rows, raw), (drifted, out.getvalue())):
            target.append(({"image": {"b64": base64.b64encode(data).decode()}, "ink": float(ink)}, str(label)))
    return rows, drifted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", action="store_true", help="the image loop: the digits CNN (recipes/digits_loop.yaml)")
    parser.add_argument("--home", type=Path, default=None,
                        help="MLOPS_HOME of the loop (wiped first; default .mlops/demo-loop or .mlops/demo-loop-images)")
    parser.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")
    parser.add_argument("--json", action="store_true", help="last line of stdout: a JSON summary")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every step, e.g. trainer.max_epochs=5")
    args = parser.parse_args()
    recipe_file, model = IMAGES if args.images else TABULAR
    home = (args.home or ROOT / ".mlops" / ("demo-loop-images" if args.images else "demo-loop")).resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_", "PREFECT_API_URL"))}
    env |= {"MLOPS_HOME": str(home), "PYTHONUNBUFFERED": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "240"}
    env.setdefault("PREFECT_HOME", str(home / "prefect"))
    started = time.monotonic()
    summary: dict[str, Any] = {}

    say("1. train the champion")
    recipe = [recipe_file, *args.overrides]
    first = mlops(["run", *recipe], env)
    summary["champion_before"] = first["model_version"]

    say("2. serve it, following the aliases (champion answers; challenger shadows and takes canary traffic)")
    port = args.port or free_port()
    log = open(home / "serve.out", "wb")
    server = subprocess.Popen([sys.executable, "-m", "mlops.cli", "serve", f"{model}@champion", "--shadow",
                               f"{model}@challenger", "--ab", f"{model}@challenger:0", "--port", str(port),
                               "--reload-interval", "2"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    production: Production | None = None
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise SystemExit(f"demo-loop: the server exited:\n{(home / 'serve.out').read_text()[-3000:]}")
            try:
                if call(port, "GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("demo-loop: the server did not become ready")
            time.sleep(0.3)
        print(f"   serving on http://127.0.0.1:{port} (pid {server.pid})", flush=True)

        say("3. production traffic as trained, with ground truth; then the monitor")
        rows, drifted = image_rows() if args.images else tabular_rows()
        window = 500  # monitor.window.size of the recipes
        production = Production(port, model, rows, drifted)
        production.send(2 * window, seed=1)  # two windows
        quiet = mlops(["monitor", *recipe], env)
        summary["alerts_before_drift"] = quiet.get("fired", [])

        say("4. production drifts (" + ("a brighter, noisier scanner" if args.images else "tumours measured 25 % "
            "larger") + "); the monitor again")
        production.drift = True
        production.send(3 * window, seed=2)  # three windows: the alert needs two in a row
        fired = mlops(["monitor", *recipe], env)
        summary["alerts_after_drift"] = fired.get("fired", [])
        summary["drifted_features"] = sorted({f for w in fired.get("windows", []) for f in w["drifted_features"]})
        summary["dashboard"] = fired.get("dashboard")
        summary["evidently_embedding"] = (fired.get("evidently") or {}).get("embedding")

        say("5. retrain: answers the alert, refreshes the data, gates, shadow and canary on the live server")
        production.start(seed=3)  # live (drifted) traffic for the shadow window and the canary steps
        retrained = mlops(["retrain", *recipe, "--reason", "auto", "--live-url", f"http://127.0.0.1:{port}"], env,
                          check=False)
        summary["retrain"] = {k: retrained.get(k) for k in ("outcome", "trigger", "version", "message", "exit")}

        say("6. the same server process answers with the new champion")
        time.sleep(3)
        status, meta = call(port, "GET", f"/v2/models/{model}")
        summary["served_version"] = (meta.get("versions") or [None])[0]
        summary["server_pid_unchanged"] = server.poll() is None
        summary["traffic_errors"] = dict(production.errors)
    finally:
        if production is not None:
            production.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    summary["seconds"] = round(time.monotonic() - started, 1)
    promoted = summary["served_version"] not in (None, summary["champion_before"])
    say(f"{'DONE' if promoted else 'NOT PROMOTED'} in {summary['seconds']} s: champion "
        f"{summary['champion_before']} -> {summary['served_version']}; alerts {summary['alerts_after_drift']}; "
        f"retrain {summary['retrain'].get('outcome')}")
    if args.json:
        print(json.dumps(summary))
    return 0 if promoted else 1


if __name__ == "__main__":
    raise SystemExit(main())
