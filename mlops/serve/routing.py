"""Shadow and A/B routing: which model answers a request, and which one only listens.

- **A/B**: `assign_arm(key, percent)` hashes a request key with SHA-256 (never Python's `hash()`, which is
  salted per process), so a key lands in the same arm in every process, on every restart.
- **Shadow**: `ShadowRunner` runs a second model on each request after the answer is computed, on one
  thread of its own fed by a bounded queue; the requests waiting there share one model call. A full queue
  drops the work (and counts the drop) rather than grow; an exception is printed and counted, never
  returned. The served response cannot depend on it.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.predlog import SHADOW, PredictionLog, prediction_rows
from mlops.package.bundle import BundleMeta
from mlops.package.predictor import RAW_TEXT, Prediction, join_feeds
from mlops.serve.logrows import joined
from mlops.serve.tensors import output_tensors

if TYPE_CHECKING:
    from mlops.package.predictor import Predictor
    from mlops.serve.metrics import ServeMetrics

DEFAULT_KEY_HEADER = "X-Request-Key"
DEFAULT_SHADOW_QUEUE = 256  # requests waiting for the shadow; beyond it they are dropped and counted
REL_TOLERANCE = 1e-3  # regression: the shadow disagrees when its value is off by more than 0.1 %
ABS_TOLERANCE = 1e-6  # ... or, near zero, by more than this


@dataclass
class Arm:
    """One model the server can call, with the version it answers as and its variant in the log."""

    predictor: Predictor
    version: str | None
    variant: str

    @property
    def name(self) -> str:
        return self.predictor.name

    @cached_property
    def answer_outputs(self) -> list[str]:
        """The outputs an answer holds by default, in the V2 metadata's order (a V2 request may ask for fewer)."""
        return [o["name"] for o in output_tensors(self.predictor.meta)]


def assign_arm(key: str, percent: float) -> bool:
    """True when `key` goes to the challenger arm, which receives `percent` % of keys.

    The first 8 bytes of SHA-256(key) as a fraction of 2**64 place the key on [0, 100): deterministic
    across processes, machines and Python versions, and uniform enough that the split is exact to within
    sampling noise.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") * 100.0 / 2**64 < percent


def request_key(header_value: str | None, request_id: str | None) -> tuple[str, bool]:
    """The A/B key: the key header, else the body's `id`, else a fresh id. Second value: is it sticky."""
    if header_value:
        return header_value, True
    if request_id:
        return request_id, True
    return uuid.uuid4().hex, False


def parse_ab(spec: str) -> tuple[str, float]:
    """`REF:PERCENT` (`quickstart@challenger:10`) -> (ref, percent); the last colon separates them."""
    ref, sep, pct = spec.rpartition(":")
    try:
        percent = float(pct)
    except ValueError:
        percent = float("nan")
    if not sep or not ref or not 0 <= percent <= 100:
        raise MlopsError(f"--ab '{spec}': expected MODEL:PERCENT with PERCENT in [0, 100], "
                         "e.g. quickstart@challenger:10")
    return ref, percent


def input_signature(meta: BundleMeta) -> list[tuple[Any, ...]]:
    """What decides whether a model takes a request as another does: each input's name, kind and type, in order;
    for an image everything that makes its pixels or refuses it (size, channels, limits); for a text what refuses
    it (its limits). A text's tokenizer and length may differ: each model tokenizes the texts itself (see
    `feeds_for`), so a retrained tokenizer is no incompatibility. An image's pixels are decoded once, by the
    champion, and shared: they must be what the other model takes."""
    out: list[tuple[Any, ...]] = []
    for i in meta.inputs:
        spec: tuple[Any, ...] = ()
        if i.image is not None:
            spec = ("size", tuple(i.image.size), "channels", i.image.channels, "max_bytes", i.image.max_bytes,
                    "max_pixels", i.image.max_pixels)
        elif i.text is not None:
            spec = ("max_chars", i.text.max_chars, "allow_empty", i.text.allow_empty)
        out.append((i.name, i.kind, i.dtype, *spec))
    return out


def check_compatible(champion: Predictor, other: Predictor, flag: str) -> None:
    """The other model must take the same request: same input columns, same kinds and types, same order, and
    the same image and text specs (see `input_signature`)."""
    ours, theirs = input_signature(champion.meta), input_signature(other.meta)
    if ours != theirs:
        k = next(k for k in range(max(len(ours), len(theirs)))
                 if k >= min(len(ours), len(theirs)) or ours[k] != theirs[k])
        mine, its = (ours[k] if k < len(ours) else "nothing"), (theirs[k] if k < len(theirs) else "nothing")
        raise MlopsError(f"{flag} model '{other.name}' takes inputs {[t[:3] for t in theirs]}, but the champion "
                         f"'{champion.name}' takes {[t[:3] for t in ours]}: both must accept the same requests "
                         f"(input {k + 1}: {its}, the champion's: {mine})")


def feeds_for(predictor: Predictor, feeds: dict[str, np.ndarray], source: Predictor) -> dict[str, np.ndarray]:
    """Another model's feeds from the checked feeds of `source` (the champion): its own inputs, in its order,
    shared read-only, except a text's token ids, which it makes from the texts kept beside them (its own tokenizer
    and length). `check_compatible` has made sure the rest is what it takes. The champion's numbers block passes
    as it is to a model that packs the same columns, as named columns to any other."""
    mine: dict[str, np.ndarray] = {}
    block = predictor.block_in(feeds)
    if block is not None:
        mine[predictor.block_key] = block  # type: ignore[index]
    else:
        feeds = source.named(feeds)
    for i in predictor.meta.inputs:
        if block is not None and predictor.packs(i.name):
            continue
        texts = feeds.get(i.name + RAW_TEXT) if i.text is not None else None
        if texts is not None:
            mine[i.name] = predictor.encode_texts(i.name, texts.tolist())
            mine[i.name + RAW_TEXT] = texts
        else:
            mine[i.name] = feeds[i.name]
    return mine


def disagreements(served: dict[str, np.ndarray], shadow: dict[str, np.ndarray], rows: int) -> int:
    """Rows where the shadow's answer differs: its `label` for a classifier, else its first numeric output
    beyond a relative tolerance (regression). Outputs the two do not share count as all rows differing."""
    if "label" in served or "label" in shadow:
        if "label" not in served or "label" not in shadow:
            return rows
        a, b = np.asarray(served["label"]).reshape(rows, -1), np.asarray(shadow["label"]).reshape(rows, -1)
        if a.shape != b.shape:
            return rows
        return int(np.any(a.astype(str) != b.astype(str), axis=1).sum())
    name = next(iter(served), None)
    if name is None or name not in shadow:
        return rows
    a = np.asarray(served[name], dtype=np.float64).reshape(rows, -1)
    b = np.asarray(shadow[name], dtype=np.float64).reshape(rows, -1)
    if a.shape != b.shape:
        return rows
    tolerance = np.maximum(REL_TOLERANCE * np.maximum(np.abs(a), np.abs(b)), ABS_TOLERANCE)
    differ = ~(np.abs(a - b) <= tolerance)  # NaN on either side is a disagreement
    return int(np.any(differ, axis=1).sum())


_STOP = object()
SHADOW_BATCH = 64  # queued requests the shadow answers in one model call


def _joined(work: list[tuple[Any, ...]]) -> tuple[dict[str, np.ndarray], list[str], list[dict[str, Any]], Prediction,
                                                  Predictor]:
    """Several requests' (feeds, ids, inputs, served, served_by) as one. Raises when their served answers do
    not stack (an A/B server whose arms answer different outputs) or their feeds differ in parts (arms packing
    other columns): the caller then runs them one by one. Feeds of the same parts read the same through any of
    their servers, so the first one stands for all."""
    first_feeds, first_served = work[0][0], work[0][3]
    if any(set(w[3].outputs) != set(first_served.outputs) or w[0].keys() != first_feeds.keys() for w in work):
        raise ValueError("the requests' answers or feeds do not stack")
    return (join_feeds([w[0] for w in work]), [i for w in work for i in w[1]], [r for w in work for r in w[2]],
            joined(w[3] for w in work), work[0][4])


class ShadowRunner:
    """Runs the shadow model on one background thread. `submit` never blocks and never raises.

    Its rows go to the prediction log with variant `shadow` and the SAME id as the served row, so
    `SELECT ... WHERE id = ?` returns both answers; the variant tells them apart.
    """

    def __init__(self, arm: Arm, log: PredictionLog | None, metrics: ServeMetrics,
                 max_queue: int = DEFAULT_SHADOW_QUEUE) -> None:
        self.arm = arm
        self.log = log
        self.metrics = metrics
        for counter in (metrics.shadow_rows, metrics.shadow_disagreements, metrics.shadow_errors,
                        metrics.shadow_dropped):
            counter.labels(arm.name)  # exported at 0 from the start, so rates and alerts work at once
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, max_queue))
        self._thread = threading.Thread(target=self._worker, name="shadow", daemon=True)
        self._thread.start()

    def submit(self, feeds: dict[str, np.ndarray], ids: list[str], served_by: Predictor, served: Prediction) -> bool:
        """Hand one request's validated feeds over, with the model that answered them (its view of the inputs
        is what the shadow's log rows hold); False (and counted) when the shadow is saturated."""
        try:
            self._queue.put_nowait((feeds, ids, served_by, served))
            return True
        except queue.Full:
            self.metrics.shadow_dropped.labels(self.arm.name).inc()
            return False

    def join(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far has run (for tests and shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued (up to `timeout`), then stop the thread."""
        self.join(timeout)
        try:
            self._queue.put(_STOP, timeout=1)
        except queue.Full:
            return
        self._thread.join(timeout=1)

    def _worker(self) -> None:
        while True:
            batch = [self._queue.get()]
            while batch[-1] is not _STOP and len(batch) < SHADOW_BATCH:  # whatever else waits joins the call
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            work = [item for item in batch if item is not _STOP]
            try:
                self._run_batch(work)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(work) < len(batch):
                return

    def _run_batch(self, work: list[tuple[Any, ...]]) -> None:
        """One model call for every request waiting: the shadow shares the server's CPU, and a call of a few
        rows costs about what a call of one does. A batch that fails is retried request by request, so one
        bad request costs only its own shadow answer, and the error count stays per request."""
        work = [w for w in map(self._with_inputs, work) if w is not None]
        if len(work) > 1:
            try:
                self._run(*_joined(work))
                return
            except Exception:  # each request again, alone: it counts its own failure below
                pass
        for item in work:
            try:
                self._run(*item)
            except Exception as exc:  # the shadow's failure is counted and printed, never returned
                self.metrics.shadow_errors.labels(self.arm.name).inc()
                say(f"shadow '{self.arm.name}' failed: {type(exc).__name__}: {exc}", "mlops serve")

    def _with_inputs(self, item: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """(feeds, ids, served_by, served) -> (feeds, ids, the log's input rows, served, served_by); None when
        that fails."""
        feeds, ids, served_by, served = item
        try:
            return feeds, ids, served_by.log_rows(feeds), served, served_by
        except Exception as exc:
            self.metrics.shadow_errors.labels(self.arm.name).inc()
            say(f"shadow '{self.arm.name}' failed: {type(exc).__name__}: {exc}", "mlops serve")
            return None

    def _run(self, feeds: dict[str, np.ndarray], ids: list[str], inputs: list[dict[str, Any]],
             served: Prediction, served_by: Predictor) -> None:
        started = time.perf_counter()
        prediction = self.arm.predictor.predict(feeds_for(self.arm.predictor, feeds, served_by))
        latency = (time.perf_counter() - started) * 1000
        if prediction.rows != served.rows:
            raise ValueError(f"answered {prediction.rows} rows for a request of {served.rows}")
        instances = prediction.log_instances()  # an output that cannot be logged is an error
        differ = disagreements(served.outputs, prediction.outputs, served.rows)
        if self.log is not None:
            done = self.log.submit("predictions", prediction_rows(ids, self.arm.name, self.arm.version, SHADOW,
                                                                  inputs, instances, latency))
            done.add_done_callback(self._logged)
        # counted last: whatever raised above is retried or counted as an error, never counted twice
        self.metrics.shadow_rows.labels(self.arm.name).inc(served.rows)
        if differ:
            self.metrics.shadow_disagreements.labels(self.arm.name).inc(differ)

    def _logged(self, done: Any) -> None:
        if done.exception() is not None:
            self.metrics.shadow_errors.labels(self.arm.name).inc()
            say(f"shadow log write failed: {done.exception()}", "mlops serve")
