"""The live stages between `challenger` and `champion`: a shadow window, then canary steps.

A `Rollout` is the strategy that runs them. Improvement code only calls its four methods, so where traffic
is moved (a local server, KServe) is the strategy's business:

* `shadow(target, cfg)`: the challenger sees copies of real requests and answers none; pass or fail.
* `canary(target, steps)`: the challenger answers each step's percentage of requests in turn; one result per
  step walked, the walk ending at the first that fails.
* `abort(target)`: all traffic back to the champion (after a failed stage).
* `complete(target)`: the challenger, now champion, takes all traffic.

`default_rollout` is `DeployRollout`: the shadow window on the prediction log, then the canary steps walked by
`mlops.deploy.rollout` (its traffic moves, manifests and live checks), champion moved with the registry's
champion history. `LogRollout` moves no traffic itself: it watches the prediction log of the server that does
(`mlops serve NAME@champion --shadow NAME/VERSION`, then `--ab`), and decides each stage on what the log and
its feedback show.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.predlog_store import log_exists
from mlops.core.refs import ModelVersion
from mlops.deploy.live_checks import PredictionLogSource, required_signals
from mlops.deploy.local import LiveServe
from mlops.deploy.rollout import RolloutOptions, rollout
from mlops.evaluate.scored import Scored
from mlops.evaluate.stats import compare
from mlops.improve.feedback import SERVED, read_joined
from mlops.improve.intervals import proportion_difference
from mlops.recipe import LoadedRecipe
from mlops.recipe.improve import ShadowStageConfig
from mlops.serve.routing import disagreements

# the rollout check that needs each live signal (mlops.deploy.live_checks.required_signals)
SIGNAL_CHECKS = {"errors": "max_error_rate", "p99": "max_p99_ms", "shadow": "max_shadow_disagreement",
                 "requests": "min_requests"}


@dataclass(frozen=True)
class RolloutTarget:
    model: str
    version: str  # the challenger
    champion: str | None  # the version it would replace
    log: str | Path  # the model's prediction log: a file, or a postgresql:// URL
    max_accuracy_drop: float = 0.02
    poll_s: float = 2.0


@dataclass(frozen=True)
class CanaryStep:
    percent: int
    min_rows: int = 100
    max_p99_ms: float | None = None
    max_shadow_disagreement: float | None = None
    timeout_s: float = 900.0


@dataclass
class StageResult:
    """How one live stage went, and what it saw. Not frozen: a strategy that waited past its timeout says so
    in `summary`."""

    stage: Literal["shadow", "canary"]
    passed: bool
    summary: str
    percent: int | None = None  # the canary step's share of traffic
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """`shadow`, `canary_10`: the stage as tags and `by: rollout:<name>` name it."""
        return self.stage + (f"_{self.percent}" if self.percent else "")

    @property
    def label(self) -> str:
        """`shadow`, `canary 10 %`: the stage as messages name it."""
        return self.stage + (f" {self.percent} %" if self.percent else "")

    def record(self) -> dict[str, Any]:
        """The stage as the audit log's evidence holds it (its key order is the log's format)."""
        return {"stage": self.stage, "percent": self.percent, "passed": self.passed, "summary": self.summary,
                "evidence": self.evidence}


class Rollout(Protocol):
    def shadow(self, target: RolloutTarget, cfg: ShadowStageConfig) -> StageResult: ...

    def canary(self, target: RolloutTarget, steps: list[CanaryStep]) -> list[StageResult]: ...

    def abort(self, target: RolloutTarget) -> None: ...

    def complete(self, target: RolloutTarget) -> None: ...


def canary_steps(loaded: LoadedRecipe) -> list[CanaryStep]:
    """The canary steps and checks of the recipe's `deploy.rollout` (configured once, there)."""
    rollout = loaded.recipe.deploy.rollout
    window = rollout.window_s * rollout.max_windows
    return [CanaryStep(percent=p, min_rows=rollout.checks.min_requests, max_p99_ms=rollout.checks.max_p99_ms,
                       max_shadow_disagreement=rollout.checks.max_shadow_disagreement, timeout_s=window)
            for p in rollout.steps]


def unjudgeable_canary(loaded: LoadedRecipe, options: dict[str, Any]) -> str | None:
    """Why the default rollout's canary would fail for want of a source, or None. With no server to read (none
    of `--live-url`, `--local-port`, `--metrics-url`, kubectl) the canary is judged on the prediction log alone,
    which cannot count the 5xx answers `deploy.rollout.checks.max_error_rate` reads: the walk then stops at
    the canary, after the training and the shadow window it waited through, and rolls back."""
    r = loaded.recipe
    if r.improve.rollout.mode != "staged" or any(options.get(k) for k in ("live_url", "local_port", "metrics_url",
                                                                          "kubectl")):
        return None
    missing = required_signals(r.deploy.rollout.checks) - PredictionLogSource.provides
    if not missing:
        return None
    checks = ", ".join(f"deploy.rollout.checks.{SIGNAL_CHECKS[m]}" for m in sorted(missing))
    return (f"a staged rollout's canary needs {', '.join(sorted(missing))} ({checks}), which the prediction log "
            "cannot give: pass the server to judge it on (--live-url URL of a running `mlops serve`, --local-port N "
            f"to start one, or --metrics-url URL), set {checks} to null, or use improve.rollout.mode=direct")


def default_rollout(loaded: LoadedRecipe, **options: Any) -> Rollout:
    """The shadow window on the prediction log, then the canary steps walked by `mlops.deploy.rollout`.
    `options` go to DeployRollout (`local_port`, `metrics_url`, `kubectl`, `live_url`)."""
    return DeployRollout(loaded, **options)


# --- deciding a stage on the prediction log ---------------------------------------------------------------


def shadow_verdict(served: list[Any], shadow: list[Any], cfg: ShadowStageConfig, max_accuracy_drop: float,
                   seed: int = 0) -> StageResult:
    """Shadow rows (and the served rows with the same ids): disagreement share, and on rows with ground
    truth, a paired comparison of accuracy (McNemar) that fails only when it shows the challenger worse by
    more than `max_accuracy_drop`."""

    by_id = {j.id: j for j in served}
    pairs = [(by_id[s.id], s) for s in shadow if s.id in by_id]
    evidence: dict[str, Any] = {"shadow_rows": len(shadow), "paired_rows": len(pairs)}
    if len(pairs) < cfg.min_rows:
        return StageResult("shadow", False, f"only {len(pairs)} shadow rows paired with a served answer "
                           f"(improve.rollout.shadow.min_rows={cfg.min_rows})", evidence=evidence)
    differ = sum(disagreements(_arrays([a]), _arrays([b]), 1) for a, b in pairs)
    share = differ / len(pairs)
    evidence |= {"disagreements": differ, "disagreement": share}
    if share > cfg.max_disagreement:
        return StageResult("shadow", False, f"the challenger disagreed with the served model on {share:.1%} of "
                           f"{len(pairs)} rows (max {cfg.max_disagreement:.1%})", evidence=evidence)
    accuracy = _paired_accuracy(pairs, max_accuracy_drop, seed)
    if accuracy is not None:
        evidence["accuracy"] = accuracy
        if not accuracy["passed"]:
            lo, hi = accuracy["ci"]
            return StageResult("shadow", False, f"on {accuracy['n']} rows with ground truth the challenger is "
                               f"less accurate: {accuracy['challenger']:.3f} vs {accuracy['champion']:.3f} "
                               f"(difference [{lo:+.3f}, {hi:+.3f}], p = {accuracy['p_value']:.3g})",
                               evidence=evidence)
    labelled = f"; accuracy on {accuracy['n']} labelled rows {accuracy['challenger']:.3f} vs {accuracy['champion']:.3f}" \
        if accuracy else ""
    return StageResult("shadow", True, f"{len(pairs)} shadow rows, {share:.1%} disagreement{labelled}",
                       evidence=evidence)


def canary_verdict(champion: list[Any], challenger: list[Any], shadow: list[Any], step: CanaryStep,
                   max_accuracy_drop: float, alpha: float = 0.05) -> StageResult:
    """One canary step: enough challenger answers, p99 latency, shadow disagreement if a shadow runs, and
    on rows with ground truth, accuracy of the two arms (fails only when shown worse by the margin)."""
    import numpy as np

    evidence: dict[str, Any] = {"challenger_rows": len(challenger), "champion_rows": len(champion)}
    if len(challenger) < step.min_rows:
        return StageResult("canary", False, f"only {len(challenger)} challenger answers at {step.percent} % "
                           f"(deploy.rollout.checks.min_requests={step.min_rows})", step.percent, evidence)
    p99 = float(np.percentile([j.latency_ms for j in challenger], 99))
    evidence["p99_ms"] = p99
    if step.max_p99_ms is not None and p99 > step.max_p99_ms:
        return StageResult("canary", False, f"challenger p99 latency {p99:.1f} ms is above {step.max_p99_ms:g} ms",
                           step.percent, evidence)
    if step.max_shadow_disagreement is not None and shadow:
        by_id = {j.id: j for j in champion + challenger}
        pairs = [(by_id[s.id], s) for s in shadow if s.id in by_id]
        if pairs:
            share = sum(disagreements(_arrays([a]), _arrays([b]), 1) for a, b in pairs) / len(pairs)
            evidence["shadow_disagreement"] = share
            if share > step.max_shadow_disagreement:
                return StageResult("canary", False, f"shadow disagreement {share:.1%} is above "
                                   f"{step.max_shadow_disagreement:.1%}", step.percent, evidence)
    a = [j.correct for j in champion if j.correct is not None]
    b = [j.correct for j in challenger if j.correct is not None]
    if len(a) >= 2 and len(b) >= 2:
        diff = proportion_difference(sum(b), len(b), sum(a), len(a), alpha)
        evidence["accuracy"] = diff
        if diff["ci"][1] < -max_accuracy_drop:
            return StageResult("canary", False, f"challenger accuracy {diff['b']:.3f} vs champion {diff['a']:.3f} on "
                               f"labelled rows: difference [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}] is below "
                               f"-{max_accuracy_drop:g}", step.percent, evidence)
    return StageResult("canary", True, f"{len(challenger)} challenger answers at {step.percent} %, p99 {p99:.1f} ms"
                       + (f", accuracy {evidence['accuracy']['b']:.3f} vs {evidence['accuracy']['a']:.3f}"
                          if "accuracy" in evidence else ""), step.percent, evidence)


def _arrays(rows: list[Any]) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    for name in rows[0].outputs:
        values = [r.outputs.get(name) for r in rows]
        out[name] = np.asarray(values, dtype=object if name == "label" else np.float64)
    return out


def _paired_accuracy(pairs: list[tuple[Any, Any]], max_drop: float, seed: int) -> dict[str, Any] | None:
    """McNemar on the rows whose truth is known, with the paired bootstrap interval of the difference."""
    import numpy as np

    known = [(a, b) for a, b in pairs if a.truth is not None and "label" in a.outputs and "label" in b.outputs]
    if len(known) < 10:
        return None
    labels = sorted({str(a.truth) for a, _ in known} | {a.predicted for a, _ in known} | {b.predicted for _, b in known})
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[str(a.truth)] for a, _ in known])

    def one_hot(rows: list[Any]) -> np.ndarray:
        out = np.zeros((len(rows), max(2, len(labels))))
        out[np.arange(len(rows)), [index[r.predicted] for r in rows]] = 1.0
        return out

    task = "binary" if len(labels) <= 2 else "multiclass"
    served = Scored(task, y, one_hot([a for a, _ in known]), labels)
    challenger = Scored(task, y, one_hot([b for _, b in known]), labels)
    return compare(lambda s: float(np.mean(s.pred == s.y)), challenger, served, test="mcnemar", higher_is_better=True,
                   max_drop=max_drop, alpha=0.05, n_resamples=1000, seed=seed)


class LogRollout:
    """Decides each stage on the model's prediction log; moves no traffic unless given `set_traffic`
    (called with the target, the stage and the challenger's percent; 0 on abort, 100 on complete)."""

    def __init__(self, set_traffic: Callable[[RolloutTarget, str, int], None] | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.set_traffic = set_traffic
        self.clock, self.sleep = clock, sleep

    def _move(self, target: RolloutTarget, stage: str, percent: int) -> None:
        if self.set_traffic is not None:
            self.set_traffic(target, stage, percent)

    def shadow(self, target: RolloutTarget, cfg: ShadowStageConfig) -> StageResult:
        self._move(target, "shadow", 0)
        started = self.clock()
        say(f"shadow window for {target.model}/{target.version}: waiting for {cfg.min_rows} shadow rows "
            f"in {target.log} (up to {cfg.timeout_s:g} s; serve with: mlops serve {target.model}@champion "
            f"--shadow {target.model}/{target.version})")
        while True:
            served, shadow = self._read(target, started, ("shadow",))
            done = sum(1 for s in shadow if s.id in {j.id for j in served}) >= cfg.min_rows
            if done or self.clock() - started >= cfg.timeout_s:
                result = shadow_verdict(served, shadow, cfg, target.max_accuracy_drop)
                if not done:
                    result.summary = f"timed out after {cfg.timeout_s:g} s: {result.summary}"
                return result
            self.sleep(target.poll_s)

    def canary(self, target: RolloutTarget, steps: list[CanaryStep]) -> list[StageResult]:
        results = []
        for step in steps:
            results.append(self._step(target, step))
            if not results[-1].passed:
                break
        return results

    def _step(self, target: RolloutTarget, step: CanaryStep) -> StageResult:
        self._move(target, "canary", step.percent)
        started = self.clock()
        say(f"canary step {step.percent} % for {target.model}/{target.version}: waiting for "
            f"{step.min_rows} challenger answers in {target.log} (up to {step.timeout_s:g} s)")
        while True:
            served, shadow = self._read(target, started, ("shadow",))
            challenger = [j for j in served if j.variant == "challenger" and j.version == target.version]
            champion = [j for j in served if j.variant == "champion"]
            done = len(challenger) >= step.min_rows
            if done or self.clock() - started >= step.timeout_s:
                result = canary_verdict(champion, challenger, shadow, step, target.max_accuracy_drop)
                if not done:
                    result.summary = f"timed out after {step.timeout_s:g} s: {result.summary}"
                return result
            self.sleep(target.poll_s)

    def abort(self, target: RolloutTarget) -> None:
        self._move(target, "abort", 0)

    def complete(self, target: RolloutTarget) -> None:
        self._move(target, "complete", 100)

    def _read(self, target: RolloutTarget, since: float, extra: tuple[str, ...]) -> tuple[list[Any], list[Any]]:
        if not log_exists(target.log):
            return [], []
        rows = read_joined(target.log, target.model, since=since, variants=(*SERVED, *extra))
        served = [j for j in rows if j.variant in SERVED]
        shadow = [j for j in rows if j.variant == "shadow" and j.version == target.version]
        return served, shadow


class DeployRollout:
    """The shadow window on the prediction log (LogRollout's), then the canary steps walked by the deploy phase
    (`mlops.deploy.rollout.rollout`: traffic moved by `kubectl apply` or a local `mlops serve --ab` on
    `local_port`, each step judged on `metrics_url` / the canary's /metrics and the prediction log). It never
    promotes: the retraining loop moves `champion` itself once every stage passed."""

    def __init__(self, loaded: LoadedRecipe, local_port: int | None = None, metrics_url: str | None = None,
                 kubectl: bool = False, shadow: LogRollout | None = None, live_url: str | None = None) -> None:
        self.loaded = loaded
        self.local_port, self.metrics_url, self.kubectl, self.live_url = local_port, metrics_url, kubectl, live_url
        self.watch = shadow or LogRollout()

    def shadow(self, target: RolloutTarget, cfg: ShadowStageConfig) -> StageResult:
        return self.watch.shadow(target, cfg)

    def canary(self, target: RolloutTarget, steps: list[CanaryStep]) -> list[StageResult]:
        if target.champion is None:
            return [StageResult("canary", False, "there is no champion to roll out next to")]
        try:
            options = RolloutOptions(stable=ModelVersion(target.model, target.champion).ref,
                                     metrics_url=self.metrics_url, log=target.log if log_exists(target.log) else None,
                                     kubectl=self.kubectl, local_port=self.local_port, live_url=self.live_url,
                                     promote=False)
            walked = rollout(self.loaded, ModelVersion(target.model, target.version).ref, options,
                             report=lambda line: say(f"rollout: {line}"))
        except MlopsError as exc:  # e.g. no source can measure a check: no evidence is a failed stage
            return [StageResult("canary", False, f"the canary could not be judged: {exc}")]
        results = [StageResult("canary", s.decision == "advance", _step_summary(s), s.percent, s.to_dict())
                   for s in walked.steps]
        if walked.decision != "advance" and (not results or results[-1].passed):
            results.append(StageResult("canary", False, walked.reason))
        if walked.decision != "advance":
            results[-1].summary = f"{walked.decision}: {walked.reason}"
        return results

    def abort(self, target: RolloutTarget) -> None:
        """The deploy walk already put traffic back on the stable model when a step failed."""

    def complete(self, target: RolloutTarget) -> None:
        """Traffic follows `champion`: the deploy phase renders the new champion's manifest on promotion; a live
        server swaps the new champion in now and gives the challenger no more traffic."""
        if self.live_url is not None:
            live = LiveServe(self.live_url, target.model)
            live.reload()
            live(None, None, 0, Path())


def _step_summary(step: Any) -> str:
    checks = "; ".join(c.render() for c in getattr(step, "checks", []))
    return f"{step.decision} at {step.percent} % after {step.windows} window(s)" + (f": {checks}" if checks else "")
