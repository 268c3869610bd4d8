"""The retraining pipeline: trigger -> limits -> data refresh -> training with gates vs the champion ->
decision -> (approval) -> shadow -> canary -> champion, or a stop with the reason, or a rollback.

`retrain_recipe(recipe, overrides, reason)` is a plain function (the `mlops-retrain` Prefect flow calls it;
training inside is the `mlops-run` flow, one task per step). `approve` and `reject` continue or end a retrain
that waits for a person. Every decision goes to the audit log (`mlops.improve.audit`) and to MLflow tags
(`mlops.improve.*`) on the training run and the model version, with who or what decided and the evidence.

Training, the registry and the rollout are parameters (defaults: the engine, MLflow, `default_rollout`), so
the decision logic is tested without training and the live stages run against whatever serves the model.
"""

from __future__ import annotations

import getpass
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops.core.errors import GateError, MlopsError
from mlops.core.refs import CHALLENGER, CHAMPION
from mlops.core.registry import tracking_uri
from mlops.core.workspace import workspace
from mlops.engine.runner import run_flow
from mlops.engine.validate import load_validated
from mlops.improve import audit as events
from mlops.improve.audit import AuditLog, limit_refusal
from mlops.improve.decide import AWAIT, PROMOTE, STOP, Decision, promotion_decision
from mlops.improve.refresh import Refresh, default_log, refresh_data
from mlops.improve.registry import MlflowRegistry, Registry, tag_values
from mlops.improve.rollout import Rollout, RolloutTarget, canary_steps, default_rollout
from mlops.improve.triggers import MANUAL, Trigger, read_alerts, resolve_trigger
from mlops.recipe import LoadedRecipe, load_recipe
from mlops.recipe.improve import RetrainConfig
from mlops.recipe.metrics import task_metrics
from mlops.sweep.flow import sweep


@dataclass
class Trained:
    """What training produced: the registered version and how its gates went."""

    passed: bool
    run_id: str | None
    version: str | None
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # with each `vs: champion` comparison
    failures: list[str] = field(default_factory=list)
    report: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


Trainer = Callable[[LoadedRecipe, list[str], str, Registry], Trained]


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# --- before training: is there a reason, is it allowed ------------------------------------------------------


def preflight(loaded: LoadedRecipe, reason: str, force: bool, audit: AuditLog, now: float) -> tuple[Trigger, str | None]:
    """The trigger this retrain answers, and why it must not run (None: it may). Reads only."""
    r = loaded.recipe
    records = audit.records(r.model_name)
    started = [float(x["ts"]) for x in records if x.get("event") == events.STARTED]
    trigger = resolve_trigger(reason, r.improve.triggers, read_alerts(workspace().monitor, r.model_name),
                              max(started) if started else None)
    if trigger.refusal:
        return trigger, trigger.refusal
    refusal = limit_refusal(records, r.improve.limits.cooldown_minutes, r.improve.limits.max_per_day, now)
    if refusal and not force:
        return trigger, f"{refusal}; --force overrides (and is recorded)"
    return trigger, None


def _check(loaded: LoadedRecipe) -> None:
    r = loaded.recipe
    if not r.registry.enabled:
        raise MlopsError("retraining decides between registered models: set registry.enabled: true")
    if r.improve.retrain.mode == "sweep" and r.sweep is None:
        raise MlopsError("improve.retrain.mode is 'sweep' but the recipe has no `sweep:` section: add one "
                         "(e.g. `- sweep: mlp_small` in its defaults) or use mode 'same'")


def retrain_recipe(recipe: str, overrides: list[str], reason: str, *, by: str | None = None, force: bool = False,
                   trainer: Trainer | None = None, rollout: Rollout | None = None,
                   rollout_options: dict[str, Any] | None = None, registry: Registry | None = None,
                   audit: AuditLog | None = None, now: float | None = None) -> dict[str, Any]:
    """Run the whole pipeline once. Returns what happened: `outcome` is skipped, stopped, awaiting_approval,
    promoted or rolled_back, with the run, version, decision and evidence.

    `by` is who asked (default: the user for a manual retrain, else the trigger); `force` ignores the limits
    (recorded); `rollout` replaces the default strategy, `rollout_options` configure it (`local_port`,
    `metrics_url`)."""
    loaded = load_validated(recipe, overrides)
    _check(loaded)
    r = loaded.recipe
    model = r.model_name
    audit = audit or AuditLog()
    now = time.time() if now is None else now
    rid = f"{datetime.fromtimestamp(now, UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    base = {"model": model, "retrain_id": rid, "recipe": str(loaded.path), "overrides": list(overrides)}
    with audit.locked():  # check and claim the slot atomically: two triggers at once cannot both pass
        trigger, refusal = preflight(loaded, reason, force, audit, now)
        who = by or (f"user:{user()}" if trigger.kind == MANUAL else f"trigger:{trigger.kind or 'none'}")
        base |= {"trigger": trigger.kind, "reason": trigger.reason}
        if refusal:
            decided_by = "limits" if trigger.refusal is None else "trigger"
            audit.append(events.SKIPPED, **base, by=decided_by, requested_by=who, why=refusal, evidence=trigger.evidence,
                         ts=now)
            return base | {"outcome": "skipped", "message": f"retrain of {model} skipped: {refusal}"}
        overridden = limit_refusal(audit.records(model), r.improve.limits.cooldown_minutes,
                                   r.improve.limits.max_per_day, now)
        refresh = refresh_data(loaded, now)
        if refresh.path is None:
            why = (f"only {refresh.production_rows} labelled production rows in {refresh.log} "
                   f"(improve.refresh.min_production_rows={r.improve.refresh.min_production_rows}): record "
                   "feedback for served predictions first (POST /v1/feedback or mlops feedback FILE)")
            audit.append(events.SKIPPED, **base, by="refresh", requested_by=who, why=why, evidence=refresh.summary(),
                         ts=now)
            return base | {"outcome": "skipped", "message": f"retrain of {model} skipped: {why}",
                           "refresh": refresh.summary()}
        audit.append(events.STARTED, **base, by=who, forced=bool(force and overridden), overridden=overridden,
                     evidence=trigger.evidence, ts=now)
    audit.append(events.REFRESHED, **base, by="refresh", fingerprint=refresh.fingerprint, evidence=refresh.summary())
    print(f"mlops: retrain {rid} of {model} ({trigger.kind}: {trigger.reason}) on refreshed data {refresh.path}: "
          f"{refresh.reference_rows} reference + {refresh.production_rows} production rows", flush=True)
    if registry is None:
        registry = MlflowRegistry(tracking_uri(r.tracking.uri))
    before = registry.aliases(model)
    try:
        trained = (trainer or train_with_engine)(loaded, [*overrides, *refresh.overrides], str(refresh.fingerprint),
                                                 registry)
    except BaseException as exc:
        audit.append(events.FAILED, **base, by="engine", why=f"{type(exc).__name__}: {exc}"[:4000])
        raise
    base |= {"run_id": trained.run_id, "version": trained.version}
    _record_training(registry, audit, base, trigger, refresh, trained, who)
    result = base | {"refresh": refresh.summary(), "champion_before": before.get(CHAMPION),
                     "gates": {"passed": trained.passed, "failures": trained.failures, "report": trained.report},
                     "metrics": trained.metrics}
    if trained.version is None:
        decision = Decision(STOP, "engine", "training registered no model version", {"failures": trained.failures})
        _record_decision(registry, audit, base, decision)
        return result | _stopped(model, decision)
    if before.get(CHAMPION) is None:  # the engine made the first eligible version champion: nothing to compare
        if trained.passed:
            decision = Decision(PROMOTE, "engine", "there was no champion: the engine made this version champion")
            _record_decision(registry, audit, base, decision)
            audit.append(events.PROMOTED, **base, by="engine", previous_champion=None)
            return result | {"outcome": "promoted", "decision": _as_dict(decision), "champion": trained.version,
                             "message": f"{model}/{trained.version} is champion (there was none)"}
    if before.get(CHAMPION) == trained.version:
        decision = Decision(STOP, "engine", f"the retrained model is byte-identical to the champion "
                            f"{model}/{trained.version}: nothing to promote")
        _record_decision(registry, audit, base, decision)
        return result | _stopped(model, decision)
    decision = promotion_decision(r.improve.promotion.policy, trained.passed, trained.failures, trained.verdicts,
                                  _directions(loaded))
    pending = {"train_overrides": [*overrides, *refresh.overrides], "challenger_before": before.get(CHALLENGER),
               "champion_before": before.get(CHAMPION)}
    _record_decision(registry, audit, base, decision, pending)
    if decision.action == STOP:
        if trained.passed:  # the engine made it challenger; a stopped model must not stay one
            restore_challenger(registry, model, trained.version, before.get(CHALLENGER))
        return result | _stopped(model, decision)
    if decision.action == AWAIT:
        return result | {"outcome": "awaiting_approval", "decision": _as_dict(decision),
                         "message": f"{model}/{trained.version} passed its gates and waits for a person ({decision.reason})"
                                    f": mlops approve {trained.run_id}  or  mlops reject {trained.run_id}"}
    return result | roll_out(loaded, base, trained.version, before.get(CHAMPION), before.get(CHALLENGER), registry,
                             audit, rollout, decided_by=decision.by, options=rollout_options)


# --- training ---------------------------------------------------------------------------------------------


def train_with_engine(loaded: LoadedRecipe, overrides: list[str], fingerprint: str, registry: Registry) -> Trained:
    """Train with the engine (`mlops-run`, or the recipe's sweep in sweep mode), gates vs the champion included."""

    cfg: RetrainConfig = loaded.recipe.improve.retrain
    try:
        if cfg.mode == "sweep":

            summary = sweep(str(loaded.path), [*overrides, f"sweep.n_trials={cfg.budget}"])
        else:

            summary = run_flow(str(loaded.path.resolve()), overrides, return_state=True).result()
    except GateError as exc:
        found = registry.version_for(loaded.recipe.model_name, fingerprint)
        failures = [line.strip() for line in str(exc).splitlines() if line.strip().startswith("gate ")]
        version, run_id = found if found else (None, None)
        return Trained(False, run_id, version, failures=failures or [str(exc).splitlines()[0]])
    report = summary["gates"]["report"]
    verdicts = summary["gates"]["verdicts"]
    report_json = Path(report).with_suffix(".json")
    if report_json.is_file():  # the report keeps each comparison's interval, the summary only its text
        verdicts = json.loads(report_json.read_text()).get("gates", verdicts)
    return Trained(summary["gates"]["outcome"] != "failed", summary["run_id"], summary["model_version"], verdicts,
                   summary["gates"]["failures"], report, summary.get("metrics", {}))


def _directions(loaded: LoadedRecipe) -> dict[str, str]:

    custom = {n: c.direction for n, c in loaded.recipe.evaluate.custom_metrics.items()}
    return dict(task_metrics("auto")) | custom


# --- after the decision: the live stages ----------------------------------------------------------------


def roll_out(loaded: LoadedRecipe, base: dict[str, Any], version: str, champion_before: str | None,
             challenger_before: str | None, registry: Registry, audit: AuditLog, rollout: Rollout | None,
             decided_by: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """challenger -> shadow window -> canary steps -> champion; the first failing stage rolls back."""
    r = loaded.recipe
    cfg = r.improve.rollout
    model = r.model_name
    stages: list[dict[str, Any]] = []
    strategy = None
    target = RolloutTarget(model, version, champion_before,
                           Path(r.improve.refresh.log).expanduser() if r.improve.refresh.log else default_log(model),
                           cfg.max_accuracy_drop, cfg.poll_s)
    if cfg.mode == "staged":
        strategy = rollout or default_rollout(loaded, **(options or {}))
        walked = [strategy.shadow(target, cfg.shadow)] if cfg.shadow.enabled else []
        if all(s.passed for s in walked):
            walked += strategy.canary(target, canary_steps(loaded))
        for result in walked:
            stages.append(result.record())
            name = result.stage + (f"_{result.percent}" if result.percent else "")
            print(f"mlops: {name}: {'PASSED' if result.passed else 'FAILED'} ({result.summary})", flush=True)
            audit.append(events.STAGE, **base, by=f"rollout:{name}", stage=result.stage, percent=result.percent,
                         passed=result.passed, why=result.summary, evidence=result.evidence)
            registry.tag_version(model, version, tag_values({f"stage.{name}": ("passed: " if result.passed else
                                                                                "failed: ") + result.summary}))
            if not result.passed:
                strategy.abort(target)
                restore_challenger(registry, model, version, challenger_before)
                decision = Decision("rollback", f"rollout:{name}", result.summary, {"stages": stages})
                audit.append(events.ROLLED_BACK, **base, by=decision.by, why=result.summary,
                             champion=champion_before, evidence={"stages": stages})
                _tag(registry, base, {"decision": "rolled_back", "decided_by": decision.by,
                                      "decision_reason": result.summary})
                return {"outcome": "rolled_back", "decision": _as_dict(decision), "stages": stages,
                        "champion": champion_before,
                        "message": f"{model}/{version} rolled back at {name}: {result.summary}; champion stays "
                                   f"{model}/{champion_before}"}
    registry.promote(model, version, f"retrain {base['retrain_id']} ({base.get('trigger')}: {base.get('reason')}), "
                     f"decided by {decided_by}", decided_by)
    if strategy is not None:
        strategy.complete(target)
    how = "after " + ", ".join(s["stage"] + (f" {s['percent']} %" if s["percent"] else "") for s in stages) \
        if stages else "directly (improve.rollout.mode: direct)"
    audit.append(events.PROMOTED, **base, by=decided_by, previous_champion=champion_before,
                 evidence={"stages": stages, "rollout": cfg.mode})
    _tag(registry, base, {"decision": "promoted", "decided_by": decided_by, "previous_champion": champion_before or "",
                          "promoted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    return {"outcome": "promoted", "stages": stages, "champion": version,
            "message": f"{model}/{version} is champion {how} (was {model}/{champion_before})"}


def restore_challenger(registry: Registry, model: str, version: str, previous: str | None) -> None:
    """A stopped, rejected or rolled-back version gives the `challenger` alias back to the version that held it."""
    if registry.aliases(model).get(CHALLENGER) != version:
        return  # someone moved it since: leave their choice alone
    if previous and previous != version:
        registry.set_alias(model, CHALLENGER, previous)
    else:
        registry.delete_alias(model, CHALLENGER)


# --- a person decides ---------------------------------------------------------------------------------------


def pending(audit: AuditLog, run: str) -> dict[str, Any]:
    """The decision record of the retrain whose run id is (or starts with) `run`, if it awaits approval."""
    last: dict[str, dict[str, Any]] = {}
    for x in audit.records():
        if x.get("run_id"):
            last[str(x["run_id"])] = x
    waiting = [x for x in last.values() if x.get("event") == events.DECISION and x.get("decision") == AWAIT]
    hint = ", ".join(f"{x['run_id']} ({x['model']}/{x['version']})" for x in waiting) or "none"
    runs = [k for k in last if run and k.startswith(run)]
    if len(runs) != 1:
        what = "no retrain" if not runs else f"{len(runs)} retrains"
        raise MlopsError(f"{what} with run id '{run}' in the audit log {audit.path}; awaiting approval: {hint}")
    record = last[runs[0]]
    if record.get("event") != events.DECISION or record.get("decision") != AWAIT:
        what = f"{record.get('event')}" + (f" ({record['decision']})" if record.get("decision") else "")
        raise MlopsError(f"run {runs[0]} is not awaiting approval: its last record is {what} at {record.get('time')} "
                         f"by {record.get('by')}; awaiting approval: {hint}")
    return record


def approve(run: str, by: str | None = None, note: str = "", *, rollout: Rollout | None = None,
            rollout_options: dict[str, Any] | None = None, registry: Registry | None = None,
            audit: AuditLog | None = None) -> dict[str, Any]:
    """A person accepts a waiting challenger: it goes on to the shadow window, the canary steps and champion."""
    audit = audit or AuditLog()
    who = f"user:{by or user()}"
    with audit.locked():
        record = pending(audit, run)
        loaded = load_validated(record["recipe"], record["train_overrides"])
        model, version = record["model"], record["version"]
        registry = registry or _registry(loaded)
        held = registry.aliases(model).get(CHALLENGER)
        if held != version:
            raise MlopsError(f"{model}/{version} is no longer the challenger ({model}/{held} is): reject run "
                             f"{record['run_id']}, or retrain")
        base = _base(record)
        decision = Decision("approve", who, note or "approved", {"waited_for": record.get("why")})
        _record_decision(registry, audit, base, decision)
    return base | roll_out(loaded, base, version, registry.aliases(model).get(CHAMPION), record.get("challenger_before"),
                           registry, audit, rollout, decided_by=who, options=rollout_options) | {
        "decision": _as_dict(decision)}


def reject(run: str, by: str | None = None, note: str = "", *, registry: Registry | None = None,
           audit: AuditLog | None = None) -> dict[str, Any]:
    """A person turns a waiting challenger down: it loses the `challenger` alias; the champion stays."""
    audit = audit or AuditLog()
    who = f"user:{by or user()}"
    with audit.locked():
        record = pending(audit, run)
        model, version = record["model"], record["version"]
        registry = registry or _registry(load_recipe(record["recipe"], record["train_overrides"]))
        base = _base(record)
        decision = Decision("reject", who, note or "rejected", {"waited_for": record.get("why")})
        _record_decision(registry, audit, base, decision)
        restore_challenger(registry, model, version, record.get("challenger_before"))
    return base | {"outcome": "rejected", "decision": _as_dict(decision), "champion": registry.aliases(model).get(CHAMPION),
                   "message": f"{model}/{version} rejected by {who}; champion stays "
                              f"{model}/{registry.aliases(model).get(CHAMPION)}"}


def _registry(loaded: LoadedRecipe) -> Registry:
    return MlflowRegistry(tracking_uri(loaded.recipe.tracking.uri))


def _base(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "retrain_id", "recipe", "overrides", "trigger", "reason", "run_id", "version")
    return {k: record.get(k) for k in keys}


# --- recording ----------------------------------------------------------------------------------------------


def _record_training(registry: Registry, audit: AuditLog, base: dict[str, Any], trigger: Trigger, refresh: Refresh,
                     trained: Trained, who: str) -> None:
    audit.append(events.TRAINED, **base, by="gates", passed=trained.passed, failures=trained.failures,
                 report=trained.report)
    tags = tag_values({"retrain_id": base["retrain_id"], "trigger": trigger.kind or "", "reason": trigger.reason,
                       "requested_by": who, "data_fingerprint": refresh.fingerprint or "",
                       "production_rows": str(refresh.production_rows), "reference_rows": str(refresh.reference_rows),
                       "lineage": str(refresh.lineage or "")})
    _tag(registry, base, {}, extra=tags)
    if trained.run_id and refresh.lineage is not None:
        registry.log_file(trained.run_id, refresh.lineage, "improve")


def _record_decision(registry: Registry, audit: AuditLog, base: dict[str, Any], decision: Decision,
                     pending_fields: dict[str, Any] | None = None) -> None:
    audit.append(events.DECISION, **base, decision=decision.action, by=decision.by, why=decision.reason,
                 evidence=decision.evidence, **(pending_fields or {}))
    _tag(registry, base, {"decision": decision.action, "decided_by": decision.by, "decision_reason": decision.reason,
                          "evidence": decision.evidence})


def _tag(registry: Registry, base: dict[str, Any], tags: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    values = tag_values(tags) | (extra or {})
    if base.get("run_id"):
        registry.tag_run(base["run_id"], values)
    if base.get("version"):
        registry.tag_version(base["model"], base["version"], values)


def _stopped(model: str, decision: Decision) -> dict[str, Any]:
    return {"outcome": "stopped", "decision": _as_dict(decision),
            "message": f"retrained {model} stopped by {decision.by}: {decision.reason}"}


def _as_dict(decision: Decision) -> dict[str, Any]:
    return {"action": decision.action, "by": decision.by, "reason": decision.reason, "evidence": decision.evidence}
