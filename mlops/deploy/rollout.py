"""Progressive rollout: walk the canary through the recipe's traffic steps (1 % -> 10 % -> 50 % -> 100 %),
judging each step on live metrics, and advance, hold or roll back.

`rollout(loaded, to, options)` is the entry point for a model reference (what `mlops rollout` and the retraining loop
call); `walk(...)` is the same walk over already-resolved versions and sources. Neither knows Prefect.

At each step the InferenceService is rendered with the canary at that percentage (written under `out/`,
validated, and applied when an applier is given: `kubectl apply`, or a local `mlops serve --ab` restarted at
the new percentage). The step is then watched for `window_s`; `decide` reads the canary's metrics for that
window and says advance, wait (too few requests yet: watch another window, up to `max_windows`) or
rollback. A rollback re-renders and applies the stable model alone; a step that never saw enough traffic
holds the rollout at that percentage (resume it with `start_percent`). After the 100 % step passes,
`champion` moves to the canary (recorded in the registry's champion history) and the final manifest has the
new champion alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlops.core.atomic import write_text
from mlops.core.errors import MlopsError
from mlops.core.predlog_store import log_target
from mlops.core.refs import ModelVersion, download_bundle, resolve_version
from mlops.core.registry import registry_client, tracking_uri
from mlops.core.workspace import workspace
from mlops.deploy.kserve import inference_service
from mlops.deploy.kubectl import KubectlApplier
from mlops.deploy.live_checks import (
    CheckResult,
    MetricsEndpoint,
    MetricsSource,
    PredictionLogSource,
    Reading,
    decide,
    required_signals,
)
from mlops.deploy.local import LiveServe, LocalServe
from mlops.deploy.validate import crd_path, validate_manifest
from mlops.evaluate.loadtest import Settings, check_bounds, run_load_test, schema_rows
from mlops.package.registry import promote_champion
from mlops.recipe import LoadedRecipe
from mlops.recipe.deploy import CanaryLoadTest, DeployConfig
from mlops.recipe.schema import LoadTestConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

Outcome = Literal["advance", "hold", "rollback"]
# puts a rendered manifest into effect: (stable, canary or None for one model alone, canary %, manifest path)
Applier = Callable[[ModelVersion, ModelVersion | None, int, Path], None]


@dataclass
class StepResult:
    percent: int
    decision: Literal["advance", "hold", "rollback"]
    windows: int  # windows watched before deciding
    checks: list[CheckResult]
    reading: Reading
    manifest: str
    started: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [c.to_dict() for c in self.checks]
        d["reading"] = asdict(self.reading) | {"error_rate": self.reading.error_rate,
                                               "disagreement": self.reading.disagreement}
        return d


@dataclass
class RolloutResult:
    """What a rollout did. `decision` is the outcome: advance (every step passed; the canary now takes all
    traffic, and is champion when `promoted`), hold (stopped at `steps[-1].percent`, not enough traffic to
    judge), or rollback (a check failed: traffic is back on the stable model)."""

    model: str
    stable: str  # NAME/VERSION
    canary: str
    decision: Outcome
    reason: str
    steps: list[StepResult] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    promoted: bool = False
    promotion: dict[str, Any] | None = None
    load_test: dict[str, Any] | None = None  # deploy.rollout.checks.load_test's figures and broken bounds

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d


def walk(cfg: DeployConfig, stable: ModelVersion, canary: ModelVersion, sources: list[MetricsSource], out: Path,
         apply: Applier | None = None, promote: Callable[[ModelVersion, str], dict[str, Any]] | None = None,
         crd: Path | None = None, start_percent: int | None = None, sleep: Callable[[float], None] = time.sleep,
         report: Callable[[str], None] | None = None) -> RolloutResult:
    """Walk `canary` through `cfg.rollout.steps` next to `stable`, reading `sources` (merged: the first that
    measures a signal wins). `promote(canary, reason)` is called once the 100 % step passed (when
    `cfg.rollout.promote`). Manifests go to `out/`; `apply` puts each one into effect."""
    rc = cfg.rollout
    say = report or (lambda _msg: None)
    if not sources:
        raise MlopsError("a rollout judges each step on the canary's live metrics: give its /metrics URL "
                         "(--metrics-url), a prediction log (--log), or --local-port to run it locally")
    measured: set[str] = set().union(*(s.provides for s in sources))
    missing = required_signals(rc.checks) - measured
    if missing:
        raise MlopsError(f"the rollout checks need {', '.join(sorted(missing))}, which "
                         f"{', '.join(map(repr, sources))} cannot measure: give the canary's /metrics URL "
                         "(--metrics-url), or set those checks to null in deploy.rollout.checks")
    steps = [p for p in rc.steps if start_percent is None or p >= start_percent]
    if not steps:
        raise MlopsError(f"no rollout step at or above {start_percent} % (steps: {rc.steps})")
    result = RolloutResult(model=canary.name, stable=stable.ref, canary=canary.ref, decision="advance", reason="")

    def put(name: str, text: str, serving: ModelVersion, next_to: ModelVersion | None, percent: int) -> Path:
        validate_manifest(text, crd, what=f"manifest {name}")
        path = write_text(out / name, text)
        result.manifests.append(str(path))
        if apply is not None:
            apply(serving, next_to, percent, path)
        return path

    for n, percent in enumerate(steps, 1):
        path = put(f"step-{n:02d}-{percent:03d}pct.yaml", inference_service(cfg, stable, canary, percent),
                   stable, canary, percent)
        say(f"step {n}/{len(steps)}: canary {canary.ref} at {percent} % ({path})")
        started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.monotonic()
        before = [s.snapshot() for s in sources]
        windows = 0
        while True:
            sleep(rc.window_s)
            windows += 1
            reading = Reading()
            for s, b in zip(sources, before, strict=True):
                reading = reading.merged(s.reading(b, s.snapshot()))
            decision, checks = decide(reading, rc.checks)
            say(f"  window {windows}: {reading.requests:.0f} canary requests; "
                + "; ".join(c.render() for c in checks))
            if decision != "wait" or windows >= rc.max_windows:
                break
        step_decision: Literal["advance", "hold", "rollback"] = "hold" if decision == "wait" else decision
        result.steps.append(StepResult(percent, step_decision, windows, checks, reading, str(path), started,
                                       round(time.monotonic() - t0, 3)))
        if step_decision == "rollback":
            failed = [c.render() for c in checks if c.ok is False]
            result.decision, result.reason = "rollback", f"at {percent} %: " + "; ".join(failed)
            back = put("rollback.yaml", inference_service(cfg, stable), stable, None, 0)
            say(f"ROLLBACK {result.reason}: traffic back on {stable.ref} ({back})")
            return result
        if step_decision == "hold":
            unjudged = ", ".join(c.name for c in checks if c.ok is None)
            why = (f"{reading.requests:.0f} canary requests in {windows} windows of {rc.window_s:g} s, fewer than the "
                   f"{rc.checks.min_requests} needed to judge it" if reading.requests < rc.checks.min_requests else
                   f"no data for {unjudged} after {windows} windows of {rc.window_s:g} s")
            result.decision = "hold"
            result.reason = (f"at {percent} %: {why}; traffic stays at {percent} % (resume from this step with "
                             f"--resume-at {percent})")
            say(f"HOLD {result.reason}")
            return result
    result.reason = f"passed every step ({', '.join(f'{p} %' for p in steps)})"
    if rc.promote and promote is not None:
        result.promotion = promote(canary, f"rollout {result.reason}")
        result.promoted = True
        final = put("final.yaml", inference_service(cfg, canary), canary, None, 0)
        say(f"PROMOTED {canary.ref} to champion; {final}")
    return result


@dataclass(frozen=True)
class RolloutOptions:
    """How a rollout moves traffic and what it reads, beside the recipe's `deploy.rollout` steps and checks.

    Live checks read `metrics_url` (a canary's /metrics) and/or `log` (a prediction log), for the requests of
    `canary_variant` ("challenger" for `mlops serve --ab`, "any" for a server that is the canary alone).
    Traffic moves with `kubectl apply` (`kubectl`), or a local `mlops serve STABLE --ab CANARY:PERCENT` on
    `local_port` (whose /metrics is then read), or on the live `mlops serve NAME@champion --ab
    NAME@challenger:0` at `live_url` (its split set at each step, no restart); with none, the manifests are
    only rendered. `promote` overrides the recipe's `deploy.rollout.promote`."""

    stable: str | None = None  # the model the canary replaces; default NAME@champion
    metrics_url: str | None = None
    log: str | Path | None = None
    canary_variant: str = "challenger"
    kubectl: bool = False
    local_port: int | None = None
    live_url: str | None = None
    out: Path | None = None  # where each step's manifest is written
    crd: Path | None = None
    start_percent: int | None = None  # resume at this step after a hold
    promote: bool | None = None
    reason: str = ""  # recorded in the champion history on promotion


def rollout(loaded: LoadedRecipe, to: str, options: RolloutOptions | None = None, *,
            sleep: Callable[[float], None] = time.sleep, report: Callable[[str], None] | None = None
            ) -> RolloutResult:
    """Roll the registered model `to` (`NAME@ALIAS` or `NAME/VERSION`, e.g. `quickstart@challenger`) out next to
    the stable model, following the recipe's `deploy.rollout`. `promote` moves `champion` to the canary when
    every step passed. The outcome is also tagged on the canary's model version (`mlops.rollout`). Returns the
    structured RolloutResult; raises MlopsError for bad input."""
    options = options or RolloutOptions()
    if sum((options.kubectl, options.local_port is not None, options.live_url is not None)) > 1:
        raise MlopsError("give one of --apply (kubectl), --local-port or --live-url")
    cfg = loaded.recipe.deploy
    if options.promote is not None:
        cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"promote": options.promote})})
    client = registry_client(tracking_uri(loaded.recipe.tracking.uri))
    canary = resolve_version(client, to)
    stable = resolve_version(client, options.stable or f"{canary.name}@champion")
    if stable == canary:
        raise MlopsError(f"{to} is {canary.ref}, which is already the stable model ({options.stable or 'champion'}): "
                         "nothing to roll out")
    out = options.out or workspace().deploy_dir(canary.name, f"rollout-v{canary.version}")
    load = None
    if cfg.rollout.checks.load_test is not None:  # before any traffic moves: a canary too slow never gets any
        load = canary_load_test(cfg.rollout.checks.load_test, download_bundle(client, canary), report)
    if load is not None and load["failed"]:
        result = RolloutResult(model=canary.name, stable=stable.ref, canary=canary.ref, decision="rollback",
                               reason="the canary's load test: " + "; ".join(load["failed"]) + "; no traffic moved",
                               load_test=load)
    else:
        server = _traffic_server(options, out, client, canary)
        applier: Applier | None = KubectlApplier(cfg.namespace) if options.kubectl else server

        def do_promote(mv: ModelVersion, why: str) -> dict[str, Any]:
            return promote_champion(client, mv.name, mv.version, options.reason or why)

        try:
            result = walk(cfg, stable, canary, _sources(options, server), out, apply=applier, promote=do_promote,
                          crd=crd_path(options.crd), start_percent=options.start_percent, sleep=sleep, report=report)
        finally:
            if server is not None:
                server.close()
        result.load_test = load
    summary = {"decision": result.decision, "reason": result.reason, "stable": stable.ref,
               "at": datetime.now(UTC).isoformat(timespec="seconds"),
               "steps": [{"percent": s.percent, "decision": s.decision} for s in result.steps]}
    client.set_model_version_tag(canary.name, canary.version, "mlops.rollout", json.dumps(summary))
    return result


def canary_load_test(checks: CanaryLoadTest, bundle: Path, report: Callable[[str], None] | None = None
                     ) -> dict[str, Any]:
    """The canary's bundle load-tested on loopback (rows drawn from its training schema): its figures, with
    `failed` the bounds of `checks` it broke."""
    settings = Settings.of(LoadTestConfig(enabled=True, users=checks.users, duration_s=checks.duration_s,
                                          warmup_s=checks.warmup_s, rps=checks.rps))
    result = run_load_test(bundle, schema_rows(bundle, settings.rows), settings)
    failed = check_bounds(result, {m: b for m, b in (("load/p99_ms", (None, checks.max_p99_ms)),
                                                     ("load/error_rate", (None, checks.max_error_rate)),
                                                     ("load/rps", (checks.min_rps, None))) if b != (None, None)})
    if report is not None:
        report(f"canary load test: {result.line()}" + (f"; FAILED: {'; '.join(failed)}" if failed else "; ok"))
    return result.model_dump() | {"failed": failed}


def _traffic_server(options: RolloutOptions, out: Path, client: MlflowClient, canary: ModelVersion
                    ) -> LocalServe | LiveServe | None:
    """The `mlops serve` whose traffic a local or live rollout moves, if it is one of those."""
    if options.local_port is not None:
        return LocalServe(options.local_port, out / "serve.log", lambda mv: download_bundle(client, mv),
                          log=log_target(options.log) if options.log else None)
    if options.live_url is not None:
        return LiveServe(options.live_url, canary.name)
    return None


def _sources(options: RolloutOptions, server: LocalServe | LiveServe | None) -> list[MetricsSource]:
    """Where each step's live checks read the canary's behaviour."""
    sources: list[MetricsSource] = []
    if options.metrics_url:
        sources.append(MetricsEndpoint(options.metrics_url, options.canary_variant))
    elif server is not None:
        sources.append(MetricsEndpoint(server.metrics_url, "challenger"))
    if options.log:
        sources.append(PredictionLogSource(options.log, options.canary_variant))
    return sources
