"""Operational metrics: latency percentiles and throughput per window from the log, and the request error
rate by status from the server's Prometheus counters (the log holds answered predictions only)."""

from __future__ import annotations

import os
import time
import urllib.request
from typing import Any

import numpy as np

from mlops.core.errors import MlopsError
from mlops.core.retry import with_retries
from mlops.monitor.logstream import Rows

PREDICT_ROUTES = ("v1_predict", "v2_infer")


def operational(rows: Rows, percentile: float) -> dict[str, Any]:
    """Latency is per request, not per row: the rows of one request share its time and latency in the log
    (a batch of 100 rows is one request that took what it took, not 100)."""
    n = len(rows)
    if n == 0:
        return {"rows": 0, "requests": 0}
    pairs = np.unique(np.stack([rows.ts, rows.latency_ms], axis=1), axis=0)
    latency = pairs[:, 1]
    span = float(rows.ts.max() - rows.ts.min())
    qs = {"p50": 50.0, "p95": 95.0, "p99": 99.0, f"p{percentile:g}": percentile}
    out: dict[str, Any] = {"rows": n, "requests": int(len(pairs)),
                           "latency_ms": {k: float(np.percentile(latency, q)) for k, q in qs.items()},
                           "latency_mean_ms": float(latency.mean()), "span_s": span,
                           "rows_per_s": n / span if span > 0 else None,
                           "requests_per_s": len(pairs) / span if span > 0 else None}
    return out


# --- request errors from Prometheus counters --------------------------------------------------------------------


def scrape_samples(url: str, setting: str, timeout: float = 10.0) -> list[Any]:
    """Every sample of a server's /metrics (prometheus_client's parser), retried; `setting` names the recipe key
    that gave the URL, for the error a user sees."""
    from prometheus_client.parser import text_string_to_metric_families

    token = os.environ.get("MLOPS_SERVE_TOKEN")  # a server started with one asks it for /metrics too
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})

    def fetch() -> str:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - a URL the recipe names
            return str(resp.read().decode("utf-8", "replace"))

    try:
        text = with_retries(fetch, f"scrape {url}")
    except OSError as exc:
        raise MlopsError(f"cannot scrape {url} ({setting}): {exc}") from None
    try:
        return [s for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError as exc:
        raise MlopsError(f"{url} ({setting}) is not Prometheus text: {exc}") from None


def scrape_requests(url: str, model: str, timeout: float = 10.0) -> dict[str, float]:
    """Predict requests served so far by status ({"200": 1234.0, "400": 5.0, ...}) from a server's /metrics."""
    counts: dict[str, float] = {}
    for sample in scrape_samples(url, "monitor.error_rate.metrics_url", timeout):
        labels = sample.labels
        if sample.name == "mlops_requests_total" and labels.get("model") == model \
                and labels.get("route") in PREDICT_ROUTES:
            status = labels.get("status", "?")
            counts[status] = counts.get(status, 0.0) + float(sample.value)
    return counts


def error_rate(previous: dict[str, float] | None, current: dict[str, float], count_4xx: bool) -> dict[str, Any]:
    """Requests and errors since the previous scrape. A counter below its previous value means the server
    restarted: everything it counted since is new."""
    prev = previous or {}
    restarted = any(current.get(s, 0.0) < v for s, v in prev.items())
    delta = {s: v - (0.0 if restarted else prev.get(s, 0.0)) for s, v in current.items()}
    total = sum(delta.values())

    def failed(status: str) -> bool:
        return status.startswith("5") or (count_4xx and status.startswith("4"))

    errors = sum(v for s, v in delta.items() if failed(s))
    return {"requests": total, "errors": errors, "rate": errors / total if total else None,
            "by_status": {s: v for s, v in sorted(delta.items()) if v}, "restarted": restarted,
            "counted": "4xx and 5xx" if count_4xx else "5xx"}


# --- the server's memory, from its process metrics --------------------------------------------------------------

MB = 1e6  # the recipe's max_memory_growth_mb is in MB of 10^6 bytes, as the alert rule's bound


def scrape_memory(url: str, timeout: float = 10.0) -> dict[str, float] | None:
    """The serving process's resident memory now: {"ts", "rss_bytes", "process_start"} from its /metrics
    (prometheus_client's process collector); None when the server exports no process metrics (not Linux)."""
    values = {s.name: float(s.value) for s in scrape_samples(url, "monitor.resources.metrics_url", timeout)
              if s.name in ("process_resident_memory_bytes", "process_start_time_seconds")}
    if "process_resident_memory_bytes" not in values:
        return None
    return {"ts": time.time(), "rss_bytes": values["process_resident_memory_bytes"],
            "process_start": values.get("process_start_time_seconds", 0.0)}


def memory_growth(current: dict[str, float], earlier: list[dict[str, float]], window_s: float) -> dict[str, Any]:
    """How much the server's resident memory grew over the last `window_s`: from the oldest earlier sample of
    the same process (same start time) within the window, else from the newest one before it, that growth
    scaled to the window (the average rate). `earlier`: previous runs' samples, any order. A restarted server's
    samples are another process's: growth is measured again from its first scrape."""
    same = sorted((s for s in earlier if s.get("process_start") == current["process_start"]
                   and s["ts"] < current["ts"]), key=lambda s: s["ts"])
    out: dict[str, Any] = {"sample": current, "rss_mb": current["rss_bytes"] / MB, "growth_mb": None}
    if not same:
        return out
    inside = [s for s in same if s["ts"] >= current["ts"] - window_s]
    since = inside[0] if inside else same[-1]
    span = current["ts"] - since["ts"]
    growth = (current["rss_bytes"] - since["rss_bytes"]) / MB
    if span > window_s:
        growth *= window_s / span
    return out | {"growth_mb": growth, "since_ts": since["ts"], "since_rss_mb": since["rss_bytes"] / MB,
                  "span_s": span}


def server_memory(url: str, window_s: float, stored_windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The `operations.memory` section of a run's latest window: the server's resident memory now and its growth
    since the samples earlier runs kept in their windows (`stored_windows`: the store's records)."""
    current = scrape_memory(url)
    if current is None:
        return {"url": url, "growth_mb": None, "skipped": f"{url} exports no process_resident_memory_bytes"}
    earlier = [m["sample"] for w in stored_windows
               if (m := (w["summary"].get("operations") or {}).get("memory")) and m.get("url") == url
               and "sample" in m]
    return memory_growth(current, earlier, window_s) | {"url": url}
