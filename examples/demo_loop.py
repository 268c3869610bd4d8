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

With --log postgresql://USER@HOST:PORT/DATABASE --replicas N the loop runs as a team would run it on shared
infrastructure: N `mlops serve` replicas write one prediction log in PostgreSQL, production's requests (and their
ground truth) go to them in turn as a load balancer would send them, and the monitor and the retrain read that
log. The canary steps move traffic on the first replica (`--live-url`); the others follow the aliases, so every
replica answers with the new champion at the end. More than one replica needs such a shared log: a SQLite file is
one server's log.

    .venv/bin/python examples/demo_loop.py [--images] [--home DIR] [--port PORT] [--log URL] [--replicas N]
                                           [--json] [OVERRIDES...]

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
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
# (recipe, model name) of the tabular loop and of the image loop
TABULAR = ("recipes/quickstart_loop.yaml", "quickstart")
IMAGES = ("recipes/digits_loop.yaml", "digits-loop")
# the tabular drift: tumours measured about 25 % larger (what a recalibrated instrument might do)
DRIFTED = ("mean_radius", "mean_perimeter", "mean_area", "worst_radius", "worst_perimeter", "worst_area")
# the image drift: a new scanner, brighter and noisier
BRIGHTER, NOISE_SD = 70, 30.0
SHARED_LOGS = ("postgresql://", "postgres://")  # a prediction log several servers can write at once


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
    """Client threads replaying rows of the data set against the servers, each prediction followed by its
    ground truth (`POST /v1/feedback`). `send(n)` replays exactly n answered requests and returns, so each
    monitor run judges known windows; `start()` keeps traffic flowing until `close()` (for the shadow window
    and the canary steps, which watch live traffic).

    With several replicas every call goes to the next one in turn, as a round-robin load balancer would send
    it: a prediction and its feedback usually reach different replicas, which only a shared log can match."""

    def __init__(self, ports: list[int], model: str, rows: list[tuple[dict[str, Any], str]],
                 drifted: list[tuple[dict[str, Any], str]], threads: int = 2) -> None:
        self.ports, self.model, self.rows, self.drifted, self.n_threads = ports, model, rows, drifted, threads
        self.drift = False
        self.answered = 0
        self.served = dict.fromkeys(ports, 0)  # answered predictions by replica (its port)
        self.turn = 0
        self.errors: dict[int, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.quota: int | None = None
        self.threads: list[threading.Thread] = []

    def _row(self, rng: random.Random) -> tuple[dict[str, Any], str]:
        return rng.choice(self.drifted if self.drift else self.rows)

    def _next(self) -> int:
        """The port of the replica the next call goes to (round robin)."""
        with self.lock:
            port = self.ports[self.turn % len(self.ports)]
            self.turn += 1
            return port

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
            port = self._next()
            try:
                status, _ = call(port, "POST", f"/v1/models/{self.model}:predict", {"id": pid, "instances": [row]},
                                 {"X-Request-Key": pid})
                if status == 200:
                    feedback, _ = call(self._next(), "POST", "/v1/feedback", {"id": pid, "label": label})
                    if feedback != 200:  # ground truth lost: the monitor and the retrain would never see it
                        with self.lock:
                            self.errors[feedback] = self.errors.get(feedback, 0) + 1
            except OSError:
                status = 0
            with self.lock:
                if status == 200:
                    self.answered += 1
                    self.served[port] += 1
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


def digits_manifest() -> Path:
    """examples/digits/manifest.csv, the image loop's data (generated, never committed): written when missing,
    before the recipe that reads it is trained."""
    manifest = ROOT / "examples" / "digits" / "manifest.csv"
    if not manifest.is_file():
        sys.path.insert(0, str(ROOT / "examples"))
        from make_digits import write_digits  # an example script beside this one, not a package

        write_digits(manifest.parent)
    return manifest


def image_rows() -> tuple[Rows, Rows]:
    """The digits as PNG requests (with their `ink` metadata), and the same images as a brighter, noisier
    scanner would send them."""
    import base64
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    manifest = digits_manifest()
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


def redacted(url: str) -> str:
    """A log's URL without its password, for what the loop prints."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def log_overrides(log: str | None) -> list[str]:
    """The recipe overrides that make the monitor and the retrain read `log` (quoted: a URL may hold `=`, `?`)."""
    if log is None:
        return []
    quoted = "'" + log.replace("'", "\\'") + "'"  # Hydra: inside quotes only a quote needs its backslash
    return [f"monitor.log={quoted}", f"improve.refresh.log={quoted}"]


def start_replicas(model: str, ports: list[int], log: str | None, home: Path, env: dict[str, str],
                   servers: list[subprocess.Popen[bytes]]) -> None:
    """`mlops serve` once per port, all following the aliases and writing `log` (default: the workspace's), each
    printing to serve-<i>.out under `home`, added to `servers` as it starts (so the caller stops whatever did);
    returns once every one is ready."""
    for i, port in enumerate(ports):
        with open(home / f"serve-{i}.out", "wb") as out:
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "mlops.cli", "serve", f"{model}@champion", "--shadow", f"{model}@challenger",
                 "--ab", f"{model}@challenger:0", "--port", str(port), "--reload-interval", "2",
                 *(["--log", log] if log else [])],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + 180  # for all of them: they start together
    for i, (server, port) in enumerate(zip(servers, ports, strict=True)):
        while True:
            if server.poll() is not None:
                raise SystemExit(f"demo-loop: replica {i} exited:\n{(home / f'serve-{i}.out').read_text()[-3000:]}")
            try:
                if call(port, "GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"demo-loop: replica {i} did not become ready")
            time.sleep(0.3)
        print(f"   replica {i} serving on http://127.0.0.1:{port} (pid {server.pid})", flush=True)


def served_versions(ports: list[int], model: str, settle_s: float = 20) -> list[str | None]:
    """The version each replica answers with, once they agree (each follows the aliases on its own clock)."""
    deadline = time.monotonic() + settle_s
    while True:
        versions = []
        for port in ports:
            try:
                versions.append((call(port, "GET", f"/v2/models/{model}")[1].get("versions") or [None])[0])
            except OSError:
                versions.append(None)
        if len(set(versions)) == 1 or time.monotonic() > deadline:
            return versions
        time.sleep(0.5)


def monitored_rows(result: dict[str, Any]) -> int:
    """The model's log rows one `mlops monitor --json` read: its windows' rows and those waiting for the next."""
    return sum(int(w["rows"]) for w in result.get("windows", [])) + int(result.get("pending_rows") or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", action="store_true", help="the image loop: the digits CNN (recipes/digits_loop.yaml)")
    parser.add_argument("--home", type=Path, default=None,
                        help="MLOPS_HOME of the loop (wiped first; default .mlops/demo-loop or .mlops/demo-loop-images)")
    parser.add_argument("--port", type=int, default=0,
                        help="the first replica's port, the next ones follow it (default: free ones)")
    parser.add_argument("--log", metavar="URL", help="the prediction log every replica writes and the monitor and the "
                        "retrain read: postgresql://USER@HOST:PORT/DATABASE, or a SQLite PATH for one replica "
                        "(default: the workspace's SQLite log). A password belongs in PGPASSWORD or ~/.pgpass, not "
                        "in the URL: the runs record the recipe's log setting")
    parser.add_argument("--replicas", type=int, default=1, metavar="N",
                        help="mlops serve replicas on the same log, production's traffic spread over them in turn "
                             "(default 1; more needs --log postgresql://...)")
    parser.add_argument("--json", action="store_true", help="last line of stdout: a JSON summary")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every step, e.g. trainer.max_epochs=5")
    args = parser.parse_args()
    if args.replicas < 1:
        parser.error(f"--replicas {args.replicas}: expected 1 or more")
    shared = bool(args.log) and args.log.startswith(SHARED_LOGS)
    if args.replicas > 1 and not shared:
        parser.error(f"--replicas {args.replicas} needs a prediction log every replica can write: give --log "
                     "postgresql://USER@HOST:PORT/DATABASE (a SQLite file is one server's log)")
    # a SQLite path is taken from here: every step runs in the repository's root
    log = args.log if args.log is None or shared else str(Path(args.log).resolve())
    recipe_file, model = IMAGES if args.images else TABULAR
    home = (args.home or ROOT / ".mlops" / ("demo-loop-images" if args.images else "demo-loop")).resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_", "PREFECT_API_URL"))}
    env |= {"MLOPS_HOME": str(home), "PYTHONUNBUFFERED": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "240"}
    env.setdefault("PREFECT_HOME", str(home / "prefect"))
    started = time.monotonic()
    summary: dict[str, Any] = {"log": redacted(log) if log else "the workspace's SQLite log",
                               "replicas": args.replicas}

    say("1. train the champion")
    if args.images:
        digits_manifest()
    recipe = [recipe_file, *args.overrides, *log_overrides(log)]
    first = mlops(["run", *recipe], env)
    summary["champion_before"] = first["model_version"]

    say("2. serve it, following the aliases (champion answers; challenger shadows and takes canary traffic)"
        + (f": {args.replicas} replicas writing {redacted(str(log))}" if args.replicas > 1 else ""))
    ports = [args.port + i for i in range(args.replicas)] if args.port else [free_port() for _ in range(args.replicas)]
    servers: list[subprocess.Popen[bytes]] = []
    production: Production | None = None
    try:
        start_replicas(model, ports, log, home, env, servers)

        say("3. production traffic as trained, with ground truth; then the monitor")
        rows, drifted = image_rows() if args.images else tabular_rows()
        window = 500  # monitor.window.size of the recipes
        production = Production(ports, model, rows, drifted)
        production.send(2 * window, seed=1)  # two windows
        sent = dict(production.served)
        quiet = mlops(["monitor", *recipe], env)
        summary["alerts_before_drift"] = quiet.get("fired", [])
        # what the monitor read against what each replica answered: with a shared log, every replica's rows
        summary["monitor_reads"] = [{"rows": monitored_rows(quiet), "served_by_replica": list(sent.values())}]

        say("4. production drifts (" + ("a brighter, noisier scanner" if args.images else "tumours measured 25 % "
            "larger") + "); the monitor again")
        production.drift = True
        production.send(3 * window, seed=2)  # three windows: the alert needs two in a row
        now = dict(production.served)
        fired = mlops(["monitor", *recipe], env)
        summary["monitor_reads"].append({"rows": monitored_rows(fired),
                                         "served_by_replica": [now[p] - sent[p] for p in ports]})
        summary["alerts_after_drift"] = fired.get("fired", [])
        summary["drifted_features"] = sorted({f for w in fired.get("windows", []) for f in w["drifted_features"]})
        summary["dashboard"] = fired.get("dashboard")
        summary["evidently_embedding"] = (fired.get("evidently") or {}).get("embedding")

        say("5. retrain: answers the alert, refreshes the data, gates, shadow and canary on the live server")
        production.start(seed=3)  # live (drifted) traffic for the shadow window and the canary steps
        # the canary moves traffic on the first replica; the others follow the aliases (within 2 s)
        retrained = mlops(["retrain", *recipe, "--reason", "auto", "--live-url", f"http://127.0.0.1:{ports[0]}"],
                          env, check=False)
        summary["retrain"] = {k: retrained.get(k) for k in ("outcome", "trigger", "version", "message", "exit")}

        say("6. the same server processes answer with the new champion")
        time.sleep(3)
        versions = served_versions(ports, model)
        summary["served_version"] = versions[0]
        summary["served_versions"] = versions
        summary["server_pid_unchanged"] = all(s.poll() is None for s in servers)
        summary["served_by_replica"] = [production.served[p] for p in ports]
        summary["traffic_errors"] = dict(production.errors)
    finally:
        if production is not None:
            production.close()
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
        for server in servers:
            server.wait(timeout=30)
    summary["seconds"] = round(time.monotonic() - started, 1)
    versions = summary["served_versions"]
    promoted = summary["served_version"] not in (None, summary["champion_before"]) and len(set(versions)) == 1
    say(f"{'DONE' if promoted else 'NOT PROMOTED'} in {summary['seconds']} s: champion "
        f"{summary['champion_before']} -> {summary['served_version']}; alerts {summary['alerts_after_drift']}; "
        f"retrain {summary['retrain'].get('outcome')}")
    if args.replicas > 1:
        say("rows each replica answered: " + ", ".join(f"replica {i} (port {p}) {n}" for i, (p, n) in
                                                       enumerate(zip(ports, summary["served_by_replica"],
                                                                     strict=True)))
            + f"; all on {summary['log']}; now serving {versions}")
    if args.json:
        print(json.dumps(summary))
    return 0 if promoted else 1


if __name__ == "__main__":
    raise SystemExit(main())
