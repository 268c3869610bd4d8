"""The retraining pipeline: trigger -> limits -> data refresh -> training with gates vs the champion ->
decision -> (approval) -> shadow -> canary -> champion, or a stop with the reason, or a rollback.

`retrain_recipe(recipe, overrides, reason)` is a plain function (the `mlops-retrain` Prefect flow calls it;
training inside is the `mlops-run` flow, one task per step). `approve` and `reject` continue or end a retrain
that waits for a person. Each returns a `RetrainOutcome`, what `mlops retrain/approve/reject --json` print.
Every decision goes to the audit log (`mlops.improve.audit`) and to MLflow tags (`mlops.improve.*`) on the
training run and the model version, with who or what decided and the evidence.

Training, the registry and the rollout are parameters (defaults: the engine, MLflow, `default_rollout`), so
the decision logic is tested without training and the live stages run against whatever serves the model.
"""

from __future__ import annotations

import getpass
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mlops.core import timespec
from mlops.core.errors import GateError, MlopsError
from mlops.core.log import say
from mlops.core.refs import CHALLENGER, CHAMPION
from mlops.core.registry import tracking_uri
from mlops.core.workspace import workspace
from mlops.engine.runner import run_flow
from mlops.engine.validate import load_validated
from mlops.improve import audit as events
from mlops.improve.audit import AuditLog, limit_refusal, open_audit
from mlops.improve.decide import APPROVE, AWAIT, PROMOTE, REJECT, ROLLBACK, STOP, Decision, promotion_decision
from mlops.improve.refresh import Refresh, RefreshSummary, production_log, refresh_data
from mlops.improve.registry import MlflowRegistry, Registry, tag_values
from mlops.improve.rollout import (
    Rollout,
    RolloutTarget,
    StageResult,
    canary_steps,
    default_rollout,
    unjudgeable_canary,
)
from mlops.improve.triggers import MANUAL, Trigger, read_alerts, resolve_trigger
from mlops.recipe import LoadedRecipe, load_recipe
from mlops.recipe.improve import RetrainConfig
from mlops.recipe.metrics import task_metrics
from mlops.sweep.flow import sweep
from mlops.tracking.prefix import unique_prefix

ENGINE = "engine"  # `by` of what the engine settled when it registered the version: nothing is left to weigh
Outcome = Literal["skipped", "stopped", "awaiting_approval", "promoted", "rolled_back", "rejected"]


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


@dataclass(frozen=True)
class RetrainOptions:
    """How one retrain runs, beyond its recipe and its reason."""

    by: str | None = None  # who asked; default: `user:<login>` for a manual retrain, else `trigger:<kind>`
    force: bool = False  # start despite the cooldown or the daily limit (the start record says which)
    rollout_options: dict[str, Any] = field(default_factory=dict)  # default_rollout's: local_port, live_url
    now: float | None = None  # when it starts (tests); default: the clock


@dataclass(frozen=True)
class GateSummary:
    """How the challenger's gates went, vs the champion included."""

    passed: bool
    failures: list[str]
    report: str | None  # the evaluation report


@dataclass(frozen=True)
class Ending:
    """How a retrain, or a person's answer to one, ended, and what decided it."""

    outcome: Outcome
    message: str
    decision: Decision | None = None  # None when skipped: nothing was decided about a model
    stages: list[StageResult] = field(default_factory=list)  # the live stages walked, in order
    champion: str | None = None  # the champion afterwards, where the outcome settles it


@dataclass(frozen=True, kw_only=True)
class RetrainOutcome(Ending):
    """What `retrain_recipe`, `approve` and `reject` return and `mlops retrain/approve/reject --json` print:
    how it ended, which retrain it was (the fields each of its audit records starts with) and what it found.
    A field that does not apply is None or empty: a skipped retrain has no run, an approval no refresh."""

    model: str
    retrain_id: str
    recipe: str
    overrides: list[str]  # the command's (training also had the refresh's `data.path`)
    trigger: str | None  # drift | accuracy_drop | schedule | manual; None when nothing triggered it
    reason: str
    run_id: str | None = None
    version: str | None = None
    refresh: RefreshSummary | None = None
    champion_before: str | None = None
    gates: GateSummary | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# --- before training: is there a reason, is it allowed, is there new data -----------------------------------


@dataclass(frozen=True)
class Preflight:
    """Whether a retrain may start now: the trigger it answers and the limit it runs into."""

    trigger: Trigger
    limit: str | None  # the cooldown or daily limit reached; kept when --force overrides it, for the record
    force: bool

    @property
    def refusal(self) -> str | None:
        """Why it must not start (None: it may)."""
        if self.trigger.refusal:
            return self.trigger.refusal
        if self.limit and not self.force:
            return f"{self.limit}; --force overrides (and is recorded)"
        return None

    @property
    def refused_by(self) -> str:
        return "limits" if self.trigger.refusal is None else "trigger"


def audit_for(loaded: LoadedRecipe) -> AuditLog:
    """The recipe's audit log: it follows the production log (in its PostgreSQL database when the log is a
    postgresql:// URL, else the workspace's file)."""
    return open_audit(str(production_log(loaded)))


def preflight(loaded: LoadedRecipe, reason: str, force: bool, audit: AuditLog, now: float) -> Preflight:
    """The trigger this retrain answers, and the limit it runs into. Reads only."""
    records = audit.records(loaded.recipe.model_name)
    return Preflight(answered_trigger(loaded, reason, records), reached_limit(loaded, records, now), force)


def answered_trigger(loaded: LoadedRecipe, reason: str, records: list[dict[str, Any]]) -> Trigger:
    """What `reason` names, or the monitor's newest alert no earlier retrain (in `records`) answered."""
    r = loaded.recipe
    started = [float(x["ts"]) for x in records if x.get("event") == events.STARTED]
    return resolve_trigger(reason, r.improve.triggers, read_alerts(workspace().monitor, r.model_name, production_log(loaded)),
                           max(started) if started else None)


def reached_limit(loaded: LoadedRecipe, records: list[dict[str, Any]], now: float) -> str | None:
    """The cooldown or daily limit a retrain starting `now` runs into, after those in `records`."""
    limits = loaded.recipe.improve.limits
    return limit_refusal(records, limits.cooldown_minutes, limits.max_per_day, now)


def _check(loaded: LoadedRecipe) -> None:
    r = loaded.recipe
    if not r.registry.enabled:
        raise MlopsError("retraining decides between registered models: set registry.enabled: true")
    if r.improve.retrain.mode == "sweep" and r.sweep is None:
        raise MlopsError("improve.retrain.mode is 'sweep' but the recipe has no `sweep:` section: add one "
                         "(e.g. `- sweep: mlp_small` in its defaults) or use mode 'same'")


@dataclass(frozen=True)
class _Claim:
    """A retrain that started: its audit fields, the trigger it answers, its refreshed data, who asked."""

    base: dict[str, Any]
    trigger: Trigger
    refresh: Refresh
    who: str

    @property
    def train_overrides(self) -> list[str]:
        return [*self.base["overrides"], *self.refresh.overrides]


def _claim(loaded: LoadedRecipe, base: dict[str, Any], reason: str, options: RetrainOptions, audit: AuditLog,
           now: float, refusal: str | None = None) -> _Claim | RetrainOutcome:
    """trigger -> limits -> refresh, then the start recorded; or why it is skipped, recorded too; or `refusal`
    raised (the user's to fix: nothing recorded). Runs under the audit log's lock, so that the start record
    claims the slot the limits saw free."""
    checked = preflight(loaded, reason, options.force, audit, now)
    trigger = checked.trigger
    base = base | {"trigger": trigger.kind, "reason": trigger.reason}
    who = options.by or (f"user:{user()}" if trigger.kind == MANUAL else f"trigger:{trigger.kind or 'none'}")
    if checked.refusal:
        audit.append(events.SKIPPED, **base, by=checked.refused_by, requested_by=who, why=checked.refusal,
                     evidence=trigger.evidence, ts=now)
        return _skipped(base, checked.refusal)
    refresh = _refresh(loaded, audit, base, who, now)
    if isinstance(refresh, RetrainOutcome):
        return refresh
    if refusal is not None:
        raise MlopsError(refusal)
    audit.append(events.STARTED, **base, by=who, forced=bool(options.force and checked.limit),
                 overridden=checked.limit, evidence=trigger.evidence, ts=now)
    return _Claim(base, trigger, refresh, who)


def _refresh(loaded: LoadedRecipe, audit: AuditLog, base: dict[str, Any], who: str,
             now: float) -> Refresh | RetrainOutcome:
    """The refreshed training data; or the skip, recorded, when too few labelled production rows came in."""
    refresh = refresh_data(loaded, now)
    if refresh.path is not None:
        return refresh
    least = loaded.recipe.improve.refresh.min_production_rows
    why = (f"only {refresh.production_rows} labelled production rows in {refresh.log} "
           f"(improve.refresh.min_production_rows={least}): record feedback for served predictions first "
           "(POST /v1/feedback or mlops feedback FILE)")
    audit.append(events.SKIPPED, **base, by="refresh", requested_by=who, why=why,
                 evidence=asdict(refresh.summary()), ts=now)
    return _skipped(base, why, refresh.summary())


def _skipped(base: dict[str, Any], why: str, refresh: RefreshSummary | None = None) -> RetrainOutcome:
    return RetrainOutcome(outcome="skipped", message=f"retrain of {base['model']} skipped: {why}", **base,
                          refresh=refresh)


# --- the pipeline -----------------------------------------------------------------------------------------


def retrain_recipe(recipe: str, overrides: list[str], reason: str, options: RetrainOptions | None = None, *,
                   trainer: Trainer | None = None, rollout: Rollout | None = None,
                   registry: Registry | None = None, audit: AuditLog | None = None) -> RetrainOutcome:
    """Run the whole pipeline once: trigger -> limits -> refresh -> training -> decision -> rollout. Returns
    how it ended (`outcome`: skipped, stopped, awaiting_approval, promoted or rolled_back), with the run,
    version, decision and evidence.

    `options`: who asked, whether --force ignores the limits (recorded), how the default rollout reaches the
    server. `trainer`, `rollout`, `registry` and `audit` replace the engine, `default_rollout`, MLflow and the
    workspace's audit log."""
    options = options or RetrainOptions()
    loaded = load_validated(recipe, overrides)
    _check(loaded)
    unjudgeable = unjudgeable_canary(loaded, options.rollout_options) if rollout is None else None
    policy = loaded.recipe.improve.promotion.policy
    if unjudgeable is not None and policy == "approval_when_uncertain":  # walked here only if the gates settle it
        say(f"warning: {unjudgeable}; `mlops approve` takes them too")
    audit = audit or audit_for(loaded)
    now = time.time() if options.now is None else options.now
    rid = f"{datetime.fromtimestamp(now, UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    base = {"model": loaded.recipe.model_name, "retrain_id": rid, "recipe": str(loaded.path),
            "overrides": list(overrides)}
    with audit.locked():  # check and claim the slot atomically: two triggers at once cannot both pass
        # under `auto` the canary is walked here: a canary nothing can judge is refused before the training it
        # would waste (and after the checks that skip a retrain, which say more)
        claimed = _claim(loaded, base, reason, options, audit, now, unjudgeable if policy == "auto" else None)
    if isinstance(claimed, RetrainOutcome):
        return claimed
    _announce(audit, claimed)
    ledger = Ledger(registry or _registry(loaded), audit, dict(claimed.base))
    before = ledger.registry.aliases(ledger.model)
    trained = _train(loaded, ledger, claimed, trainer or train_with_engine)
    decision = _decide(loaded, trained, before)
    ledger.decision(decision, None if decision.by == ENGINE else {
        "train_overrides": claimed.train_overrides, "challenger_before": before.get(CHALLENGER),
        "champion_before": before.get(CHAMPION)})  # what `approve` needs to carry on
    ending = _act(ledger, Staging(loaded, rollout, options.rollout_options), decision, trained, before)
    return RetrainOutcome(**vars(ending), **ledger.base, refresh=claimed.refresh.summary(),
                          champion_before=before.get(CHAMPION), metrics=trained.metrics,
                          gates=GateSummary(trained.passed, trained.failures, trained.report))


def _announce(audit: AuditLog, claimed: _Claim) -> None:
    base, refresh, trigger = claimed.base, claimed.refresh, claimed.trigger
    audit.append(events.REFRESHED, **base, by="refresh", fingerprint=refresh.fingerprint,
                 evidence=asdict(refresh.summary()))
    say(f"retrain {base['retrain_id']} of {base['model']} ({trigger.kind}: {trigger.reason}) on "
        f"refreshed data {refresh.path}: {refresh.reference_rows} reference + {refresh.production_rows} "
        "production rows")


def _train(loaded: LoadedRecipe, ledger: Ledger, claimed: _Claim, trainer: Trainer) -> Trained:
    """Training on the refreshed data, gates vs the champion included. Its run and version join the ledger's
    audit fields; a crash is recorded, then raised."""
    try:
        trained = trainer(loaded, claimed.train_overrides, str(claimed.refresh.fingerprint), ledger.registry)
    except BaseException as exc:
        ledger.record(events.FAILED, by=ENGINE, why=f"{type(exc).__name__}: {exc}"[:4000])
        raise
    ledger.base |= {"run_id": trained.run_id, "version": trained.version}
    _record_training(ledger, claimed, trained)
    return trained


def _decide(loaded: LoadedRecipe, trained: Trained, before: dict[str, str]) -> Decision:
    """Promote, wait for a person, or stop: what the engine already settled when it registered the version
    (`by: engine`), else the promotion policy over the gates' comparisons with the champion. Reads only."""
    model, version, champion = loaded.recipe.model_name, trained.version, before.get(CHAMPION)
    if version is None:
        return Decision(STOP, ENGINE, "training registered no model version", {"failures": trained.failures})
    if champion is None and trained.passed:  # the engine made the first eligible version champion
        return Decision(PROMOTE, ENGINE, "there was no champion: the engine made this version champion")
    if champion == version:
        return Decision(STOP, ENGINE, f"the retrained model is byte-identical to the champion "
                        f"{model}/{version}: nothing to promote")
    return promotion_decision(loaded.recipe.improve.promotion.policy, trained.passed, trained.failures,
                              trained.verdicts, _directions(loaded))


def _act(ledger: Ledger, staging: Staging, decision: Decision, trained: Trained,
         before: dict[str, str]) -> Ending:
    """What the decision does: stop, wait for a person, or roll the challenger out to champion."""
    model, version, run_id = ledger.model, trained.version, trained.run_id
    if decision.action == STOP:
        if version is not None and trained.passed and decision.by != ENGINE:  # the engine made it challenger
            restore_challenger(ledger.registry, model, version, before.get(CHALLENGER))  # it must not stay one
        return _stopped(model, decision)
    version = str(version)  # only a stop comes without one
    if decision.action == AWAIT:
        return Ending("awaiting_approval", f"{model}/{version} passed its gates and waits for a person "
                      f"({decision.reason}): mlops approve {run_id}  or  mlops reject {run_id}", decision)
    if decision.by == ENGINE:  # already champion: no stage to walk
        ledger.record(events.PROMOTED, by=ENGINE, previous_champion=None)
        return Ending("promoted", f"{model}/{version} is champion (there was none)", decision,
                      champion=version)
    handover = Handover(version, before.get(CHAMPION), before.get(CHALLENGER), decision.by)
    ending = roll_out(ledger, staging, handover)
    return ending if ending.decision else replace(ending, decision=decision)


def _stopped(model: str, decision: Decision) -> Ending:
    return Ending("stopped", f"retrained {model} stopped by {decision.by}: {decision.reason}", decision)


# --- training ---------------------------------------------------------------------------------------------


def train_with_engine(loaded: LoadedRecipe, overrides: list[str], fingerprint: str, registry: Registry) -> Trained:
    """Train with the engine (`mlops-run`, or the recipe's sweep in sweep mode), gates vs the champion included."""

    cfg: RetrainConfig = loaded.recipe.improve.retrain
    try:
        if cfg.mode == "sweep":
            # a sweep that is not a --worker always ends with its best trial's run (else it raised)
            summary = sweep(str(loaded.path), [*overrides, f"sweep.n_trials={cfg.budget}"]).run
        else:
            summary = run_flow(str(loaded.path.resolve()), overrides, return_state=True).result()  # a RunSummary
    except GateError as exc:
        found = registry.version_for(loaded.recipe.model_name, fingerprint)
        failures = [line.strip() for line in str(exc).splitlines() if line.strip().startswith("gate ")]
        version, run_id = found if found else (None, None)
        return Trained(False, run_id, version, failures=failures or [str(exc).splitlines()[0]])
    assert summary is not None
    gates = summary.gates
    verdicts = [v.model_dump() for v in gates.verdicts]
    report_json = Path(gates.report).with_suffix(".json")
    if report_json.is_file():  # the report keeps each comparison's interval, the summary only its text
        verdicts = json.loads(report_json.read_text()).get("gates", verdicts)
    return Trained(gates.outcome != "failed", summary.run_id, summary.model_version, verdicts, gates.failures,
                   gates.report, summary.metrics)


def _directions(loaded: LoadedRecipe) -> dict[str, str]:
    custom = {n: c.direction for n, c in loaded.recipe.evaluate.custom_metrics.items()}
    return dict(task_metrics("auto")) | custom


# --- recording ----------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Where one retrain's decisions are recorded: the audit log, and tags on its run and model version."""

    registry: Registry
    audit: AuditLog
    base: dict[str, Any]  # what each of its audit records starts with: model, retrain_id, ... run_id, version

    @property
    def model(self) -> str:
        return str(self.base["model"])

    def record(self, event: str, **fields: Any) -> None:
        self.audit.append(event, **self.base, **fields)

    def tag(self, tags: dict[str, Any]) -> None:
        """Tags (`mlops.improve.<key>`) on the training run and the model version, as far as they exist."""
        values = tag_values(tags)
        if self.base.get("run_id"):
            self.registry.tag_run(self.base["run_id"], values)
        if self.base.get("version"):
            self.registry.tag_version(self.model, self.base["version"], values)

    def decision(self, decision: Decision, pending: dict[str, Any] | None = None) -> None:
        """A decision with its evidence; `pending`: what a person's approval needs to continue the retrain."""
        self.record(events.DECISION, decision=decision.action, by=decision.by, why=decision.reason,
                    evidence=decision.evidence, **(pending or {}))
        self.tag({"decision": decision.action, "decided_by": decision.by, "decision_reason": decision.reason,
                  "evidence": decision.evidence})


def _record_training(ledger: Ledger, claimed: _Claim, trained: Trained) -> None:
    ledger.record(events.TRAINED, by="gates", passed=trained.passed, failures=trained.failures,
                  report=trained.report)
    trigger, refresh = claimed.trigger, claimed.refresh
    ledger.tag({"retrain_id": claimed.base["retrain_id"], "trigger": trigger.kind or "",
                "reason": trigger.reason, "requested_by": claimed.who,
                "data_fingerprint": refresh.fingerprint or "", "lineage": str(refresh.lineage or ""),
                "production_rows": str(refresh.production_rows), "reference_rows": str(refresh.reference_rows)})
    if trained.run_id and refresh.lineage is not None:
        ledger.registry.log_file(trained.run_id, refresh.lineage, "improve")


def _registry(loaded: LoadedRecipe) -> Registry:
    return MlflowRegistry(tracking_uri(loaded.recipe.tracking.uri))


# --- after the decision: the live stages ----------------------------------------------------------------


@dataclass(frozen=True)
class Staging:
    """How a challenger reaches production: the recipe's `improve.rollout`, and the strategy that moves the
    traffic (`rollout`; default: `default_rollout` with `options`)."""

    loaded: LoadedRecipe
    rollout: Rollout | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def strategy(self) -> Rollout:
        return self.rollout or default_rollout(self.loaded, **self.options)


@dataclass(frozen=True)
class Handover:
    """A challenger cleared for champion: who cleared it, and the aliases it replaces or gives back."""

    version: str
    champion_before: str | None
    challenger_before: str | None  # gets `challenger` back when a stage fails
    decided_by: str


def roll_out(ledger: Ledger, staging: Staging, handover: Handover) -> Ending:
    """challenger -> shadow window -> canary steps -> champion; the first failing stage rolls back."""
    cfg = staging.loaded.recipe.improve.rollout
    target = RolloutTarget(ledger.model, handover.version, handover.champion_before,
                           production_log(staging.loaded), cfg.max_accuracy_drop, cfg.poll_s)
    if cfg.mode != "staged":
        return _promote(ledger, staging, handover, [], None)
    strategy = staging.strategy()
    stages = _walk(ledger, staging, strategy, target)
    if stages and not stages[-1].passed:
        strategy.abort(target)
        return _roll_back(ledger, handover, stages)
    return _promote(ledger, staging, handover, stages, lambda: strategy.complete(target))


def _walk(ledger: Ledger, staging: Staging, strategy: Rollout, target: RolloutTarget) -> list[StageResult]:
    """The shadow window (when enabled), then the canary steps, each recorded as it ends, up to the first that
    fails: then it is the last one."""
    cfg = staging.loaded.recipe.improve.rollout
    walked = [strategy.shadow(target, cfg.shadow)] if cfg.shadow.enabled else []
    if all(s.passed for s in walked):
        walked += strategy.canary(target, canary_steps(staging.loaded))
    stages: list[StageResult] = []
    for result in walked:
        stages.append(result)
        verdict = "PASSED" if result.passed else "FAILED"
        say(f"{result.name}: {verdict} ({result.summary})")
        ledger.record(events.STAGE, by=f"rollout:{result.name}", stage=result.stage, percent=result.percent,
                      passed=result.passed, why=result.summary, evidence=result.evidence)
        ledger.registry.tag_version(ledger.model, target.version, tag_values({
            f"stage.{result.name}": ("passed: " if result.passed else "failed: ") + result.summary}))
        if not result.passed:
            break
    return stages


def _roll_back(ledger: Ledger, handover: Handover, stages: list[StageResult]) -> Ending:
    """The last stage failed: `challenger` goes back to the version that held it; the champion stays."""
    failed, model, champion = stages[-1], ledger.model, handover.champion_before
    restore_challenger(ledger.registry, model, handover.version, handover.challenger_before)
    walked = [s.record() for s in stages]
    decision = Decision(ROLLBACK, f"rollout:{failed.name}", failed.summary, {"stages": walked})
    ledger.record(events.ROLLED_BACK, by=decision.by, why=failed.summary, champion=champion,
                  evidence={"stages": walked})
    ledger.tag({"decision": "rolled_back", "decided_by": decision.by, "decision_reason": failed.summary})
    return Ending("rolled_back", f"{model}/{handover.version} rolled back at {failed.name}: "
                  f"{failed.summary}; champion stays {model}/{champion}", decision, stages, champion)


def _promote(ledger: Ledger, staging: Staging, handover: Handover, stages: list[StageResult],
             complete: Callable[[], None] | None) -> Ending:
    """`champion` moves to the challenger (through the registry's champion history); `complete` then gives it
    all traffic."""
    model, version, by, base = ledger.model, handover.version, handover.decided_by, ledger.base
    ledger.registry.promote(model, version, f"retrain {base['retrain_id']} ({base.get('trigger')}: "
                            f"{base.get('reason')}), decided by {by}", by)
    if complete is not None:
        complete()
    how = ("after " + ", ".join(s.label for s in stages)) if stages else \
        "directly (improve.rollout.mode: direct)"
    ledger.record(events.PROMOTED, by=by, previous_champion=handover.champion_before,
                  evidence={"stages": [s.record() for s in stages],
                            "rollout": staging.loaded.recipe.improve.rollout.mode})
    ledger.tag({"decision": "promoted", "decided_by": by, "previous_champion": handover.champion_before or "",
                "promoted_at": timespec.iso(time.time())})
    return Ending("promoted", f"{model}/{version} is champion {how} (was {model}/{handover.champion_before})",
                  stages=stages, champion=version)


def restore_challenger(registry: Registry, model: str, version: str, previous: str | None) -> None:
    """A stopped, rejected or rolled-back version gives the `challenger` alias back to the version that held
    it."""
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
    try:
        found = unique_prefix(run, {k: events.brief(x) for k, x in last.items()}, "retrain run",
                              f"the audit log {audit.path}")
    except MlopsError as exc:
        raise MlopsError(f"{exc}\nawaiting approval: {hint}") from None
    record = last[found]
    if record.get("event") != events.DECISION or record.get("decision") != AWAIT:
        what = f"{record.get('event')}" + (f" ({record['decision']})" if record.get("decision") else "")
        raise MlopsError(f"run {found} is not awaiting approval: its last record is {what} at "
                         f"{record.get('time')} by {record.get('by')}; awaiting approval: {hint}")
    return record


def settled(audit: AuditLog, run_id: str) -> tuple[Outcome, str] | None:
    """How a person's answer to retrain run `run_id` ended (promoted, rolled back or rejected) and who answered,
    from its audit records; None while it waits, or while the approved rollout still runs."""
    records = [x for x in audit.records() if x.get("run_id") == run_id]
    answers = [x for x in records if x.get("event") == events.DECISION and x.get("decision") in (APPROVE, REJECT)]
    if not answers:
        return None
    who = str(answers[-1].get("by"))
    if answers[-1]["decision"] == REJECT:
        return "rejected", who
    endings: dict[str, Outcome] = {events.PROMOTED: "promoted", events.ROLLED_BACK: "rolled_back"}
    ending = endings.get(str(records[-1].get("event")))
    return (ending, who) if ending else None


def approve(run: str, by: str | None = None, note: str = "", *, rollout: Rollout | None = None,
            rollout_options: dict[str, Any] | None = None, registry: Registry | None = None,
            audit: AuditLog | None = None, log: str | None = None) -> RetrainOutcome:
    """A person accepts a waiting challenger: it goes on to the shadow window, the canary steps and
    champion."""
    audit = audit or open_audit(log)  # `log`: the production log, whose database holds a shared audit
    who = f"user:{by or user()}"
    with audit.locked():
        record = pending(audit, run)
        loaded = load_validated(record["recipe"], record["train_overrides"])
        unjudgeable = unjudgeable_canary(loaded, rollout_options or {}) if rollout is None else None
        if unjudgeable is not None:  # before the approval is recorded: it stays pending, to approve with them
            raise MlopsError(unjudgeable)
        model, version = record["model"], record["version"]
        ledger = Ledger(registry or _registry(loaded), audit, _base(record))
        held = ledger.registry.aliases(model).get(CHALLENGER)
        if held != version:
            raise MlopsError(f"{model}/{version} is no longer the challenger ({model}/{held} is): reject run "
                             f"{record['run_id']}, or retrain")
        decision = Decision(APPROVE, who, note or "approved", {"waited_for": record.get("why")})
        ledger.decision(decision)
    champion = ledger.registry.aliases(model).get(CHAMPION)
    handover = Handover(version, champion, record.get("challenger_before"), who)
    ending = roll_out(ledger, Staging(loaded, rollout, rollout_options or {}), handover)
    # the person's decision is the outcome's, also when a stage then rolled the challenger back
    return RetrainOutcome(**vars(replace(ending, decision=decision)), **ledger.base)


def reject(run: str, by: str | None = None, note: str = "", *, registry: Registry | None = None,
           audit: AuditLog | None = None, log: str | None = None) -> RetrainOutcome:
    """A person turns a waiting challenger down: it loses the `challenger` alias; the champion stays."""
    audit = audit or open_audit(log)  # `log`: the production log, whose database holds a shared audit
    who = f"user:{by or user()}"
    with audit.locked():
        record = pending(audit, run)
        model, version = record["model"], record["version"]
        registry = registry or _registry(load_recipe(record["recipe"], record["train_overrides"]))
        ledger = Ledger(registry, audit, _base(record))
        decision = Decision(REJECT, who, note or "rejected", {"waited_for": record.get("why")})
        ledger.decision(decision)
        restore_challenger(ledger.registry, model, version, record.get("challenger_before"))
    champion = ledger.registry.aliases(model).get(CHAMPION)
    return RetrainOutcome(outcome="rejected", message=f"{model}/{version} rejected by {who}; champion stays "
                          f"{model}/{champion}", decision=decision, champion=champion, **ledger.base)


def _base(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "retrain_id", "recipe", "overrides", "trigger", "reason", "run_id", "version")
    return {k: record.get(k) for k in keys}
