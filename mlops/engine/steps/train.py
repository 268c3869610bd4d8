"""Fit the LightningModule, in this process or in a worker subprocess (DDP, several devices).

The step works in its cache working directory (see `mlops.engine.cache`): the fit's checkpoints and
`mlflow_run.json`, the MLflow run its epochs stream to, stay there until training finished, so running the
same command again after a kill resumes the fit and the run (`mlops.engine.execute` reads the record).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mlops.core.atomic import write_text
from mlops.core.errors import MlopsError
from mlops.engine.children import clean_env, die_with_parent
from mlops.engine.results import PreprocessResult
from mlops.engine.steps.common import RunContext
from mlops.train import worker
from mlops.train.fit import TrainJob, fit, load_result
from mlops.train.pruning import TrialPruned
from mlops.train.result import RUN_RECORD, TrackingLink, TrainResult, checkpoint_dir


def train(ctx: RunContext, out: Path) -> TrainResult:
    r = ctx.loaded.recipe
    prep = ctx.result("preprocess", PreprocessResult)
    link = TrackingLink(tracking_uri=ctx.tracking_uri, run_id=ctx.run_id) if ctx.run_id else None
    if link is not None:
        write_text(out / RUN_RECORD, link.model_dump_json())
    (out / "train_result.json").unlink(missing_ok=True)  # a killed attempt's: never read as this fit's
    job = TrainJob(
        model=r.model, datamodule=r.data.datamodule, trainer=r.trainer, seed=r.seed, task=prep.task,
        input_dim=prep.n_features, output_dim=1 if prep.task == "regression" else len(prep.labels or []),
        arrays=str(ctx.dir("preprocess") / "arrays.npz"), out_dir=str(out), prune=ctx.prune,
        inputs=prep.inputs, pixel_stats=prep.pixel_stats, recipe_dir=str(ctx.loaded.path.parent), tracking=link,
        system_metrics=r.tracking.system_metrics,
    )
    if r.trainer.multiprocess:
        result = _train_in_worker(job, out)
    else:
        fitted = fit(job)
        assert fitted is not None
        result = fitted
    if result.pruned:
        # never cache or export a model the pruner stopped half-way, nor resume it
        shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
        raise TrialPruned(result)
    # finished: model.pt holds the best epoch's weights, and the checkpoints would only weigh on the cache
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
    return result


def _train_in_worker(job: TrainJob, out: Path) -> TrainResult:
    """DDP relaunches the current command per rank; a dedicated worker module makes that harmless."""
    job_file = out / "job.json"
    job_file.write_text(job.model_dump_json(indent=2))
    # the worker is named through its imported module, not a string, so it is part of this step's code version
    proc = subprocess.run([sys.executable, "-m", worker.__name__, str(job_file)], env=clean_env(),
                          preexec_fn=die_with_parent())
    result_file = out / "train_result.json"
    if proc.returncode != 0 or not result_file.is_file():
        raise MlopsError(f"training worker failed with exit code {proc.returncode} (its output is above)")
    return load_result(out)
