"""Prometheus metrics of the server, in a registry of its own (prometheus-client): its requests, models and log,
and the resources of the serving process and its machine's GPUs.

Resources: prometheus_client's process collector (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
`process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds`, read from
/proc: Linux only, absent elsewhere) and platform collector (`python_info`). `mlops serve` runs one process
(uvicorn without workers; scale with replicas), so these describe the process that answers requests. GPUs:
`mlops.serve.gpu` (`mlops_gpu_*`, none without a GPU).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mlops.serve.gpu import gpu_collector

if TYPE_CHECKING:
    from mlops.core.predlog import PredictionLog
    from mlops.core.predlog_pg import PgPredictionLog

# down to 0.1 ms: an ONNX MLP answers well under a millisecond, KServe's 5 ms floor would hide it
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlops_requests_total", "Requests by route, model, variant and status",
                                ["route", "model", "variant", "status"], registry=self.registry)
        self.latency = Histogram("mlops_request_latency_seconds", "Request latency", ["route", "model", "variant"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.classes = Counter("mlops_predicted_class_total", "Predicted classes", ["model", "variant", "label"],
                               registry=self.registry)
        # shadow: rows compared, rows that disagreed (label differs; regression: off by > 0.1 %),
        # requests whose shadow call failed, and requests dropped because the shadow queue was full
        self.shadow_rows = Counter("mlops_shadow_rows_total", "Rows the shadow model answered and compared",
                                   ["model"], registry=self.registry)
        self.shadow_disagreements = Counter("mlops_shadow_disagreements_total",
                                            "Rows where the shadow model's answer differed from the served one",
                                            ["model"], registry=self.registry)
        self.shadow_errors = Counter("mlops_shadow_errors_total", "Requests whose shadow call raised",
                                     ["model"], registry=self.registry)
        self.shadow_dropped = Counter("mlops_shadow_dropped_total",
                                      "Requests not sent to the shadow because its queue was full", ["model"],
                                      registry=self.registry)
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        self._classes: dict[tuple[str, str, Any], Any] = {}
        self.in_flight = Gauge("mlops_requests_in_flight", "Requests being handled", registry=self.registry)
        # which version each arm serves now: 1 for the live one (a rollout reads it; see mlops/serve/reload.py)
        self.model_info = Gauge("mlops_model_info", "The model version each variant serves (value 1)",
                                ["model", "variant", "version"], registry=self.registry)
        # values of categorical features never seen in training (data.categories.unseen impute or allow: the
        # model answered with them encoded as missing)
        self.unseen = Counter("mlops_unseen_categories_total", "Categories never seen in training, by feature",
                              ["model", "feature"], registry=self.registry)
        self.reloads = Counter("mlops_model_reloads_total", "Versions swapped in because their alias moved",
                               ["model", "variant"], registry=self.registry)
        # the serving process's CPU, memory and file descriptors (the monitor's memory_growth rule and the
        # MlopsMemoryGrowth alert read process_resident_memory_bytes), and the GPUs when NVML sees any
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        gpus = gpu_collector()
        if gpus is not None:
            self.registry.register(gpus)

    def serving(self, model: str, variant: str, version: str | None, previous: str | None = None) -> None:
        if previous is not None:
            self.model_info.remove(model, variant, previous)
            self.reloads.labels(model, variant).inc()
        self.model_info.labels(model, variant, version or "").set(1)

    def observe(self, route: str, model: str, variant: str, status: int, seconds: float) -> None:
        # `labels()` hashes and validates its arguments on every call, which cost more than the model call
        # itself for a small model: each label combination's children are looked up once and kept
        key = (route, model, variant, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(route, model, variant, str(status)),
                                               self.latency.labels(route, model, variant))
        children[0].inc()
        children[1].observe(seconds)

    def count_classes(self, model: str, variant: str, labels: Any) -> None:
        flat = np.ravel(labels).tolist()
        for label, n in (((flat[0], 1),) if len(flat) == 1 else Tally(flat).items()):
            key = (model, variant, label)
            child = self._classes.get(key)
            if child is None:
                child = self._classes[key] = self.classes.labels(model, variant, str(label))
            child.inc(n)

    def count_unseen(self, model: str, unseen: dict[str, list[int]]) -> None:
        for feature, rows in unseen.items():
            self.unseen.labels(model, feature).inc(len(rows))

    def watch_log(self, model: str, log: PredictionLog | PgPredictionLog) -> None:
        """`mlops_prediction_log_bytes{model, part}`: the prediction log's bytes on disk (db, wal, archive), read
        when scraped (a few stats), so that Prometheus sees the log grow before the disk fills; and its WAL
        rewinds past its bound (`mlops_prediction_log_wal_truncations_total{outcome="done|busy"}`, named when they
        were TRUNCATE checkpoints, now RESTART ones: see PredictionLog._checkpoint; and the seconds spent in them,
        which writers wait)."""
        self.registry.register(_LogCollector(model, log))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _LogCollector:
    """A collector: the log's sizes and truncations as of each scrape."""

    def __init__(self, model: str, log: PredictionLog | PgPredictionLog) -> None:
        self.model = model
        self.log = log

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        sizes = GaugeMetricFamily("mlops_prediction_log_bytes", "Bytes of the prediction log on disk, by part "
                                  "(db: the SQLite file, wal: its write-ahead log, archive: retained Parquet files)",
                                  labels=["model", "part"])
        for part, size in self.log.sizes().items():
            sizes.add_metric([self.model, part], size)
        yield sizes
        truncations = CounterMetricFamily("mlops_prediction_log_wal_truncations", "Rewinds (RESTART checkpoints) of "
                                          "the prediction log's WAL past its bound (busy: a reader or writer was "
                                          "in the way, retried)", labels=["model", "outcome"])
        truncations.add_metric([self.model, "done"], self.log.wal_truncations)
        truncations.add_metric([self.model, "busy"], self.log.wal_truncations_busy)
        yield truncations
        seconds = CounterMetricFamily("mlops_prediction_log_wal_truncate_seconds", "Seconds spent in those "
                                      "checkpoints, holding the log's write lock", labels=["model"])
        seconds.add_metric([self.model], self.log.wal_truncate_seconds)
        yield seconds
