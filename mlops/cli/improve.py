"""`mlops retrain`, `approve` and `reject`: the improvement loop."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from mlops import flows
from mlops.cli.output import emit
from mlops.engine.validate import load_validated
from mlops.improve.retrain import (
    RetrainOptions,
    RetrainOutcome,
    approve,
    audit_for,
    preflight,
    reject,
    retrain_recipe,
)

EXIT_SKIPPED = 1  # nothing was trained: no trigger, a limit, or no new labelled rows
EXIT_STOPPED = 3  # trained, and stopped (gates, policy) or rolled back: the champion did not change
EXIT_CODES = {"skipped": EXIT_SKIPPED, "stopped": EXIT_STOPPED, "rolled_back": EXIT_STOPPED}


def _rollout_options(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("local_port", args.local_port), ("metrics_url", args.metrics_url),
                              ("live_url", args.live_url)) if v is not None}


def cmd_retrain(args: argparse.Namespace) -> int:
    loaded = load_validated(args.recipe, args.overrides)  # a bad recipe fails here, before anything starts
    if preflight(loaded, args.reason, args.force, audit_for(loaded), time.time()).refusal:
        # recorded, without starting Prefect for nothing
        outcome = retrain_recipe(args.recipe, args.overrides, args.reason,
                                 RetrainOptions(by=args.by, force=args.force))
    else:
        flows.prepare_flow_run()
        outcome = flows.retrain(args.recipe, args.overrides, args.reason, args.by, args.force,
                                _rollout_options(args) or None)
    return _finish(outcome)


def cmd_approve(args: argparse.Namespace) -> int:
    outcome = approve(args.run, args.by, args.reason, rollout_options=_rollout_options(args), log=args.log)
    _resume(outcome, approved=True, note=args.reason)
    return _finish(outcome)


def cmd_reject(args: argparse.Namespace) -> int:
    outcome = reject(args.run, args.by, args.reason, log=args.log)
    _resume(outcome, approved=False, note=args.reason)
    return _finish(outcome)


def _resume(outcome: RetrainOutcome, approved: bool, note: str | None) -> None:
    """The retrain's flow run, when it is paused on a Prefect server waiting for this answer, resumes with it
    (and ends: the answer was acted on here). Without a server there is none: the audit log was the way."""
    if not outcome.run_id:
        return
    who = outcome.decision.by if outcome.decision else "mlops approve"
    try:
        paused = flows.resume_paused_retrain(outcome.run_id, approved, who, note or "")
    except Exception as exc:  # the answer is recorded and acted on; only the flow run's page lags behind
        print(f"  could not resume a paused Prefect flow run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    if paused:
        print(f"  resumed paused Prefect flow run {paused}")


def _finish(outcome: RetrainOutcome) -> int:
    print(outcome.message)
    if outcome.run_id:
        print(f"  run        {outcome.run_id}  (model {outcome.model}/{outcome.version or '-'})")
    refresh = outcome.refresh
    if refresh is not None and refresh.path:
        print(f"  data       {refresh.path}: {refresh.reference_rows} reference + "
              f"{refresh.production_rows} production rows ({refresh.fingerprint})")
    for stage in outcome.stages:
        print(f"  {stage.stage:<10} {'passed' if stage.passed else 'FAILED'}: {stage.summary}")
    emit(outcome)
    return EXIT_CODES.get(outcome.outcome, 0)
