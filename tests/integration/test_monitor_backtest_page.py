"""`mlops monitor --backtest` writes one page beside its JSON record and names both in its result (the page as
its dashboard too); the page, as headless Chromium shows it, says when each rule would first have fired over the
replayed windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlops.monitor.results import BacktestResult
from mlops.monitor.run import monitor_recipe
from tests.browser import Tables, chromium, rendered_dom
from tests.monitor_fixtures import QUICKSTART, build_breast_cancer_bundle, log_traffic, quickstart_split

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def test_backtest_page_beside_its_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    bundle = build_breast_cancer_bundle(tmp_path / "bundle")
    train = quickstart_split()["train"]
    frame = train.iloc[np.random.default_rng(5).integers(0, len(train), 3000)].reset_index(drop=True)
    frame.loc[1000:, "mean_radius"] += 0.6 * train["mean_radius"].std()  # windows 1 and 2 drift
    log = tmp_path / "log.sqlite"
    log_traffic(log, bundle, frame, T0 + np.arange(3000.0))

    result = monitor_recipe(str(QUICKSTART), ["monitor.drift.features={mean_radius: {key: true}}",
                                              "monitor.report.evidently=false", "monitor.alerts.consecutive=1"],
                            str(bundle), log=str(log), backtest=True)

    assert isinstance(result, BacktestResult)
    json_path, html_path = Path(result.report), Path(result.report_html)
    assert html_path.is_file() and html_path.parent == json_path.parent and html_path.stem == json_path.stem
    assert json.loads(json_path.read_text())["report_html"] == str(html_path)
    assert result.dashboard == str(html_path) and sorted(p.name for p in html_path.parent.glob("*.html")) == [
        html_path.name]  # the one page
    assert result.first_fired["drift"].window == 1

    chromium()
    dom = Tables()
    dom.feed(rendered_dom(html_path))
    header, *rows = dom.tables["first-fired"]
    assert header[:2] == ["rule", "window"] and [row[:2] for row in rows] == [["drift", "1"]]
    assert len(dom.tables["windows"]) == 1 + 3
