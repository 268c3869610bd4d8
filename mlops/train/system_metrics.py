"""The machine's CPU, memory, disk, network and GPU while a model trains, recorded in its MLflow run by MLflow's
own system metrics monitor (`system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`,
`system/gpu_0_utilization_percentage` with nvidia-ml-py and a GPU, ...; psutil reads the rest).

MLflow samples every 10 s by default, longer than a quickstart fit: here every `SAMPLING_INTERVAL_S`, each
sample logged as one step, and one more when the fit ends. The monitor is started by global rank 0 only (it measures the whole machine, not a
process) and stopped when the fit ends; a resumed fit goes on from the run's last system step.
Off with `tracking.system_metrics: false`.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import Callback

from mlops.train.result import TrackingLink

SAMPLING_INTERVAL_S = 1.0


class SystemMetrics(Callback):
    """Runs MLflow's `SystemMetricsMonitor` on the run of `link` from the start of training to its end. A
    monitor that cannot start (no psutil, tracking unreachable) never stops the training."""

    def __init__(self, link: TrackingLink, interval_s: float = SAMPLING_INTERVAL_S) -> None:
        self.link = link
        self.interval_s = interval_s
        self._monitor: Any = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # it says "Started/Stopping ..." at INFO on every fit, and warns that a CPU machine has no GPU
            logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
            self._monitor = SystemMetricsMonitor(self.link.run_id, sampling_interval=self.interval_s,
                                                 samples_before_logging=1, resume_logging=True,
                                                 tracking_uri=self.link.tracking_uri)
            self._monitor.start()
        except Exception as exc:  # noqa: BLE001 - see the class: never fatal to the training
            logging.getLogger(__name__).warning("system metrics are not recorded: %s", exc)
            self._monitor = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.stop()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sampling, and log a last sample at the end of the fit: MLflow's loop drops the samples of an
        unfinished interval, so a fit shorter than one would otherwise leave no system metric at all."""
        if self._monitor is None:
            return
        monitor, self._monitor = self._monitor, None
        try:
            monitor.finish()
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:  # noqa: BLE001 - see the class
            logging.getLogger(__name__).warning("the last system metrics were not recorded: %s", exc)
