"""What bounding the prediction log's WAL costs the requests: `mlops serve` with and without the bound, in one run.

    .venv/bin/python benchmarks/predlog.py [--duration 10] [--rounds 3] [--bundle DIR]

The same bundle is served three times, each `mlops serve` with its own log and its own `monitor.log_limits`
written into a copy of the bundle (the server follows the bundle's), retention off in all three:

* unbounded: no WAL bound, no retention: passive checkpoints only (every server before the bound);
* WAL 16 MB: a rewind (a RESTART checkpoint; a TRUNCATE one before 2026-12-05) each time the WAL holds more
  than 16 MB, no retention;
* WAL 4 MB: four times tighter (four times more rewinds, each about as long);
* WAL 64 MB (the default), the log thread's checkpoints every 20 ms (the product's `CHECKPOINT_EVERY_S`) against
  the same every 0.1 s (before 2026-12-06; that server's `mlops.core.predlog.CHECKPOINT_EVERY_S` set by a
  `sitecustomize` on its PYTHONPATH): a checkpoint ends with an fsync of what it copied, and a large one stalls the
  event loop's own commits.

Retention is not measured here: its pass runs once a minute (RETENTION_EVERY_S), longer than these runs;
tests/integration/test_predlog_soak.py runs it under load.

The default bound (64 MB) rewinds every 64 MB of WAL: at the 28 MB/s a 2,641 requests/s load wrote, every
2.3 s. A short run on a small machine writes far less, so the bounds here are tighter, to see enough
rewinds; their cost per rewind is what carries over (`mlops_prediction_log_wal_truncate_seconds_total`
/ `..._truncations_total`, names kept from the TRUNCATE days: how long the write lock was held, which every
request committing meanwhile waits).

Each server runs pinned to one core, wrk (`make bench-deps`) on another: `wrk -t1 -c8`, one single-row V1 body,
after a warm-up; the servers are measured interleaved, round after round, so that background load hits them
alike. A sampler reads the WAL's size every 20 ms during each run. Reports per variant requests/s, p50 and p99
(median over the rounds, and the worst round's p99), the WAL's peak, its truncations and their mean duration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import (  # noqa: E402 - the serving benchmark's server and load helpers, shared
    LUA,
    Server,
    check_answers,
    find_bundle,
    machine_line,
    paths,
    pinned_cores,
    request_bodies,
    start,
    stop,
    versions,
    wait_ready,
    wrk,
)

MB = 1_000_000
NO_RETENTION = {"max_age": None, "max_bytes": None}
VARIANTS: dict[str, dict[str, Any]] = {
    "unbounded": {"wal_max_bytes": None, "retention": NO_RETENTION},
    "WAL 16 MB": {"wal_max_bytes": 16 * MB, "retention": NO_RETENTION},
    "WAL 4 MB": {"wal_max_bytes": 4 * MB, "retention": NO_RETENTION},
    "WAL 64 MB, checkpoints every 20 ms": {"wal_max_bytes": 64 * MB, "retention": NO_RETENTION},
    "WAL 64 MB, checkpoints every 0.1 s": {"wal_max_bytes": 64 * MB, "retention": NO_RETENTION,
                                           "checkpoint_every_s": 0.1},
}


def truncations(server: Server) -> tuple[float, float, float]:
    """(done, busy, seconds) of the server's WAL truncations, from its /metrics."""
    with urllib.request.urlopen(server.url("/metrics"), timeout=5) as r:
        text = r.read().decode()

    def value(pattern: str) -> float:
        found = re.search(rf"^{pattern} (\S+)$", text, re.M)
        return float(found.group(1)) if found else float("nan")

    return (value(r'mlops_prediction_log_wal_truncations_total\{[^}]*outcome="done"\}'),
            value(r'mlops_prediction_log_wal_truncations_total\{[^}]*outcome="busy"\}'),
            value(r"mlops_prediction_log_wal_truncate_seconds_total\{[^}]*\}"))


CHECKPOINT_MARK = "benchmark: CHECKPOINT_EVERY_S="


def checkpoint_env(variant: dict[str, Any], site: Path) -> dict[str, str]:
    """The environment that gives a server the variant's checkpoint interval, if it has one of its own."""
    every = variant.get("checkpoint_every_s")
    if every is None:
        return {}
    site.mkdir(parents=True)
    # it says so in the server's output, which main() checks: a sitecustomize that failed would only warn
    (site / "sitecustomize.py").write_text(
        f"import sys\nimport mlops.core.predlog\nmlops.core.predlog.CHECKPOINT_EVERY_S = {every!r}\n"
        f"print('{CHECKPOINT_MARK}{every!r}', file=sys.stderr, flush=True)\n")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}


def bundle_with(bundle: Path, limits: dict[str, Any], dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    meta = json.loads((dest / "bundle.json").read_text())
    (dest / "bundle.json").write_text(json.dumps(meta | {"log_limits": limits}, indent=2))
    return dest


class WalSampler:
    """The WAL's peak size while a run goes on."""

    def __init__(self, log: Path) -> None:
        self.wal = log.with_name(log.name + "-wal")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        try:
            return self.wal.stat().st_size
        except FileNotFoundError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._size())

    def __enter__(self) -> WalSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds per timed wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per variant, interleaved (default 3)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--bundle", help="bundle directory to serve (default: as benchmarks/serve.py finds one)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks/predlog.py needs wrk: `make bench-deps` (Debian: apt-get install wrk)")
    server_cpu, client_cpu, cpus = pinned_cores()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-predlog-") as tmp_name:
        tmp = Path(tmp_name)
        bundle, origin = find_bundle(args.bundle, tmp)
        name, bodies = request_bodies(bundle)
        script = tmp / "v1.lua"
        script.write_text(LUA.format(body=bodies["v1"]))
        env = os.environ | {"MLOPS_HOME": str(tmp / ".mlops"), "PYTHONUNBUFFERED": "1"}
        env.pop("MLOPS_SERVE_TOKEN", None)
        servers, logs = [], {}
        for i, (key, variant) in enumerate(VARIANTS.items()):
            logs[key] = tmp / f"log{i}.sqlite"
            limits = {k: v for k, v in variant.items() if k != "checkpoint_every_s"}
            served = bundle_with(bundle, limits, tmp / f"bundle{i}")
            servers.append(Server(key, [sys.executable, "-m", "mlops.cli", "serve", str(served), "--log",
                                        str(logs[key])], env=checkpoint_env(variant, tmp / f"site{i}")))
        print(f"\nprediction log bound benchmark: {machine_line(server_cpu, client_cpu, cpus)}")
        print(versions())
        print(f"bundle: {origin}")
        print(f"load: wrk -t1 -c{args.connections} -d{args.duration:g}s --latency, V1 body {bodies['v1'][:200]}; "
              f"{args.rounds} rounds, variants interleaved")
        results: dict[str, list[dict[str, float]]] = {key: [] for key in VARIANTS}
        walls: dict[str, list[WalSampler]] = {key: [] for key in VARIANTS}
        try:
            for s in servers:
                start(s, server_cpu, tmp, env)
            for s in servers:
                wait_ready(s)
                check_answers(s, name, {"v1": bodies["v1"]})
                if not s.ok.get("v1"):
                    raise SystemExit(f"{s.key} does not answer: see {s.log}")
                every = VARIANTS[s.key].get("checkpoint_every_s")
                if every is not None and f"{CHECKPOINT_MARK}{every!r}" not in s.log.read_text():  # type: ignore[union-attr]
                    raise SystemExit(f"{s.key}: the server did not take its checkpoint interval: see {s.log}")
                wrk(s.url(paths(name)["v1"]), script, args.connections, args.warmup, client_cpu)
            for _ in range(args.rounds):
                for s in servers:
                    with WalSampler(logs[s.key]) as sampler:
                        results[s.key].append(wrk(s.url(paths(name)["v1"]), script, args.connections, args.duration,
                                                  client_cpu))
                    walls[s.key].append(sampler)
            counts = {s.key: truncations(s) for s in servers}
        finally:
            for s in servers:
                stop(s)

        print("\n| variant | req/s | p50 ms | p99 ms (median of rounds) | worst p99 ms | errors | WAL peak MB "
              "| truncations (busy) | ms per truncation |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key in VARIANTS:
            runs, samplers = results[key], walls[key]
            done, busy, seconds = counts[key]
            print(f"| {key} | {statistics.median(r['rps'] for r in runs):,.0f} "
                  f"| {statistics.median(r['p50'] for r in runs):.2f} | {statistics.median(r['p99'] for r in runs):.2f} "
                  f"| {max(r['p99'] for r in runs):.2f} | {sum(r['non2xx'] + r['socket_errors'] for r in runs):.0f} "
                  f"| {max(w.peak for w in samplers) / MB:.1f} | {done:.0f} ({busy:.0f}) "
                  f"| {seconds / done * 1000 if done else float('nan'):.1f} |")
        base = statistics.median(r["p99"] for r in results["unbounded"])
        for key in VARIANTS:
            if key == "unbounded" or "checkpoint_every_s" in VARIANTS[key]:  # the 0.1 s one: compared below
                continue
            p99 = statistics.median(r["p99"] for r in results[key])
            print(f"- {key}: p99 {p99:.2f} ms vs {base:.2f} ms unbounded ({(p99 / base - 1) * 100:+.0f} %)")
        often, seldom = (statistics.median(r["p99"] for r in results[key]) for key in
                         ("WAL 64 MB, checkpoints every 20 ms", "WAL 64 MB, checkpoints every 0.1 s"))
        print(f"- checkpoints every 20 ms vs every 0.1 s (WAL 64 MB): p99 {often:.2f} ms vs {seldom:.2f} ms "
              f"({often / seldom:.2f}x)")
        print(f"finished in {time.monotonic() - started:.0f}s; load average now "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
