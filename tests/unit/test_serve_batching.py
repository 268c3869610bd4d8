"""Adaptive batching through the real app over real bundles: same answers as unbatched, batches that form
under concurrency and respect their limits, no window added to a lone request, errors and cancellations
confined to their batch, A/B arms batched apart, the batch-size histogram, and the `mlops serve` flags."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlops.cli import build_parser
from mlops.core.errors import MlopsError
from mlops.core.predlog import SHADOW, PredictionLog, read_predictions
from mlops.core.refs import CHALLENGER
from mlops.package.predictor import Prediction, Predictor, RequestError
from mlops.serve.app import Server
from mlops.serve.batching import MicroBatcher
from mlops.serve.routing import Arm, assign_arm
from mlops.serve.run import ServeOptions, build_server, serve_with_kserve
from tests.conftest import ROOT
from tests.serve_fixtures import build_bundle, training_frame

OTHER_SEED = 5  # weights that disagree with the default bundle on most rows


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("champion") / "bundle")


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("challenger") / "bundle", weights_seed=OTHER_SEED)


class SpyPredictor(Predictor):
    """Records the rows of every model call; optionally slow (so that requests pile up meanwhile), held at a
    gate, or failing with `fail(rows)`'s exception."""

    def __init__(self, bundle: Path, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(bundle, **kwargs)
        self.calls: list[int] = []
        self.delay = delay
        self.gate: threading.Event | None = None
        self.fail: Any = None
        self.failed: list[int] = []

    def predict(self, feeds: dict[str, np.ndarray]) -> Prediction:
        rows = len(next(iter(feeds.values())))
        self.calls.append(rows)
        if self.gate is not None:
            self.gate.wait(timeout=20)
        if self.delay:
            time.sleep(self.delay)
        error = self.fail(rows) if self.fail is not None else None
        if error is not None:
            self.failed.append(rows)
            raise error
        return super().predict(feeds)


def rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    frame = training_frame(n, seed=seed)
    out = [{"age": float(r.age), "income": float(r.income), "city": r.city} for r in frame.itertuples()]
    for i in range(0, n, 5):  # some missing values: the graph imputes them, batched or not
        out[i] = out[i] | {"age": None} if i % 2 else out[i] | {"city": None}
    return out


def v1(batch: list[dict[str, Any]], request_id: str) -> tuple[str, dict[str, Any]]:
    return "/v1/models/toy:predict", {"id": request_id, "instances": batch}


def v2(batch: list[dict[str, Any]], request_id: str, reverse: bool = False) -> tuple[str, dict[str, Any]]:
    inputs = [{"name": "age", "shape": [len(batch)], "datatype": "FP64", "data": [r["age"] for r in batch]},
              {"name": "income", "shape": [len(batch)], "datatype": "FP64", "data": [r["income"] for r in batch]},
              {"name": "city", "shape": [len(batch)], "datatype": "BYTES", "data": [r["city"] for r in batch]}]
    return "/v2/models/toy/infer", {"id": request_id, "inputs": inputs[::-1] if reverse else inputs}


def traffic(n: int) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """`n` requests of 1 to 3 rows, V1 and V2 (some with their inputs in another order); their total rows."""
    data = rows(3 * n)
    out, total = [], 0
    for i in range(n):
        size = (1, 1, 2, 1, 3)[i % 5]
        batch = data[total:total + size]
        total += size
        out.append(v1(batch, f"r{i}") if i % 3 else v2(batch, f"r{i}", reverse=i % 2 == 0))
    return out, total


async def post_all(server: Server, requests: list[tuple[str, dict[str, Any]]],
                   headers: list[dict[str, str]] | None = None) -> list[httpx.Response]:
    """All requests at once, concurrently, over the ASGI app (no sockets)."""
    transport = httpx.ASGITransport(app=server.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
        return list(await asyncio.gather(*(client.post(path, json=body, headers=(headers or [{}] * len(requests))[k])
                                           for k, (path, body) in enumerate(requests))))


def run(server: Server, coroutine_fn: Any) -> Any:
    """Run `coroutine_fn(server)` inside the app's lifespan (which closes batchers and the log)."""
    async def main() -> Any:
        app = server.app()
        async with app.router.lifespan_context(app):
            return await coroutine_fn(server)

    return asyncio.run(main())


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


# --- through the app ------------------------------------------------------------------------------------


def test_concurrent_requests_batch_and_answer_exactly_as_unbatched(bundle: Path, tmp_path: Path) -> None:
    requests, total = traffic(48)
    plain = Server(Predictor(bundle), PredictionLog(tmp_path / "plain.sqlite"), version="3")
    expected = run(plain, lambda s: post_all(s, requests))
    spy = SpyPredictor(bundle, delay=0.01)
    batched = Server(spy, PredictionLog(tmp_path / "batched.sqlite"), version="3", batch_max=8, batch_wait_ms=50)

    async def burst_then_metrics(server: Server) -> tuple[list[httpx.Response], str]:
        got = await post_all(server, requests)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app()), base_url="http://t") as c:
            return got, (await c.get("/metrics")).text

    got, text = run(batched, burst_then_metrics)
    assert [r.status_code for r in expected] == [200] * len(requests)
    # row for row, byte for byte: the same predictions, ids and variant for every request
    assert [(r.status_code, r.content, r.headers["x-model-variant"]) for r in got] == [
        (r.status_code, r.content, r.headers["x-model-variant"]) for r in expected]
    assert sum(spy.calls) == total
    assert len(spy.calls) < len(requests) and max(spy.calls) > 1  # batches formed
    assert max(spy.calls) <= 8  # and never beyond --batch-max
    # every request still has its own log rows, under its own ids, with the unbatched outputs
    logged = {r["id"]: r for r in read_predictions(tmp_path / "batched.sqlite")}
    reference = {r["id"]: r for r in read_predictions(tmp_path / "plain.sqlite")}
    assert len(logged) == total and set(logged) == set(reference)
    for pid, row in logged.items():
        assert (row["inputs"], row["outputs"], row["variant"], row["version"]) == (
            reference[pid]["inputs"], reference[pid]["outputs"], "champion", "3")
    # the histogram of batch sizes: one observation per batched model call
    assert metric(text, "mlops_batch_rows_count", model="toy", variant="champion") == len(spy.calls)
    assert metric(text, "mlops_batch_rows_sum", model="toy", variant="champion") == total
    assert metric(text, "mlops_batch_rows_bucket", model="toy", variant="champion", le="1.0") == spy.calls.count(1)
    assert metric(text, "mlops_requests_total", route="v1_predict", model="toy", variant="champion",
                  status="200") == sum(path.startswith("/v1") for path, _ in requests)


def test_no_batching_by_default_and_no_histogram(bundle: Path, tmp_path: Path) -> None:
    spy = SpyPredictor(bundle, delay=0.01)
    server = Server(spy, PredictionLog(tmp_path / "log.sqlite"))
    requests, _ = traffic(10)
    assert [r.status_code for r in run(server, lambda s: post_all(s, requests))] == [200] * 10
    assert len(spy.calls) == 10 and not server.batchers
    assert "mlops_batch_rows" not in server.metrics.render()[0].decode()


def test_a_request_of_max_batch_rows_or_more_goes_alone(bundle: Path, tmp_path: Path) -> None:
    spy = SpyPredictor(bundle, delay=0.01, max_batch=16)
    server = Server(spy, PredictionLog(tmp_path / "log.sqlite"), batch_max=4, batch_wait_ms=50)
    data = rows(40)
    requests = [v1(data[:6], "big")] + [v1([data[6 + i]], f"one-{i}") for i in range(12)] + [v1(data[18:22], "four")]
    got = run(server, lambda s: post_all(s, requests))
    assert [r.status_code for r in got] == [200] * len(requests)
    assert sorted(spy.calls).count(6) == 1 and spy.calls.count(4) >= 1 and sum(spy.calls) == 22
    assert all(n <= 4 for n in spy.calls if n != 6)  # only the oversized request went beyond the limit
    direct = Predictor(bundle)
    assert got[0].json()["predictions"] == direct.predict(direct.feeds_from_rows(data[:6])).instances()


def test_a_lone_request_does_not_wait_for_the_window(bundle: Path, tmp_path: Path) -> None:
    window_ms = 2000.0
    spy = SpyPredictor(bundle)
    server = Server(spy, PredictionLog(tmp_path / "log.sqlite"), batch_max=32, batch_wait_ms=window_ms)

    async def timed(server: Server) -> list[float]:
        elapsed = []
        for burst in ([v1(rows(1), "alone")], [v1([r], f"b{i}") for i, r in enumerate(rows(10))]):
            started = time.perf_counter()
            assert {r.status_code for r in await post_all(server, burst)} == {200}
            elapsed.append(time.perf_counter() - started)
        return elapsed

    alone, burst = run(server, timed)
    # a fixed window would hold each for the full 2 s; flushed as soon as nothing else arrives, they take
    # milliseconds: a quarter of the window leaves room for any slow machine
    assert alone < window_ms / 1000 / 4, alone
    assert burst < window_ms / 1000 / 4, burst
    assert spy.calls[0] == 1 and sum(spy.calls) == 11


@pytest.mark.parametrize(("error", "status", "field"), [
    (RuntimeError("the model exploded"), 500, None),
    (RequestError("instances", "rejected by the model", status=422), 422, "instances"),
], ids=["model-crash-500", "request-error-422"])
def test_a_failing_batch_fails_each_of_its_requests_and_the_batcher_carries_on(
        bundle: Path, tmp_path: Path, error: Exception, status: int, field: str | None) -> None:
    spy = SpyPredictor(bundle, delay=0.01)
    spy.fail = lambda n: error if n > 1 else None  # only batches of several requests fail
    log_path = tmp_path / "log.sqlite"
    server = Server(spy, PredictionLog(log_path), batch_max=8, batch_wait_ms=50)
    data = rows(30)

    async def twice(server: Server) -> tuple[list[httpx.Response], list[httpx.Response]]:
        first = await post_all(server, [v1([data[i]], f"x{i}") for i in range(16)])
        spy.fail = None
        return first, await post_all(server, [v1([data[16 + i]], f"y{i}") for i in range(8)])

    first, after = run(server, twice)
    statuses = [r.status_code for r in first]
    assert set(statuses) <= {200, status}
    assert spy.failed and max(spy.failed) > 1  # a batch of several requests failed...
    assert statuses.count(status) == sum(spy.failed)  # ...and each of its requests got the error
    for r in first:
        if r.status_code == status:
            assert r.json()["field"] == field
            assert (field or "internal error") in r.json()["error"]
    assert [r.status_code for r in after] == [200] * 8  # the batcher still serves
    logged = {row["id"] for row in read_predictions(log_path)}
    answered = {f"x{i}" for i, s in enumerate(statuses) if s == 200} | {f"y{i}" for i in range(8)}
    assert logged == answered  # failed requests are not logged


def test_ab_arms_batch_separately_and_the_shadow_still_listens(bundle: Path, other: Path, tmp_path: Path) -> None:
    champion, challenger = SpyPredictor(bundle, delay=0.01), SpyPredictor(other, delay=0.01)
    log_path = tmp_path / "log.sqlite"
    server = Server(champion, PredictionLog(log_path), version="3", batch_max=16, batch_wait_ms=50,
                    challenger=Arm(challenger, "4", CHALLENGER), ab_percent=50, ab_key_header="X-User",
                    shadow=Arm(Predictor(bundle), "5", SHADOW))
    data = rows(40)
    requests = [v1([row], f"req-{i}") for i, row in enumerate(data)]
    headers = [{"X-User": f"user-{i}"} for i in range(len(data))]

    async def burst(server: Server) -> list[httpx.Response]:
        got = await post_all(server, requests, headers)
        assert server.shadow is not None
        await asyncio.to_thread(server.shadow.join)
        return got

    got = run(server, burst)
    arms = ["challenger" if assign_arm(f"user-{i}", 50) else "champion" for i in range(len(data))]
    assert {"champion", "challenger"} == set(arms)
    models = {"champion": Predictor(bundle), "challenger": Predictor(other)}
    for i, r in enumerate(got):
        assert r.status_code == 200 and r.headers["x-model-variant"] == arms[i]
        model = models[arms[i]]
        assert r.json()["predictions"] == model.predict(model.feeds_from_rows([data[i]])).instances()
    # each arm's model saw exactly its own requests, in batches of its own
    assert sum(champion.calls) == arms.count("champion") and sum(challenger.calls) == arms.count("challenger")
    assert len(champion.calls) + len(challenger.calls) < len(data)
    logged = read_predictions(log_path)
    served = {r["id"]: r for r in logged if r["variant"] != "shadow"}
    assert {pid: (r["variant"], r["version"]) for pid, r in served.items()} == {
        f"req-{i}": (arms[i], "4" if arms[i] == "challenger" else "3") for i in range(len(data))}
    assert sorted(r["id"] for r in logged if r["variant"] == "shadow") == sorted(served)


# --- the batcher itself ---------------------------------------------------------------------------------


def test_cancelled_waiters_are_skipped_and_the_batcher_keeps_serving(bundle: Path) -> None:
    spy = SpyPredictor(bundle)
    spy.gate = threading.Event()
    direct = Predictor(bundle)
    data = rows(6)
    feeds = [spy.feeds_from_rows([row]) for row in data]

    async def main() -> None:
        batcher = MicroBatcher(spy, max_batch=8, max_wait_ms=0)
        first = asyncio.create_task(batcher.predict(feeds[0]))
        while not spy.calls:  # the first batch is in the model (on the batcher's thread, held at the gate)
            await asyncio.sleep(0.001)
        queued = [asyncio.create_task(batcher.predict(f)) for f in feeds[1:4]]
        await asyncio.sleep(0)
        first.cancel()  # in flight: its answer is dropped
        queued[1].cancel()  # still queued: skipped
        spy.gate.set()
        done = await asyncio.gather(first, *queued, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError) and isinstance(done[2], asyncio.CancelledError)
        for k in (1, 3):
            assert done[k].instances() == direct.predict(feeds[k]).instances()
        assert spy.calls == [1, 2]
        later = await batcher.predict(feeds[4])
        assert later.instances() == direct.predict(feeds[4]).instances() and spy.calls == [1, 2, 1]
        await batcher.close()

    asyncio.run(asyncio.wait_for(main(), timeout=30))


def test_the_window_bounds_a_batch_while_requests_keep_trickling_in(bundle: Path) -> None:
    """One request arrives on every trip around the loop, each trip taking >= 1 ms: the batch must be sent
    once its first request has waited `max_wait_ms`, not grow for as long as arrivals continue."""
    spy = SpyPredictor(bundle)
    feeds = spy.feeds_from_rows(rows(1))
    n = 200

    async def main() -> None:
        batcher = MicroBatcher(spy, max_batch=10_000, max_wait_ms=20)
        tasks = []
        for _ in range(n):
            tasks.append(asyncio.create_task(batcher.predict(feeds)))
            time.sleep(0.001)  # a busy loop: every trip takes a while
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        await batcher.close()

    asyncio.run(asyncio.wait_for(main(), timeout=30))
    assert sum(spy.calls) == n
    assert len(spy.calls) >= 4 and max(spy.calls) < n // 2, spy.calls  # ~20 ms of arrivals per batch


# --- flags and wiring -----------------------------------------------------------------------------------


def test_serve_flags_and_build_server(bundle: Path, tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "toy@champion", "--batch-max", "32", "--batch-wait-ms", "1.5"])
    assert (args.batch_max, args.batch_wait_ms) == (32, 1.5)
    args = build_parser().parse_args(["serve", "toy@champion"])
    assert (args.batch_max, args.batch_wait_ms) == (None, None)
    log = str(tmp_path / "log.sqlite")
    assert not build_server(ServeOptions(model=str(bundle), log=log)).batchers
    assert not build_server(ServeOptions(model=str(bundle), log=log, batch_max=1)).batchers
    for bad in ({"batch_max": -2}, {"batch_max": 8, "batch_wait_ms": -1.0}, {"batch_max": 8, "batch_wait_ms": float("nan")}):
        with pytest.raises(MlopsError, match="--batch-"):
            build_server(ServeOptions(model=str(bundle), log=log, **bad))
    code = (
        "import sys\n"
        "from mlops.serve.run import ServeOptions, build_server\n"
        f"s = build_server(ServeOptions(model={str(bundle)!r}, log={log!r}, ab={str(bundle) + ':20'!r}, batch_max=16, batch_wait_ms=1.5))\n"
        "s.app()\n"
        "assert sorted(s.batchers) == ['challenger', 'champion']\n"
        "assert {(b.max_batch, b.max_wait) for b in s.batchers.values()} == {(16, 0.0015)}\n"
        "print(sorted(m for m in ('torch', 'lightning', 'prefect', 'evidently', 'mlflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')) == []


@pytest.mark.parametrize(("bad", "named"), [
    ({"port": 80000}, "--port 80000: expected a port from 1 to 65535"),  # uvicorn would bind another port
    ({"port": -1}, "--port -1: expected a port"),  # uvicorn would fail once the model had loaded
    ({"grpc_port": 0}, "--grpc-port 0: expected a port"),
    ({"port": 9000, "grpc_port": 9000}, "--grpc-port 9000 is --port too"),
    ({"max_batch": 0}, "--max-batch 0: expected"),  # every request would be a 413
    ({"max_batch": -5}, "--max-batch -5: expected"),
    ({"batch_wait_ms": 5.0}, "--batch-wait-ms 5.0 does nothing without --batch-max"),
    ({"batch_max": 1, "batch_wait_ms": 5.0}, "does nothing without --batch-max"),
    ({"ab_key_header": " "}, "--ab-key-header"),
])
def test_serve_options_that_cannot_work_are_refused_before_the_model_loads(tmp_path: Path, bad: dict[str, Any],
                                                                           named: str) -> None:
    options = ServeOptions(model=str(tmp_path / "no-such-bundle"), log=str(tmp_path / "log.sqlite"), **bad)
    with pytest.raises(MlopsError, match=re.escape(named)):  # a missing bundle would be the error were it later
        build_server(options)
    if set(bad) <= {"port", "max_batch"}:  # what the stock runtime takes too (it refuses the rest by name)
        with pytest.raises(MlopsError, match=re.escape(named)):
            serve_with_kserve(replace(options, log=None))
