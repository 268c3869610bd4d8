"""`mlops monitor` as a user runs it: a recipe, a model reference, the prediction log; alerts on stderr, a table
and the dashboard's path on stdout, `--json` for machines; mistakes exit 2 with a message that says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import last_json, run_cli
from tests.monitor_fixtures import build_breast_cancer_bundle, log_traffic, quickstart_split

pytestmark = pytest.mark.e2e

T0 = 1_767_225_600.0


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four windows of 1000 rows; mean_radius moves by 0.6 standard deviations in the last two."""
    tmp = tmp_path_factory.mktemp("monitor-cli")
    bundle = build_breast_cancer_bundle(tmp / "bundle")
    train = quickstart_split()["train"]
    rng = np.random.default_rng(11)
    frame = train.iloc[rng.integers(0, len(train), 4000)].reset_index(drop=True)
    frame.loc[2000:, "mean_radius"] += 0.6 * train["mean_radius"].std()
    log_traffic(tmp / "log.sqlite", bundle, frame, T0 + np.arange(4000.0))
    return {"bundle": bundle, "log": tmp / "log.sqlite"}


ARGS = ["monitor.drift.features={mean_radius: {key: true}}", "monitor.report.evidently=false"]


def test_monitor_then_backtest(traffic: dict[str, Path], isolated_env: dict[str, str]) -> None:
    common = ["monitor", "recipes/quickstart.yaml", "--model", str(traffic["bundle"]), "--log", str(traffic["log"])]
    proc = run_cli([*common, "--json", *ARGS], isolated_env)
    result = last_json(proc)

    assert [w["drifted_features"] for w in result["windows"]] == [[], [], ["mean_radius"], ["mean_radius"]]
    assert [(a["rule"], a["state"], a["window"]["index"]) for a in result["alerts"]] == [("drift", "fired", 3)]
    assert "ALERT FIRED drift model quickstart" in proc.stderr
    assert "FIRED drift at window 3" in proc.stderr and f"dashboard  {result['dashboard']}" in proc.stderr
    assert Path(result["dashboard"]).is_file() and Path(result["store"]).is_file()

    again = last_json(run_cli([*common, "--json", *ARGS], isolated_env))
    assert again["windows"] == [] and again["alerts"] == []  # resumed after the last judged window

    backtest = last_json(run_cli([*common, "--backtest", "--json", *ARGS, "monitor.alerts.consecutive=1"],
                                 isolated_env))
    assert backtest["backtest"] and backtest["first_fired"]["drift"]["window"] == 2
    assert json.loads(Path(backtest["report"]).read_text())["first_fired"] == backtest["first_fired"]


@pytest.mark.parametrize(("args", "message"), [
    (["--log", "{tmp}/missing.sqlite"], "no prediction log at"),
    (["monitor.window.sise=10"], "monitor.window.sise: unknown key (did you mean 'monitor.window.size'?)"),
], ids=["missing-log", "recipe-typo"])
def test_mistakes_exit_2_with_what_to_do(traffic: dict[str, Path], isolated_env: dict[str, str], tmp_path: Path,
                                         args: list[str], message: str) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    log = [] if "--log" in args else ["--log", str(traffic["log"])]
    proc = run_cli(["monitor", "recipes/quickstart.yaml", "--model", str(traffic["bundle"]), *log, *args], isolated_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
