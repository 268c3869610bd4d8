"""The recipe's `deploy:` section through the real recipe loader: a typo, a wrong type and every cross-field
rule fail with the field's dotted path and the file:line (or override) that set it; the shipped options load."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.core.errors import RecipeError
from mlops.recipe import load_recipe
from tests.conftest import ROOT

QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


def problems(recipe: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, overrides or [])
    return str(info.value)


@pytest.mark.parametrize("option", ["default", "standard", "triton", "triton_gpu"])
def test_shipped_deploy_options_load(option: str) -> None:
    deploy = load_recipe(QUICKSTART, [f"deploy={option}"]).recipe.deploy

    assert deploy.mode == ("Standard" if option == "standard" else "Knative")
    assert deploy.runtime == ("triton" if option.startswith("triton") else "mlops")
    assert deploy.resources.gpus == (1 if option == "triton_gpu" else 0)
    assert deploy.rollout.steps == [1, 10, 50, 100]


def write_recipe(tmp_path: Path, deploy_yaml: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLOPS_CONFIG_PATH", str(ROOT / "mlops" / "configs"))
    path = tmp_path / "mine.yaml"
    path.write_text("defaults:\n  - data: breast_cancer\n  - deploy: default\n  - _self_\n\nname: mine\n"
                    "deploy:\n" + deploy_yaml)
    return str(path)


def test_typo_is_reported_at_its_line_with_a_suggestion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = write_recipe(tmp_path, "  autoscaling:\n    max_replica: 4\n", monkeypatch)

    text = problems(recipe)

    assert "mine.yaml:9: deploy.autoscaling.max_replica: unknown key (did you mean 'max_replicas'?)" in text


def test_wrong_type_is_reported_at_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = write_recipe(tmp_path, "  rollout:\n    window_s: soon\n", monkeypatch)

    text = problems(recipe)

    assert "mine.yaml:9: deploy.rollout.window_s: Input should be a valid number" in text
    assert "'soon'" in text


@pytest.mark.parametrize(("overrides", "field", "why"), [
    (["deploy=triton", "deploy.protocol=v1"], "deploy.protocol", "V2 protocol only"),
    (["deploy=triton", "deploy.storage_uri=null"], "deploy.storage_uri", "loads the model from storage"),
    (["deploy.resources.gpus=1"], "deploy.resources.gpus", "GPUs need runtime: triton"),
    (["deploy=standard", "deploy.autoscaling.metric=concurrency"], "deploy.autoscaling.metric", "need Knative"),
    (["deploy=standard", "deploy.autoscaling.min_replicas=0"], "deploy.autoscaling.min_replicas",
     "scale to zero needs Knative"),
    (["deploy.autoscaling.min_replicas=5"], "deploy.autoscaling.min_replicas", "is above max_replicas (3)"),
    (["deploy.rollout.steps=[1,50,10,100]"], "deploy.rollout.steps", "must rise strictly"),
    (["deploy.rollout.steps=[1,10,50]"], "deploy.rollout.steps", "the last step must be 100"),
    (["deploy.rollout.steps=[0,100]"], "deploy.rollout.steps.0", "greater than or equal to 1"),
    (["deploy.prefect.flows.monitor.cron=0 3 * *"], "deploy.prefect.flows.monitor.cron", "5 fields"),
    (["deploy.prefect.flows.train.interval_s=60"], "deploy.prefect.flows.train.interval_s",
     "cron or interval_s, not both"),
    (["deploy.name=Quick_Start"], "deploy.name", "should match pattern"),
    (["deploy.resources.memory=lots"], "deploy.resources.memory", "should match pattern"),
    (["deploy.alerts.for=10 minutes"], "deploy.alerts.for", "should match pattern"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_cross_field_and_format_rules_name_the_field(overrides: list[str], field: str, why: str) -> None:
    text = problems(QUICKSTART, overrides)

    assert f"{field}: " in text and why in text, text
    if not field[-1].isdigit():  # (a list element's problem is located at the list's file, not the override)
        assert f"command-line override '{overrides[-1]}': {field}" in text, text


def test_cross_field_rule_points_at_the_yaml_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = write_recipe(tmp_path, "  runtime: triton\n  storage_uri: s3://b/m\n  protocol: v1\n", monkeypatch)

    text = problems(recipe)

    assert "mine.yaml:10: deploy.protocol: runtime 'triton' serves ONNX over the V2 protocol only" in text


def test_several_cross_field_problems_are_all_reported() -> None:
    text = problems(QUICKSTART, ["deploy.mode=Standard", "deploy.resources.gpus=2"])

    assert "(2 problems)" in text
    assert "deploy.resources.gpus" in text and "deploy.autoscaling.metric" in text


def test_a_valid_combination_passes() -> None:
    r = load_recipe(QUICKSTART, ["deploy=standard", "deploy.rollout.steps=[5,100]",
                                 "deploy.prefect.flows.train.cron=null", "deploy.prefect.flows.train.interval_s=60"]).recipe

    assert r.deploy.rollout.steps == [5, 100]
    assert r.deploy.prefect.flows.train.interval_s == 60 and r.deploy.prefect.flows.train.cron is None
