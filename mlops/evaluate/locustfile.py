"""The Locust side of a load test (`mlops.evaluate.loadtest`), run as its own process:

    python -m mlops.evaluate.locustfile JOB.json

Locust patches the standard library with gevent when it is imported, so it never runs inside the mlops process
(or Prefect's, or a test's): this module imports it inside `main` only. The job file says what to send and for
how long; what comes back is one JSON file of raw samples (end time, latency, error), summarised by the parent.
Every request is timed by Locust's own event hook, whatever its outcome: a status >= 400 or a refused connection
is a failure with its message.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    # first: gevent's monkey patching must come before anything imports socket or ssl through another path
    import gevent
    from locust import FastHttpUser, constant, constant_throughput, task
    from locust.env import Environment

    job: dict[str, Any] = json.loads(Path(argv[1]).read_text())
    bodies: list[str] = job["bodies"]
    headers = {"content-type": "application/json"} | job.get("headers", {})
    users: int = job["users"]
    rps: float | None = job.get("rps")
    sent = [0]

    class Client(FastHttpUser):  # type: ignore[misc]
        host = job["host"]
        wait_time = constant_throughput(rps / users) if rps else constant(0)
        network_timeout = job["timeout_s"]
        connection_timeout = job["timeout_s"]

        @task
        def predict(self) -> None:
            body = bodies[sent[0] % len(bodies)]
            sent[0] += 1
            self.client.post(job["path"], data=body, headers=headers, name="predict")

    samples: list[tuple[float, float, str | None]] = []

    def on_request(response_time: float, exception: BaseException | None = None, **_: Any) -> None:
        samples.append((time.time(), float(response_time), None if exception is None else _why(exception)))

    env = Environment(user_classes=[Client])
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=job.get("spawn_rate") or users)
    spawn_deadline = time.monotonic() + job["timeout_s"]
    while runner.user_count < users and time.monotonic() < spawn_deadline:
        gevent.sleep(0.05)
    gevent.sleep(job["warmup_s"])
    start = time.time()
    gevent.sleep(job["duration_s"])
    end = time.time()
    runner.quit()
    Path(job["out"]).write_text(json.dumps({"start": start, "end": end, "users": runner.user_count or users,
                                            "samples": samples}))
    return 0


def _why(exc: BaseException) -> str:
    """A failure in a few words, so that many of the same kind count as one: `HTTP 503`, `ConnectionRefusedError`."""
    status = getattr(exc, "code", None)  # locust's LocustBadStatusCode(url, code=...)
    if isinstance(status, int):
        return f"HTTP {status}"
    text = str(exc)
    return type(exc).__name__ + (f": {text[:80]}" if text else "")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
