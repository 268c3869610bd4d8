"""Acknowledged rows/s of the prediction log's stores, at 8 submitting threads: SQLite, PostgreSQL and a Redis
stream, in one run.

    .venv/bin/python benchmarks/predlog_stores.py [--duration 5] [--rounds 3] [--url postgresql://...]
                                                  [--redis redis://127.0.0.1:6379/0]

Each of 8 threads acts as a request: it submits one prediction row (`submit`, as the server's log thread takes
it) and waits for its future, i.e. for the commit that holds it, then submits the next. Group commit lets
waiting rows share a commit. Variants, measured interleaved round after round so background load hits them
alike:

* sqlite NORMAL: the embedded default (survives a process crash; no fsync per commit);
* sqlite FULL: `MLOPS_LOG_SYNC=FULL`, an fsync per group (survives power loss: PostgreSQL's durability);
* postgresql: one writer (one replica), synchronous_commit on (a WAL flush per group);
* postgresql x2: two writers on the same database, 4 threads each (two replicas sharing the log);
* redis: one writer appending to a stream (XADD pipelines; acknowledged when Redis answered, durable as Redis's
  appendfsync makes it), which `mlops collect` lands in a store; the stream is deleted after each round.

`mlops serve` with SQLite NORMAL commits on its event loop instead (LoopCommits), which skips the thread hand-off
measured here; this compares the stores through the same writer path. Needs PostgreSQL (default: a throwaway
database on 127.0.0.1:5432, user postgres) and psycopg2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlops.core.predlog import prediction_rows  # noqa: E402
from mlops.core.predlog_store import open_log  # noqa: E402

THREADS = 8
INPUTS = {"age": 41.0, "income": 50.0, "city": "a"}
OUTPUTS = {"label": "yes", "probabilities": [0.3, 0.7]}


def measure(targets: list[str | Path], duration: float) -> float:
    """Rows/s acknowledged by THREADS threads spread over one writer per target."""
    logs = [open_log(t) for t in targets]
    stop = time.perf_counter() + duration
    counts = [0] * THREADS

    def client(k: int) -> None:
        log = logs[k % len(logs)]
        n = 0
        while time.perf_counter() < stop:
            log.submit("predictions", prediction_rows([f"{k}-{n}"], "toy", "1", "champion", [INPUTS], [OUTPUTS],
                                                      0.4)).result(timeout=60)
            n += 1
        counts[k] = n

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for log in logs:
        log.close()
    return sum(counts) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="an empty PostgreSQL database to write (default: a throwaway one)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="a Redis server for the stream")
    args = parser.parse_args()
    import psycopg2
    import redis

    admin: Any = None
    url = args.url
    if url is None:
        admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        admin.autocommit = True
        name = f"bench_predlog_{uuid.uuid4().hex[:8]}"
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    results: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for variant, sync, targets in (
                        ("sqlite NORMAL", "NORMAL", [Path(tmp) / f"normal-{r}.sqlite"]),
                        ("sqlite FULL", "FULL", [Path(tmp) / f"full-{r}.sqlite"]),
                        ("postgresql", None, [url]),
                        ("postgresql x2", None, [url, url]),
                        ("redis", None, [f"{args.redis}?stream=bench:{uuid.uuid4().hex[:8]}"])):
                    if sync:
                        os.environ["MLOPS_LOG_SYNC"] = sync
                    results.setdefault(variant, []).append(measure(targets, args.duration))
                    os.environ.pop("MLOPS_LOG_SYNC", None)
                    if variant == "redis":
                        redis.Redis.from_url(args.redis).delete(str(targets[0]).split("stream=")[1])
    finally:
        if admin is not None:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()
    print(f"{THREADS} threads, {args.duration:g} s x {args.rounds} rounds, interleaved; acknowledged rows/s")
    print(f"{'store':<16}{'median':>10}{'min':>10}{'max':>10}")
    for variant, values in results.items():
        print(f"{variant:<16}{statistics.median(values):>10.0f}{min(values):>10.0f}{max(values):>10.0f}")


if __name__ == "__main__":
    main()
