"""GPU utilisation and memory for the server's /metrics, read through NVML (`pynvml`, from nvidia-ml-py) at
each scrape. No torch: NVML is the driver's own library, and it costs a few microseconds per device.

Without a GPU (no NVML library, no driver, no device, or nvidia-ml-py not installed) there is no collector, and
nothing is raised: a CPU server's /metrics simply has no `mlops_gpu_*` lines. Why is said once, at debug level,
when the server starts. The serving image (mlops/deploy/container.py) does not install nvidia-ml-py: it runs
ONNX Runtime's CPU build, and GPU serving on KServe goes through Triton, which exports its own GPU metrics.

Series (one per device, labelled by its NVML index; the Grafana dashboard reads these names):
- `mlops_gpu_utilization_ratio{gpu}`: the share of the last sample period a kernel ran (0-1);
- `mlops_gpu_memory_used_bytes{gpu}` and `mlops_gpu_memory_total_bytes{gpu}`: device memory, all processes'.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)
NVML_LIBRARY = "libnvidia-ml.so.1"  # what pynvml loads on Linux, installed with the NVIDIA driver


def nvml_library_loads() -> bool:
    """Whether the driver's NVML library loads (Linux; elsewhere pynvml is left to find it). Probed before
    pynvml is imported, so that a server on a machine without a GPU imports nothing for GPUs (its serving image
    pins what it imports: mlops/deploy/container.py)."""
    if not sys.platform.startswith("linux"):
        return True
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True


def load_nvml() -> ModuleType | None:
    """`pynvml`, initialised; None when there is no usable NVML (nothing to report, nothing wrong)."""
    if not nvml_library_loads():
        log.debug("no GPU metrics: no NVML library (%s), no NVIDIA driver here", NVML_LIBRARY)
        return None
    try:
        import pynvml
    except ImportError:
        log.debug("no GPU metrics: nvidia-ml-py is not installed")
        return None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:  # no library, no driver, a driver/library mismatch...
        log.debug("no GPU metrics: NVML is not usable here (%s)", exc)
        return None
    if count == 0:
        log.debug("no GPU metrics: NVML sees no device")
        return None
    return pynvml


class GpuCollector:
    """A prometheus_client collector over NVML. `nvml` is the initialised `pynvml` module (`load_nvml()`); a
    device that fails to answer at a scrape (lost, reset) is left out of that scrape only."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self._failed: set[int] = set()  # devices whose failure was already logged

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nvml = self.nvml
        utilization = GaugeMetricFamily("mlops_gpu_utilization_ratio", "Share of the last sample period (1/6 s "
                                        "to 1 s, by device) during which a kernel ran on the GPU", labels=["gpu"])
        used = GaugeMetricFamily("mlops_gpu_memory_used_bytes", "GPU memory in use, by every process",
                                 labels=["gpu"])
        total = GaugeMetricFamily("mlops_gpu_memory_total_bytes", "GPU memory installed", labels=["gpu"])
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            self._once(-1, exc)
            return
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError as exc:
                self._once(index, exc)
                continue
            label = [str(index)]
            utilization.add_metric(label, rates.gpu / 100.0)  # NVML reports whole percents
            used.add_metric(label, float(memory.used))
            total.add_metric(label, float(memory.total))
        # an empty family renders as HELP/TYPE lines only: leave it out so that no GPU means no mlops_gpu_* at all
        for family in (utilization, used, total):
            if family.samples:
                yield family

    def _once(self, index: int, exc: Exception) -> None:
        if index not in self._failed:
            self._failed.add(index)
            log.debug("GPU %s did not answer NVML (%s): left out of the metrics", index, exc)


def gpu_collector() -> GpuCollector | None:
    """The collector for this machine's GPUs, or None when it has none NVML can see."""
    nvml = load_nvml()
    return None if nvml is None else GpuCollector(nvml)
