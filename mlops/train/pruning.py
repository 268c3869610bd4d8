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

                from mlops.recipe.schema import SweepConfig
                from mlops.sweep.study import pruner

                optuna.logging.set_verbosity(optuna.logging.WARNING)
                cfg = SweepConfig(pruner=self.link.pruner, pruner_startup_trials=self.link.startup_trials,
                                  pruner_warmup_epochs=self.link.warmup_epochs)
                study = optuna.load_study(study_name=self.link.study_name, storage=self.link.storage,
                                          pruner=pruner(cfg))
                self._trial = optuna.trial.Trial(study, self.link.trial_id)
            return self._trial

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
                    print(f"trial pruned at epoch {trainer.current_epoch + 1} ({self.link.metric} {float(value):.4f})",
                          flush=True)

    OptunaPruning.__module__ = __name__
    OptunaPruning.__qualname__ = "OptunaPruning"
    return OptunaPruning
