"""`mlops sweep`: a hyperparameter study, then its best trial as a run. Its own module, so that `mlops run`
does not import Optuna."""

from __future__ import annotations

import argparse
import sys

from mlops.cli.output import emit
from mlops.cli.run import print_summary
from mlops.engine.validate import load_validated
from mlops.sweep.flow import sweep
from mlops.sweep.study import sweep_config


def cmd_sweep(args: argparse.Namespace) -> int:
    cfg = sweep_config(load_validated(args.recipe, args.overrides))  # a recipe without a sweep fails here
    for override in args.overrides:  # a swept key set here is overwritten by every trial: say so, not silently
        key = override.partition("=")[0].lstrip("+~")
        if key in cfg.params:
            print(f"mlops sweep: warning: '{override}' sets a swept key: each trial sets its own {key} "
                  f"(sweep.params); to hold it fixed, take it out of the recipe's sweep.params", file=sys.stderr)
    result = sweep(args.recipe, args.overrides, worker=args.worker, allow_failed_gates=args.allow_failed_gates)
    t = result.trials
    print(f"study {result.study_name}: {t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed "
          f"(storage {result.storage})")
    if result.best is not None and result.run is not None:
        best = result.best
        print(f"best trial {best.number}: {best.value:.5f}  {' '.join(best.overrides)}")
        print_summary(result.run, brief=False)
    emit(result)
    return 0
