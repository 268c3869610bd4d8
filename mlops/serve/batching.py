"""Adaptive micro-batching: concurrent small requests to one model share one ONNX Runtime call.

A request hands its validated feeds (column -> array of n rows: `[n, 1]` for a scalar column, `[n, H, W, C]`
pixels for an image, `[n, L]` token ids and the n texts beside them for a text; concatenated along the rows)
to `MicroBatcher.predict` and awaits its own slice of the answer. One collector task per batcher (so per
model: A/B arms never share a batch) forms the batches and runs them one at a time, on a thread of its own,
so that the event loop keeps parsing and queueing requests while the model runs. (A batch size the model has
been measured to answer in under 0.3 ms runs on the loop instead: a thread hand-off would cost more than it
frees.) The collector runs while there is work and ends when the queue is empty; the next request starts it
again.

The policy (adaptive: no fixed window added to every request):

1. The collector waits for a first request. Every request already queued joins it, in arrival order,
   while the batch stays within `max_batch` rows (a request never splits: one that does not fit starts
   the next batch).
2. It then yields to the event loop, once, so that requests whose handlers are ready to run can queue.
   If that trip brought nothing new, the batch is sent at once: a lone request pays one trip around the
   loop, never the window. If something arrived, it yields again, and so on, until the batch holds
   `max_batch` rows or the first request in it has waited `max_wait_ms`.
3. While a batch runs, new requests queue; the next batch starts with all of them. Under load, batches
   therefore grow with the backlog (continuous batching), without any timer.

A request of `max_batch` rows or more is already a batch: it is predicted on its own, off the loop, and
never waits for others. An exception from the model fails every request of that batch with the same
exception (the app maps it to a 4xx/5xx as for an unbatched request); the collector carries on. A
cancelled waiter is skipped, or its answer dropped, without disturbing the rest of its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.core.log import say
from mlops.core.predlog import Rows, built_rows
from mlops.package.predictor import Prediction, join_feeds

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram

    from mlops.core.predlog import PredictionLog
    from mlops.package.predictor import Predictor

DEFAULT_WAIT_MS = 2.0
# a batch the model answers faster than this runs on the event loop: handing it to a thread would cost more
# (tens of microseconds on each side, and a wake-up) than it frees the loop for
INLINE_BELOW_S = 0.0003
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def batch_rows_histogram(registry: CollectorRegistry) -> Histogram:
    """`mlops_batch_rows`: rows per model call the batcher made, by model and variant."""
    from prometheus_client import Histogram

    return Histogram("mlops_batch_rows", "Rows per batched model call (adaptive batching)", ["model", "variant"],
                     buckets=BATCH_ROWS_BUCKETS, registry=registry)


@dataclass
class _Waiter:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[Prediction]
    queued: float  # loop time when it was queued
    # the model that checked the feeds: a text's token ids are its tokenizer's, so its batch runs on it even when
    # another version was swapped in meanwhile (they never share a batch)
    predictor: Predictor
    columns: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.columns = frozenset(self.feeds)


class MicroBatcher:
    """Batches concurrent requests to one predictor; see the module docstring for the policy."""

    def __init__(self, predictor: Predictor, max_batch: int, max_wait_ms: float = DEFAULT_WAIT_MS,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 2:
            raise ValueError(f"max_batch must be at least 2 to batch anything, got {max_batch}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch  # called with the rows of every batched model call
        self._executor: ThreadPoolExecutor | None = None
        self._queue: deque[_Waiter] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._cost: dict[int, float] = {}  # seconds per model call, by batch size rounded up to a power of 2

    async def predict(self, feeds: dict[str, np.ndarray], predictor: Predictor | None = None) -> Prediction:
        """The prediction for these feeds, computed in a batch with whatever else is queued. `predictor` is the
        model that checked them (default: this batcher's)."""
        predictor = predictor or self.predictor
        rows = len(next(iter(feeds.values()))) if feeds else 0
        loop = asyncio.get_running_loop()
        if rows >= self.max_batch or rows == 0:  # a full batch by itself: no reason to wait for anyone
            return await loop.run_in_executor(None, predictor.predict, feeds)
        if self._loop is not loop:  # a new loop (a test client's): what was queued on the old one is gone
            self._queue.clear()
            self._loop = loop
        waiter = _Waiter(feeds, rows, loop.create_future(), loop.time(), predictor)
        self._queue.append(waiter)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._collect_all(), name=f"batcher-{self.predictor.name}")
        return await waiter.future  # cancelling this cancels the future: the collector then skips it

    async def close(self) -> None:
        """Stop the collector (requests still queued fail: the server is shutting down) and its thread."""
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(RuntimeError("the server is shutting down"))
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # --- the collector --------------------------------------------------------------------------------

    async def _collect_all(self) -> None:
        """Form and run batches until the queue is empty."""
        while self._queue:
            try:
                batch = await self._collect()
                if batch:
                    await self._run(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not strand the queue: report and carry on
                say(f"batcher '{self.predictor.name}' error: {type(exc).__name__}: {exc}", "mlops serve")

    def _take(self, batch: list[_Waiter], rows: int) -> tuple[int, int, bool]:
        """Move queued requests into `batch` while they fit. Returns (rows, requests taken, full)."""
        taken = 0
        while self._queue:
            waiter = self._queue[0]
            if waiter.future.done():  # cancelled while queued: its request is gone, never compute it
                self._queue.popleft()
                continue
            if batch and (rows + waiter.rows > self.max_batch or waiter.columns != batch[0].columns
                          or waiter.predictor is not batch[0].predictor):
                return rows, taken, True  # it starts the next batch
            self._queue.popleft()
            batch.append(waiter)
            rows += waiter.rows
            taken += 1
        return rows, taken, rows >= self.max_batch

    async def _collect(self) -> list[_Waiter]:
        loop = asyncio.get_running_loop()
        batch: list[_Waiter] = []
        rows, _, full = self._take(batch, 0)
        while batch and not full and loop.time() < batch[0].queued + self.max_wait:
            await asyncio.sleep(0)  # one trip around the loop: ready handlers may queue their requests
            rows, taken, full = self._take(batch, rows)
            if not taken:
                break  # nothing arrived during a whole trip: nobody else is coming, send it now
        return batch

    async def _run(self, batch: list[_Waiter]) -> None:
        if not batch:
            return
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = join_feeds([w.feeds for w in batch])
        sizes = [w.rows for w in batch]
        predictor = batch[0].predictor
        loop = asyncio.get_running_loop()
        rows = sum(sizes)
        try:
            if self._cost.get(_bucket(rows), INLINE_BELOW_S) < INLINE_BELOW_S:
                prediction = self._timed_predict(predictor, feeds, rows)  # known to be quick: no thread hand-off
            else:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{self.predictor.name}")
                prediction = await loop.run_in_executor(self._executor, self._timed_predict, predictor, feeds,
                                                        rows)
            parts = split(prediction, sizes)
        except asyncio.CancelledError:
            for w in batch:
                w.future.cancel()
            raise
        except Exception as exc:  # the model failed: every request of the batch gets the same error
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(rows)
        for w, part in zip(batch, parts, strict=True):
            if not w.future.done():  # its request was cancelled meanwhile: drop the answer
                w.future.set_result(part)

    def _timed_predict(self, predictor: Predictor, feeds: dict[str, np.ndarray], rows: int) -> Prediction:
        started = time.perf_counter()
        prediction = predictor.predict(feeds)
        seconds = time.perf_counter() - started
        key = _bucket(rows)
        previous = self._cost.get(key)
        self._cost[key] = seconds if previous is None else 0.8 * previous + 0.2 * seconds  # follows drift
        return prediction


def _bucket(rows: int) -> int:
    return 1 << max(rows - 1, 0).bit_length()


def split(prediction: Prediction, sizes: list[int]) -> list[Prediction]:
    """One batch's prediction back into per-request predictions of `sizes` rows, in order."""
    total = sum(sizes)
    for name, values in prediction.outputs.items():
        if len(values) != total:
            raise ValueError(f"output '{name}' has {len(values)} rows for a batch of {total}: the model cannot "
                             "be batched")
    if len(sizes) == 1:
        return [prediction]
    parts = []
    start = 0
    for size in sizes:
        parts.append(prediction.part(start, size))
        start += size
    return parts


class SharedLogWrites:
    """Prediction-log writes made in one trip around the event loop go to the log thread together.

    The requests of a batch resume together, so their rows are handed over and committed together, and
    one wake-up from the log thread answers them all, instead of one hand-off and one wake-up each. The
    guarantee is the log's: `write` returns only once its rows are committed, and raises when the commit
    failed (then for every request of the group).
    """

    def __init__(self, log: PredictionLog) -> None:
        self.log = log
        self._group: tuple[dict[str, list[Rows]], list[asyncio.Future[None]]] | None = None

    async def write(self, table: str, rows: Rows) -> None:
        loop = asyncio.get_running_loop()
        if self._group is None:
            self._group = ({}, [])
            loop.call_soon(self._flush, loop)  # after every request that is ready to run has added its rows
        tables, waiters = self._group
        tables.setdefault(table, []).append(rows)
        done: asyncio.Future[None] = loop.create_future()
        waiters.append(done)
        await done  # a cancelled request cancels only its own future, never the group's commit

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._group is not None
        tables, waiters = self._group
        self._group = None
        remaining = len(tables)
        errors: list[BaseException] = []

        def settle(committed: Future[None]) -> None:  # on the loop, once per table
            nonlocal remaining
            remaining -= 1
            if committed.exception() is not None:
                errors.append(committed.exception())  # type: ignore[arg-type]
            if remaining:
                return
            for waiter in waiters:
                if waiter.done():
                    continue
                if errors:
                    waiter.set_exception(errors[0])
                else:
                    waiter.set_result(None)

        for table, items in tables.items():
            try:  # deferred rows (mlops.serve.logrows) are built here, the group's together
                built = built_rows(items)
                failed = next((b for b in built if isinstance(b, BaseException)), None)
                if failed is not None:
                    raise failed
                committed = self.log.submit(table, [row for rows in built for row in rows])  # type: ignore[union-attr]
            except Exception as exc:  # never leave a request waiting: fail it like a failed commit
                committed = Future()
                committed.set_exception(exc)
            committed.add_done_callback(lambda c: _call_soon(loop, settle, c))


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """From the log thread: run `callback` on the loop, unless the loop is already gone (shutdown)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
