"""Fixtures of the improvement loop's tests: a tiny CSV recipe, prediction logs with feedback, and in-memory
twins of what the loop drives (the registry, training, the rollout) so its decisions are tested without MLflow
or a live server. Integration and e2e tests use the real ones."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops.core.predlog import PredictionLog, prediction_rows
from mlops.core.refs import CHALLENGER, CHAMPION
from mlops.improve.retrain import Trained
from mlops.improve.rollout import CanaryStep, RolloutTarget, StageResult
from tests.serve_fixtures import training_frame

MODEL = "toy"


def toy_recipe(folder: Path, extra: str = "") -> Path:
    """A recipe over tests.serve_fixtures.training_frame (columns age, income, city; target y: yes/no)."""
    folder.mkdir(parents=True, exist_ok=True)
    training_frame().to_csv(folder / "toy.csv", index=False)
    path = folder / "toy.yaml"
    path.write_text(f"name: {MODEL}\ndata: {{path: toy.csv, target: y}}\n{extra}")
    return path


def log_predictions(log: Path, ids: list[str], *, variant: str = "champion", version: str = "1",
                    label: str = "no", inputs: list[dict[str, Any]] | None = None, ts: float | None = None,
                    latency_ms: float = 1.0, model: str = MODEL) -> None:
    rows = inputs or [{"age": 30.0 + i, "income": 50.0, "city": "b"} for i in range(len(ids))]
    outputs = [{"label": label, "probabilities": [0.8, 0.2] if label == "no" else [0.2, 0.8]}] * len(ids)
    records = prediction_rows(ids, model, version, variant, rows, outputs, latency_ms)
    if ts is not None:
        records = [(r[0], ts, *r[2:]) for r in records]
    writer = PredictionLog(log)
    try:
        writer.submit("predictions", records).result(timeout=30)
    finally:
        writer.close()


def log_feedback(log: Path, items: list[dict[str, Any]], ts: float | None = None) -> None:
    """Feedback rows as the log stores them (id, ts, label, value, payload), whatever the payload holds."""
    now = time.time() if ts is None else ts
    rows = [(i["id"], now, None if i.get("label") is None else str(i["label"]), i.get("value"), json.dumps(i))
            for i in items]
    writer = PredictionLog(log)
    try:
        writer.submit("feedback", rows).result(timeout=30)
    finally:
        writer.close()


def champion_verdict(lo: float, hi: float, estimate: float | None = None, metric: str = "test/auroc") -> dict[str, Any]:
    """A passed `vs: champion` gate with its paired-bootstrap interval, as the evaluation report holds it."""
    est = (lo + hi) / 2 if estimate is None else estimate
    return {"metric": metric, "kind": "champion", "slice": None, "status": "passed", "value": 0.9,
            "comparison": {"test": "paired_bootstrap", "challenger": 0.9, "champion": 0.9 - est, "estimate": est,
                           "ci": [lo, hi], "p_value": 0.5, "passed": True}}


@dataclass
class FakeRegistry:
    """The registry as the loop sees it: aliases, tags, logged files; `promote` moves champion."""

    alias: dict[str, str] = field(default_factory=dict)
    version_tags: dict[str, dict[str, str]] = field(default_factory=dict)
    run_tags: dict[str, dict[str, str]] = field(default_factory=dict)
    files: list[tuple[str, Path, str]] = field(default_factory=list)
    versions: int = 0
    fingerprints: dict[str, tuple[str, str]] = field(default_factory=dict)

    def aliases(self, model: str) -> dict[str, str]:
        return dict(self.alias)

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self.alias[alias] = version

    def delete_alias(self, model: str, alias: str) -> None:
        self.alias.pop(alias, None)

    def promote(self, model: str, version: str, reason: str, by: str) -> None:
        self.alias[CHAMPION] = version

    def tag_version(self, model: str, version: str, tags: dict[str, str]) -> None:
        self.version_tags.setdefault(version, {}).update(tags)

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None:
        self.run_tags.setdefault(run_id, {}).update(tags)

    def log_file(self, run_id: str, path: Path, folder: str) -> None:
        self.files.append((run_id, path, folder))

    def version_for(self, model: str, fingerprint: str) -> tuple[str, str] | None:
        return self.fingerprints.get(fingerprint)


@dataclass
class FakeTrainer:
    """Training as the engine does it to the registry: a new version; `challenger` when its gates pass (and
    `champion` when there is none)."""

    passed: bool = True
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    delay_s: float = 0.0

    def __call__(self, loaded: Any, overrides: list[str], fingerprint: str, registry: Any) -> Trained:
        self.calls.append(list(overrides))
        time.sleep(self.delay_s)
        registry.versions += 1
        version, run_id = str(registry.versions), f"run{registry.versions:04d}"
        registry.fingerprints[fingerprint] = (version, run_id)
        if self.passed:
            registry.alias[CHALLENGER] = version
            registry.alias.setdefault(CHAMPION, version)
        return Trained(self.passed, run_id, version, self.verdicts,
                       [] if self.passed else ["gate test/auroc >= 0.85: FAILED: 0.6 is below the minimum 0.85"])


@dataclass
class ScriptedRollout:
    """A rollout whose stages pass or fail as told; records what it was asked."""

    shadow_passes: bool = True
    canary_fails_at: int | None = None
    asked: list[str] = field(default_factory=list)

    def shadow(self, target: RolloutTarget, cfg: Any) -> StageResult:
        self.asked.append("shadow")
        return StageResult("shadow", self.shadow_passes, "scripted shadow")

    def canary(self, target: RolloutTarget, steps: list[CanaryStep]) -> list[StageResult]:
        out = []
        for step in steps:
            self.asked.append(f"canary {step.percent}")
            ok = step.percent != self.canary_fails_at
            out.append(StageResult("canary", ok, f"scripted canary at {step.percent} %", step.percent))
            if not ok:
                break
        return out

    def abort(self, target: RolloutTarget) -> None:
        self.asked.append("abort")

    def complete(self, target: RolloutTarget) -> None:
        self.asked.append("complete")
