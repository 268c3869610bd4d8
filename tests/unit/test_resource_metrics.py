"""The server's resource series (process collector, GPU collector over NVML), the monitor's memory growth and its
rule, and the MlopsMemoryGrowth alert as rendered.

NVML is faked where a GPU is needed (this machine has none): what is tested is the collector's mapping of NVML's
answers to series, and that no GPU, or a GPU that stops answering, is never an error."""

from __future__ import annotations

import ctypes.util
import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mlops.deploy.alerts import ALERT_NAMES, alert_rules
from mlops.monitor.operations import MB, memory_growth
from mlops.monitor.results import WindowSummary
from mlops.monitor.rules import RULES, memory_growth_rule
from mlops.recipe.deploy import AlertsConfig
from mlops.recipe.monitor import MonitorConfig
from mlops.serve import gpu
from mlops.serve.gpu import GpuCollector, gpu_collector, load_nvml, nvml_library_loads
from mlops.serve.metrics import ServeMetrics

GPU_NAMES = ("mlops_gpu_utilization_ratio", "mlops_gpu_memory_used_bytes", "mlops_gpu_memory_total_bytes")


def scraped(metrics: ServeMetrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    body, _ = metrics.render()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


class FakeNvmlError(Exception):
    pass


def fake_nvml(devices: list[tuple[int, int, int] | None], init_fails: bool = False) -> ModuleType:
    """A `pynvml` over `devices`: (utilisation %, used bytes, total bytes), or None for one that fails."""
    nvml = ModuleType("pynvml")
    nvml.NVMLError = FakeNvmlError  # type: ignore[attr-defined]

    def init() -> None:
        if init_fails:
            raise FakeNvmlError("NVML Shared Library Not Found")

    def handle(i: int) -> int:
        if devices[i] is None:
            raise FakeNvmlError("GPU is lost")
        return i

    def rates(h: int) -> Any:
        return SimpleNamespace(gpu=devices[h][0], memory=0)  # type: ignore[index]

    def memory(h: int) -> Any:
        return SimpleNamespace(used=devices[h][1], total=devices[h][2], free=devices[h][2] - devices[h][1])  # type: ignore[index]

    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = handle  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUtilizationRates = rates  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = memory  # type: ignore[attr-defined]
    return nvml


# --- the server's /metrics -------------------------------------------------------------------------------------


def test_server_metrics_describe_this_process() -> None:
    series = scraped(ServeMetrics())

    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
                 "process_open_fds", "process_start_time_seconds", "python_info"):
        assert name in series, name
    me = psutil.Process()
    assert series["process_start_time_seconds"][()] == pytest.approx(me.create_time(), abs=1.5)
    assert series["process_resident_memory_bytes"][()] == pytest.approx(me.memory_info().rss, rel=0.25)


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has NVML")
def test_no_gpu_no_series_and_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """For real: no NVML library here, pynvml installed, and not even imported for nothing."""
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    assert not nvml_library_loads()
    assert load_nvml() is None and gpu_collector() is None
    assert "pynvml" not in sys.modules
    assert not [n for n in scraped(ServeMetrics()) if n.startswith("mlops_gpu_")]


@pytest.mark.parametrize("module", [None, fake_nvml([], init_fails=True), fake_nvml([])],
                         ids=["not installed", "nvmlInit fails", "no device"])
def test_unusable_nvml_means_no_gpu_series(monkeypatch: pytest.MonkeyPatch, module: ModuleType | None) -> None:
    monkeypatch.setattr(gpu, "nvml_library_loads", lambda: True)  # past the probe: pynvml's own failures
    monkeypatch.setitem(sys.modules, "pynvml", module)  # None: `import pynvml` raises ImportError
    assert gpu_collector() is None
    assert not [n for n in scraped(ServeMetrics()) if n.startswith("mlops_gpu_")]


def test_gpu_series_map_nvml_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "nvml_library_loads", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([(37, 3_000_000_000, 80_000_000_000), (0, 0, 16_000_000_000)]))

    series = scraped(ServeMetrics())

    assert series["mlops_gpu_utilization_ratio"] == {(("gpu", "0"),): 0.37, (("gpu", "1"),): 0.0}
    assert series["mlops_gpu_memory_used_bytes"] == {(("gpu", "0"),): 3e9, (("gpu", "1"),): 0.0}
    assert series["mlops_gpu_memory_total_bytes"] == {(("gpu", "0"),): 80e9, (("gpu", "1"),): 16e9}


def test_a_gpu_that_stops_answering_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    devices: list[tuple[int, int, int] | None] = [(50, 1, 2), (60, 3, 4)]
    collector = GpuCollector(fake_nvml(devices))
    devices[0] = None  # lost after start

    families = {f.name: f for f in collector.collect()}

    assert {s.labels["gpu"] for s in families["mlops_gpu_utilization_ratio"].samples} == {"1"}
    devices[1] = None
    assert list(collector.collect()) == []  # no device answers: no family at all, not empty ones


# --- the monitor's memory growth -------------------------------------------------------------------------------


def sample(ts: float, rss_mb: float, start: float = 1000.0) -> dict[str, float]:
    return {"ts": ts, "rss_bytes": rss_mb * MB, "process_start": start}


def test_memory_growth_from_the_oldest_sample_within_the_window() -> None:
    now = sample(10_000, 900)
    earlier = [sample(5000, 100), sample(7000, 500), sample(9000, 800)]  # 5000 is beyond the hour

    out = memory_growth(now, earlier, 3600)

    assert out["growth_mb"] == pytest.approx(400) and out["since_ts"] == 7000 and out["span_s"] == 3000


def test_memory_growth_scaled_to_the_window_when_runs_are_further_apart() -> None:
    out = memory_growth(sample(10_000, 900), [sample(2800, 180)], 3600)  # 720 MB in 2 hours: 360 MB per hour
    assert out["growth_mb"] == pytest.approx(360)


def test_memory_growth_ignores_another_process_and_later_samples() -> None:
    now = sample(10_000, 900)
    assert memory_growth(now, [sample(9000, 100, start=1.0)], 3600)["growth_mb"] is None  # a restart
    assert memory_growth(now, [sample(11_000, 100)], 3600)["growth_mb"] is None
    assert memory_growth(now, [], 3600) == {"sample": now, "rss_mb": 900, "growth_mb": None}


def window(memory: dict[str, Any] | None) -> WindowSummary:
    return WindowSummary(index=0, start_ts=0.0, end_ts=1.0, start_iso="", end_iso="", start_rowid=1, end_rowid=2,
                         rows=2, judged=True, versions=[], operations={} if memory is None else {"memory": memory})


CFG = MonitorConfig.model_validate({"resources": {"metrics_url": "http://server:8080/metrics",
                                                  "max_memory_growth_mb": 256}})


def test_memory_growth_rule() -> None:
    grown = memory_growth(sample(10_000, 900), [sample(9000, 600)], 3600)
    steady = memory_growth(sample(10_000, 900), [sample(9000, 880)], 3600)

    fired = memory_growth_rule(window(grown), CFG, {})
    quiet = memory_growth_rule(window(steady), CFG, {})

    assert (fired.rule, fired.value, fired.threshold, fired.breach) == ("memory_growth", pytest.approx(300), 256, True)
    assert "600 -> 900 MB over 1000 s" in fired.reason
    assert quiet.breach is False and quiet.value == pytest.approx(20)
    assert "memory_growth" in RULES


@pytest.mark.parametrize(("cfg", "memory", "why"), [
    (CFG.model_copy(update={"resources": CFG.resources.model_copy(update={"enabled": False})}), None, "disabled"),
    (MonitorConfig(), None, "no monitor.resources.metrics_url"),
    (CFG, None, "latest window of a run only"),
    (CFG, {"growth_mb": None}, "first scrape of this server process"),
])
def test_memory_growth_rule_not_judged(cfg: MonitorConfig, memory: dict[str, Any] | None, why: str) -> None:
    obs = memory_growth_rule(window(memory), cfg, {})
    assert obs.breach is None and why in obs.reason


def test_the_error_rate_url_serves_the_memory_rule_too() -> None:
    cfg = MonitorConfig.model_validate({"error_rate": {"metrics_url": "http://server:8080/metrics"}})
    obs = memory_growth_rule(window(memory_growth(sample(10_000, 900), [sample(9000, 100)], 3600)), cfg, {})
    assert obs.breach is True  # the default bound: 512 MB


# --- the alert rule ----------------------------------------------------------------------------------------------


def rules_of(monitor: MonitorConfig) -> dict[str, dict[str, Any]]:
    text = alert_rules(AlertsConfig(), monitor, "quickstart")
    return {r["alert"]: r for r in yaml.safe_load(text)["groups"][0]["rules"]}


def test_memory_growth_alert_takes_the_monitors_bound_and_window() -> None:
    rule = rules_of(MonitorConfig.model_validate({"resources": {"max_memory_growth_mb": 300, "window": "2h"}}))[
        ALERT_NAMES["memory_growth"]]

    assert rule["expr"] == ('(delta(process_resident_memory_bytes[7200s]) and on (instance, job) '
                            'mlops_model_info{model="quickstart"}) > 300000000')
    assert rule["labels"] == {"severity": "page", "rule": "memory_growth", "model": "quickstart"}


def test_memory_growth_alert_off_with_the_monitor_rule() -> None:
    rules = rules_of(MonitorConfig.model_validate({"resources": {"enabled": False}}))
    assert ALERT_NAMES["memory_growth"] not in rules and ALERT_NAMES["latency"] in rules
