"""Cache keys: a change invalidates exactly the steps downstream of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.engine.cache import Cache
from mlops.engine.plan import compile_plan
from mlops.recipe import load_recipe
from tests.conftest import ROOT

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def keys(overrides: list[str], tmp_path: Path) -> dict[str, str]:
    plan = compile_plan(load_recipe(QUICKSTART, overrides), Cache(tmp_path))
    return {s.name: s.key for s in plan.steps}


def test_same_recipe_same_keys(tmp_path: Path) -> None:
    assert keys([], tmp_path) == keys([], tmp_path)


def test_model_change_invalidates_train_and_after_only(tmp_path: Path) -> None:
    base, changed = keys([], tmp_path), keys(["model.lr=0.01"], tmp_path)
    same = [s for s in base if base[s] == changed[s]]
    assert same == ["load_data", "check_data", "split", "preprocess"]


def test_gate_change_keeps_every_computed_result(tmp_path: Path) -> None:
    """A stricter gate re-decides on the cached evaluation: nothing is retrained or re-measured."""
    base, changed = keys([], tmp_path), keys(["evaluate.gates.0.min=0.95"], tmp_path)
    assert [s for s in base if base[s] != changed[s]] == ["gate", "register"]


@pytest.mark.parametrize("override", ["monitor.alerts.consecutive=5", "deploy.rollout.steps=[5,100]",
                                      "improve.limits.max_per_day=1"])
def test_a_later_phase_setting_keeps_the_model(tmp_path: Path, override: str) -> None:
    """Deploy, monitor and improve settings act on a model once it exists: nothing is retrained or exported."""
    base, changed = keys([], tmp_path), keys([override], tmp_path)
    assert base == changed


def test_assessment_change_reruns_only_the_assessment(tmp_path: Path) -> None:
    base, changed = keys([], tmp_path), keys(["evaluate.robustness.epsilon=0.1"], tmp_path)
    assert [s for s in base if base[s] != changed[s]] == ["assess", "gate", "register"]
    expectations = keys(["++evaluate.expectations.min_rows=10"], tmp_path)
    assert [s for s in base if base[s] != expectations[s]] == ["check_data"]


def test_split_change_invalidates_split_and_after(tmp_path: Path) -> None:
    base, changed = keys([], tmp_path), keys(["data.split.seed=5"], tmp_path)
    assert base["load_data"] == changed["load_data"]
    assert all(base[s] != changed[s] for s in ("split", "preprocess", "train", "evaluate", "export", "register"))


def test_data_bytes_are_part_of_the_key(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\ndata:\n  path: {csv}\n  target: y\n")
    first = compile_plan(load_recipe(recipe), Cache(tmp_path / "c")).step("load_data").key
    csv.write_text("a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,9,1\n")
    assert compile_plan(load_recipe(recipe), Cache(tmp_path / "c")).step("load_data").key != first


def test_cache_publishes_whole_results_only(tmp_path: Path) -> None:
    cache = Cache(tmp_path)

    def boom(out: Path) -> dict:
        (out / "partial.bin").write_bytes(b"x")
        raise RuntimeError("crash mid-step")

    with pytest.raises(RuntimeError):
        cache.compute("train", "k1", boom)
    assert not cache.has("train", "k1") and list((tmp_path / "train").iterdir()) == []
    result = cache.compute("train", "k1", lambda out: (out / "w.bin").write_bytes(b"ok") and {"file": "w.bin"})
    assert cache.has("train", "k1") and (Path(result["dir"]) / "w.bin").read_bytes() == b"ok"


def test_editing_a_step_function_invalidates_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from mlops.engine import plan as plan_mod

    copy = tmp_path / "pkg"
    shutil.copytree(plan_mod.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(plan_mod, "PACKAGE", copy)
    before = keys([], tmp_path)
    with open(copy / "engine" / "steps.py", "a") as f:
        f.write("\n# a changed step body\n")
    after = keys([], tmp_path)
    assert all(before[s] != after[s] for s in before)
