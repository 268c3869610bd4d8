"""The study report on the sweep's parent run: best value and parameters, trial counts, and plots of
the optimisation history and parameter importances."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mlops.sweep.study import counts


def log_study(client: Any, run_id: str, study: Any) -> None:
    from mlflow.entities import Metric

    best = study.best_trial
    now = 0
    client.log_batch(run_id, metrics=[Metric("best/value", best.value, now, 0)]
                     + [Metric(f"trials/{k}", v, now, 0) for k, v in counts(study).items()])
    client.set_tag(run_id, "mlops.best_trial", str(best.number))
    for key, value in best.params.items():
        client.set_tag(run_id, f"mlops.best.{key}", str(value))
    with tempfile.TemporaryDirectory() as d:
        for path in study_plots(study, Path(d)):
            client.log_artifact(run_id, str(path), "study")


def study_plots(study: Any, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    written = []
    for name, plot in (("optimization_history.png", vis.plot_optimization_history),
                       ("param_importances.png", vis.plot_param_importances)):
        try:
            ax = plot(study)
        except (ValueError, RuntimeError):  # importances need two complete trials with varying params
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
