"""Report each epoch's value to an Optuna trial and stop training when the pruner says so.

Only global rank 0 talks to the study; its decision is broadcast so every DDP rank stops together.

`PruneLink` and `TrialPruned` are plain classes: the sweep's coordinator and a trial's launcher import
them without importing Lightning (about 10 s). `OptunaPruning` subclasses a Lightning callback, so it
is defined on first use (`from mlops.train.pruning import OptunaPruning` works as usual).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from mlops.core.log import say


class PruneLink(BaseModel):
    storage: str
    study_name: str
    trial_id: int
    metric: str
    # the recipe's sweep.pruner and its settings: the trial process must ask the same pruner the study
    # was configured with, not Optuna's default (a MedianPruner that waits for 5 complete trials)
    pruner: str = "median"
    startup_trials: int = 2
    warmup_epochs: int = 1


def make_pruner(kind: str, startup_trials: int, warmup_epochs: int) -> Any:
    """The Optuna pruner a sweep is configured with (`sweep.pruner`): the study and every trial process ask
    the same one."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup_epochs))
    return optuna.pruners.NopPruner()


class TrialPruned(Exception):
    """Raised after a pruned fit so the half-trained model is never cached or exported."""


def __getattr__(name: str) -> Any:
    if name == "OptunaPruning":
        return _optuna_pruning()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _optuna_pruning() -> type:
    from lightning.pytorch.callbacks import Callback

    class OptunaPruning(Callback):
        def __init__(self, link: PruneLink) -> None:
            self.link = link
            self.pruned = False
            self._trial: Any = None

        def _open(self) -> Any:
            if self._trial is None:
                import optuna

                optuna.logging.set_verbosity(optuna.logging.WARNING)
                study = optuna.load_study(study_name=self.link.study_name, storage=self.link.storage,
                                          pruner=make_pruner(self.link.pruner, self.link.startup_trials,
                                                             self.link.warmup_epochs))
                self._trial = optuna.trial.Trial(study, self.link.trial_id)
            return self._trial

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            """A trial resumed from a killed one's checkpoint is a new Optuna trial: it reports the epochs the
            checkpoint holds first, so the pruner compares it over all its epochs."""
            if not trainer.is_global_zero:
                return
            for callback in trainer.callbacks:
                for row in getattr(callback, "rows", []) if type(callback).__name__ == "EpochHistory" else []:
                    if self.link.metric in row:
                        self._open().report(float(row[self.link.metric]), step=int(row["epoch"]))

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            prune = False
            value = trainer.callback_metrics.get(self.link.metric)
            if trainer.is_global_zero and value is not None:
                trial = self._open()
                trial.report(float(value), step=trainer.current_epoch)
                prune = trial.should_prune()
            prune = trainer.strategy.broadcast(prune)
            if prune:
                self.pruned = True
                trainer.should_stop = True
                if trainer.is_global_zero:
                    say(f"trial pruned at epoch {trainer.current_epoch + 1} ({self.link.metric} {float(value):.4f})")

    OptunaPruning.__module__ = __name__
    OptunaPruning.__qualname__ = "OptunaPruning"
    return OptunaPruning
