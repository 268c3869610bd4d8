"""The Prefect deployments a recipe's `deploy.prefect` describes, and the flows they point at."""

from __future__ import annotations

import pytest
import yaml

from mlops.core.errors import MlopsError
from mlops.deploy.orchestration import flow_deployments, prefect_api_url, prefect_yaml
from mlops.recipe.deploy import DeployConfig
from tests.net import free_port


def deployments(prefect: dict) -> list:
    cfg = DeployConfig.model_validate({"prefect": prefect}).prefect
    return flow_deployments(cfg, "churn", "churn_model", "recipes/churn_csv.yaml", ["seed=3"])


def test_one_deployment_per_enabled_flow_with_its_schedule_and_parameters() -> None:
    ds = deployments({"work_pool": "pool-a", "flows": {
        "train": {"cron": "0 2 * * *"}, "evaluate": {"enabled": False},
        "monitor": {"interval_s": 600}, "retrain": {"parameters": {"reason": "drift"}}}})

    by_flow = {d.flow: d for d in ds}
    assert list(by_flow) == ["train", "monitor", "retrain"]
    assert by_flow["train"].schedule == {"cron": "0 2 * * *", "timezone": "UTC", "active": True}
    assert by_flow["monitor"].schedule == {"interval": 600, "timezone": "UTC", "active": True}
    assert by_flow["retrain"].schedule is None
    assert by_flow["monitor"].parameters == {"recipe": "recipes/churn_csv.yaml", "overrides": ["seed=3"],
                                             "model": "churn_model@champion"}
    assert by_flow["retrain"].parameters["reason"] == "drift"  # the recipe's parameters win over defaults
    assert {d.entrypoint for d in ds} == {"mlops.flows.train", "mlops.flows.monitor", "mlops.flows.retrain"}
    assert {d.full_name for d in ds} == {"mlops-train/churn", "mlops-monitor/churn", "mlops-retrain/churn"}
    assert all(d.work_pool == "pool-a" for d in ds)


def test_prefect_yaml_is_what_prefect_deploy_reads() -> None:
    doc = yaml.safe_load(prefect_yaml(deployments({"flows": {"train": {"cron": "0 3 * * 0"}}}), "churn", "/srv/p",
                                      prefect_version="3.9.1"))

    assert doc["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/srv/p"}}]
    assert [d["entrypoint"] for d in doc["deployments"]] == [f"mlops.flows.{f}" for f in
                                                             ("train", "evaluate", "monitor", "retrain")]
    train = doc["deployments"][0]
    assert train["work_pool"] == {"name": "mlops", "work_queue_name": None, "job_variables": {}}
    assert train["schedules"] == [{"cron": "0 3 * * 0", "timezone": "UTC", "active": True}]
    assert doc["deployments"][1]["schedules"] == []  # on demand


def test_entrypoints_are_the_flows_of_mlops_flows() -> None:
    from prefect import Flow

    from mlops import flows

    for d in deployments({}):
        module, _, name = d.entrypoint.rpartition(".")
        assert module == "mlops.flows"
        flow = getattr(flows, name)
        assert isinstance(flow, Flow) and flow.name == d.full_name.split("/")[0]
        # typed parameters, each deployment's defaults among them
        assert set(d.parameters) <= set(flow.parameters.properties)
        assert flow.parameters.required == ["recipe"]


def test_registration_needs_a_reachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(MlopsError, match="set PREFECT_API_URL"):
        prefect_api_url()

    port = free_port()  # a port nobody listens on
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    with pytest.raises(MlopsError, match="no Prefect server answers at PREFECT_API_URL"):
        prefect_api_url()
