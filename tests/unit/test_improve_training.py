"""How a retrain calls the engine: the recipe's run on the refreshed data (or its sweep with the budget), the
champion comparisons read from the evaluation report, and a gate failure turned into a stopped version found
by its data fingerprint. The engine itself is replaced here; tests/e2e/test_improve_retrain.py runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlops.core.errors import GateError, MlopsError
from mlops.engine.summary import GateSummary, RunSummary, VerdictBrief
from mlops.improve.retrain import retrain_recipe, train_with_engine
from mlops.recipe import load_recipe
from mlops.sweep.flow import BestTrial, SweepSummary
from tests.conftest import ROOT
from tests.improve_fixtures import FakeRegistry, champion_verdict


class State:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def summary(tmp_path: Path, verdicts: list[dict[str, Any]]) -> RunSummary:
    report = tmp_path / "evaluation.html"
    report.write_text("<html></html>")
    (tmp_path / "evaluation.json").write_text(json.dumps({"gates": verdicts}))
    brief = [VerdictBrief(metric=v["metric"], slice=v["slice"], threshold=v.get("threshold", ""), value=v["value"],
                          status=v["status"], detail=v.get("detail", "")) for v in verdicts]
    return RunSummary(run_id="r1", recipe="quickstart", model_name="quickstart", model_version="7", aliases=[],
                      metrics={"test/auroc": 0.97}, bundle=str(tmp_path / "bundle"), data_fingerprint="sha256:abc",
                      recipe_hash="h", overrides=[], split_sizes={}, parity_max_abs_diff=0.0,
                      gates=GateSummary(outcome="passed", failures=[], champion=None, verdicts=brief,
                                        report=str(report)),
                      world_size=1, cache={}, run_dir=str(tmp_path), tracking_uri="sqlite://", experiment="quickstart",
                      seconds=1.0)


def test_a_run_reads_the_champion_intervals_from_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlops.improve.retrain as runner  # the training flow as retrain calls it

    calls: list[tuple[str, list[str]]] = []

    def run_flow(recipe: str, overrides: list[str], return_state: bool = False) -> State:
        calls.append((recipe, overrides))
        return State(summary(tmp_path, [champion_verdict(0.01, 0.03)]))

    monkeypatch.setattr(runner, "run_flow", run_flow)
    loaded = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    trained = train_with_engine(loaded, ["++data.path='/x.parquet'"], "sha256:abc", FakeRegistry())
    assert calls == [(str((ROOT / "recipes" / "quickstart.yaml").resolve()), ["++data.path='/x.parquet'"])]
    assert (trained.passed, trained.run_id, trained.version) == (True, "r1", "7")
    assert trained.verdicts[0]["comparison"]["ci"] == [0.01, 0.03]  # the summary alone has no interval
    assert trained.metrics == {"test/auroc": 0.97}


def test_a_gate_failure_finds_the_version_by_its_data_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlops.improve.retrain as runner  # the training flow as retrain calls it

    message = ("model quickstart version 4 FAILED its gates: registered with tag gates=failed and no alias\n"
               "  gate test/auroc >= 0.85: FAILED: 0.61 is below the minimum 0.85\n"
               "  gate test/auroc drop vs champion <= 0.01 (paired_bootstrap, alpha 0.05): FAILED: 0.61 vs ...\n"
               "report: /somewhere/evaluation.html\n(rerun with --allow-failed-gates to register it with aliases anyway)")
    monkeypatch.setattr(runner, "run_flow", lambda *a, **k: State(GateError(message)))
    registry = FakeRegistry(fingerprints={"sha256:abc": ("4", "run4")})
    loaded = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    trained = train_with_engine(loaded, [], "sha256:abc", registry)
    assert (trained.passed, trained.version, trained.run_id) == (False, "4", "run4")
    assert trained.failures == ["gate test/auroc >= 0.85: FAILED: 0.61 is below the minimum 0.85",
                                "gate test/auroc drop vs champion <= 0.01 (paired_bootstrap, alpha 0.05): FAILED: "
                                "0.61 vs ..."]


def test_sweep_mode_runs_the_recipes_study_with_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlops.improve.retrain as sweep_module  # the sweep flow as retrain calls it

    calls: list[list[str]] = []

    def sweep(recipe: str, overrides: list[str]) -> SweepSummary:
        calls.append(overrides)
        return SweepSummary(study_name="s", storage="sqlite://", parent_run_id="p", trials={}, requeued=[],
                            run=summary(tmp_path, [champion_verdict(-0.01, 0.02)]),
                            best=BestTrial(number=3, value=0.9, params={}, overrides=[], trial_run_id=None))

    monkeypatch.setattr(sweep_module, "sweep", sweep)
    loaded = load_recipe(ROOT / "recipes" / "quickstart_sweep.yaml", ["improve.retrain.mode=sweep",
                                                                   "improve.retrain.budget=3"])
    trained = train_with_engine(loaded, ["a=1"], "sha256:abc", FakeRegistry())
    assert calls == [["a=1", "sweep.n_trials=3"]] and trained.version == "7"


def test_sweep_mode_needs_a_sweep_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    with pytest.raises(MlopsError, match="improve.retrain.mode is 'sweep' but the recipe has no `sweep:` section"):
        retrain_recipe(str(ROOT / "recipes" / "quickstart.yaml"), ["improve.retrain.mode=sweep"], "drift",
                       registry=FakeRegistry())
