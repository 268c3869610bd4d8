"""What the canary did during a rollout step, read from a running `mlops serve`, and the step's verdict.

Two sources, each giving the difference between two snapshots (so a step is judged on its own window only):
- `MetricsEndpoint`: the server's Prometheus text at `/metrics`: predict requests and 5xx answers of one
  variant (`challenger` for `mlops serve --ab`; any for a dedicated canary server), its p99 latency estimated
  from the histogram as PromQL's `histogram_quantile` does, and shadow rows compared and disagreeing.
- `PredictionLogSource`: the SQLite prediction log (table `predictions`): rows answered by the variant and their
  exact p99 latency, and shadow disagreement by joining shadow rows to served rows on id. It has no errors
  (a failed request is not logged), so an error-rate check needs the metrics endpoint.

`decide` turns a reading and the recipe's `deploy.rollout.checks` into advance, wait or rollback.
"""

from __future__ import annotations

import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mlops.core.errors import MlopsError
from mlops.core.predlog_store import is_log_url, log_name, log_target, open_reader
from mlops.core.retry import with_retries
from mlops.recipe.deploy import RolloutChecks

PREDICT_ROUTES = ("v1_predict", "v2_infer")
ANY_VARIANT = "any"
Decision = Literal["advance", "wait", "rollback"]
REL_TOLERANCE = 1e-3  # regression: a shadow value off by more than 0.1 % disagrees (as the server counts it)


@dataclass
class Reading:
    """The canary's traffic in one window; None where the source cannot tell."""

    requests: float = 0.0
    errors: float | None = None
    p99_ms: float | None = None
    shadow_rows: float | None = None
    shadow_disagreements: float | None = None
    sources: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float | None:
        if self.errors is None or not self.requests:
            return None
        return self.errors / self.requests

    @property
    def disagreement(self) -> float | None:
        if not self.shadow_rows or self.shadow_disagreements is None:
            return None
        return self.shadow_disagreements / self.shadow_rows

    def merged(self, other: Reading) -> Reading:
        """This reading, with what it lacks taken from `other` (the first source that knows wins)."""
        return Reading(
            requests=self.requests or other.requests,
            errors=self.errors if self.errors is not None else other.errors,
            p99_ms=self.p99_ms if self.p99_ms is not None else other.p99_ms,
            shadow_rows=self.shadow_rows if self.shadow_rows else other.shadow_rows,
            shadow_disagreements=(self.shadow_disagreements if self.shadow_rows else other.shadow_disagreements),
            sources=[*self.sources, *other.sources])


class MetricsSource(Protocol):
    provides: frozenset[str]  # which of requests, errors, p99, shadow it can measure

    def snapshot(self) -> Any: ...

    def reading(self, before: Any, after: Any) -> Reading: ...


# --- Prometheus text from /metrics --------------------------------------------------------------------------

def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of every sample in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, dict(s.labels), float(s.value)) for family in text_string_to_metric_families(text)
            for s in family.samples]


def _increase(before: float, after: float) -> float:
    """A counter's increase; a counter that went down was reset (a restarted server), as PromQL assumes."""
    return after - before if after >= before else after


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """PromQL's histogram_quantile over cumulative (upper bound, count) buckets: linear within the bucket the
    rank falls in; the highest finite bound when it falls in +Inf; None without observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


class MetricsEndpoint:
    """The `/metrics` of a running `mlops serve` (or of the canary's pods, port-forwarded)."""

    provides = frozenset({"requests", "errors", "p99", "shadow"})

    def __init__(self, url: str, variant: str = "challenger", model: str | None = None, timeout: float = 10) -> None:
        self.url = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
        self.variant = variant
        self.model = model
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"metrics {self.url} (variant {self.variant})"

    def snapshot(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        token = os.environ.get("MLOPS_SERVE_TOKEN")  # a server started with one asks it for /metrics too
        request = urllib.request.Request(self.url, headers={"authorization": f"Bearer {token}"} if token else {})

        def fetch() -> str:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return str(resp.read().decode())

        try:
            text = with_retries(fetch, f"read {self.url}")
        except (urllib.error.URLError, OSError) as exc:
            raise MlopsError(f"cannot read the canary's metrics at {self.url}: {exc}") from None
        return {(name, tuple(sorted(labels.items()))): value for name, labels, value in parse_metrics(text)}

    def _ours(self, labels: dict[str, str]) -> bool:
        if self.model is not None and labels.get("model") != self.model:
            return False
        return self.variant == ANY_VARIANT or labels.get("variant") == self.variant

    def reading(self, before: dict[Any, float], after: dict[Any, float]) -> Reading:
        requests = errors = shadow_rows = shadow_dis = 0.0
        buckets: dict[float, float] = {}
        for (name, label_items), value in after.items():
            labels = dict(label_items)
            inc = _increase(before.get((name, label_items), 0.0), value)
            if name == "mlops_shadow_rows_total":
                shadow_rows += inc
            elif name == "mlops_shadow_disagreements_total":
                shadow_dis += inc
            elif labels.get("route") not in PREDICT_ROUTES or not self._ours(labels):
                continue
            elif name == "mlops_requests_total":
                requests += inc
                errors += inc if labels.get("status", "").startswith("5") else 0.0
            elif name == "mlops_request_latency_seconds_bucket":
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + inc
        p99 = histogram_quantile(0.99, list(buckets.items()))
        return Reading(requests=requests, errors=errors, p99_ms=None if p99 is None else p99 * 1000,
                       shadow_rows=shadow_rows, shadow_disagreements=shadow_dis, sources=[repr(self)])


# --- the prediction log -------------------------------------------------------------------------------------

class PredictionLogSource:
    """The prediction log `mlops serve` writes (SQLite, table `predictions`)."""

    provides = frozenset({"requests", "p99", "shadow"})

    def __init__(self, path: str | Path, variant: str = "challenger", model: str | None = None) -> None:
        self.path = log_target(path)  # a file, or a postgresql:// URL
        self.variant = variant
        self.model = model

    def __repr__(self) -> str:
        return f"prediction log {log_name(self.path)} (variant {self.variant})"

    def snapshot(self) -> float:
        if not is_log_url(self.path) and not Path(self.path).is_file():
            raise MlopsError(f"no prediction log at {self.path} (the --log of `mlops serve`)")
        return time.time()

    def reading(self, before: float, after: float) -> Reading:
        with open_reader(self.path) as reader:
            latencies = sorted(reader.latencies(before, after, None if self.variant == ANY_VARIANT else self.variant,
                                                self.model))
            pairs = reader.shadow_pairs(before, after)
        p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] if latencies else None
        disagreements = sum(_disagree(a, b) for a, b in pairs)
        return Reading(requests=float(len(latencies)), p99_ms=p99, shadow_rows=float(len(pairs)),
                       shadow_disagreements=float(disagreements), sources=[repr(self)])


def _disagree(shadow: dict[str, Any], served: dict[str, Any]) -> bool:
    if "label" in shadow or "label" in served:
        return shadow.get("label") != served.get("label")
    a, b = shadow.get("prediction"), served.get("prediction")
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return a != b
    return abs(a - b) > max(REL_TOLERANCE * max(abs(a), abs(b)), 1e-6)


# --- the verdict --------------------------------------------------------------------------------------------

@dataclass
class CheckResult:
    name: str  # error_rate | p99_ms | shadow_disagreement
    value: float | None
    threshold: float
    ok: bool | None  # None: not enough data yet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        value = "no data" if self.value is None else f"{self.value:.4g}"
        verdict = {True: "ok", False: "FAILED", None: "waiting"}[self.ok]
        return f"{self.name} {value} (max {self.threshold:g}) {verdict}"


def required_signals(checks: RolloutChecks) -> set[str]:
    needed = {"requests"}
    if checks.max_error_rate is not None:
        needed.add("errors")
    if checks.max_p99_ms is not None:
        needed.add("p99")
    if checks.max_shadow_disagreement is not None:
        needed.add("shadow")
    return needed


def decide(reading: Reading, checks: RolloutChecks) -> tuple[Decision, list[CheckResult]]:
    """Rollback when a check fails, advance when every configured check passed on at least `min_requests`
    canary requests, else wait for more traffic.

    An error count so high that the rate could not come back under its bound even if every remaining request
    of the `min_requests` succeeded rolls back at once: a broken canary is not kept on traffic for the sake
    of a sample size.
    """
    enough = reading.requests >= checks.min_requests
    results: list[CheckResult] = []
    if checks.max_error_rate is not None:
        hopeless = reading.errors is not None and reading.errors > checks.max_error_rate * checks.min_requests
        rate = reading.error_rate
        ok = None if rate is None or not (enough or hopeless) else rate <= checks.max_error_rate and not hopeless
        results.append(CheckResult("error_rate", rate, checks.max_error_rate, ok))
    if checks.max_p99_ms is not None:
        p99 = reading.p99_ms
        results.append(CheckResult("p99_ms", p99, checks.max_p99_ms,
                                   None if p99 is None or not enough else p99 <= checks.max_p99_ms))
    if checks.max_shadow_disagreement is not None:
        d = reading.disagreement
        rows_enough = (reading.shadow_rows or 0) >= checks.min_requests
        results.append(CheckResult("shadow_disagreement", d, checks.max_shadow_disagreement,
                                   None if d is None or not rows_enough else d <= checks.max_shadow_disagreement))
    if any(r.ok is False for r in results):
        return "rollback", results
    if enough and all(r.ok for r in results):
        return "advance", results
    return "wait", results
