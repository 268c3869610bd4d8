"""`mlops monitor` on synthetic production traffic drawn from a real data set: scikit-learn's breast cancer
data, the quickstart recipe's own split, and a real (torch-free) model of it. Traffic is scored by the
serving Predictor and written by the serving PredictionLog; ground truth goes in as feedback rows.

What is checked: no false alarm on 20 resamples of the reference at the default threshold; a shifted
feature caught, alerting on the right window; concept drift (labels flipped for a slice) caught through
ground truth only; hysteresis held across separate runs; the backtest firing on the right window; the
Evidently report agreeing with the fast path; the dashboard rendering in headless Chromium.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops.cli.output import jsonable
from mlops.core.timespec import iso
from mlops.monitor.run import monitor_recipe
from mlops.monitor.store import last_alert
from tests.browser import Tables, chromium, rendered_dom
from tests.monitor_fixtures import (
    QUICKSTART,
    build_breast_cancer_bundle,
    log_feedback,
    log_traffic,
    quickstart_split,
)

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NO_REPORT = ["monitor.report.evidently=false"]
KEY = ["monitor.drift.features={mean_radius: {key: true}}"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_breast_cancer_bundle(tmp_path_factory.mktemp("bc") / "bundle")


@pytest.fixture(scope="module")
def split() -> dict[str, pd.DataFrame]:
    return quickstart_split()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    return tmp_path / ".mlops"


def resample(frame: pd.DataFrame, n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """`n` rows drawn with replacement; `shift` moves mean_radius by that many of its standard deviations."""
    out = frame.iloc[np.random.default_rng(seed).integers(0, len(frame), n)].reset_index(drop=True)
    out["mean_radius"] = out["mean_radius"] + shift * frame["mean_radius"].std()
    return out


def seconds(n: int, start: float) -> np.ndarray:
    return start + np.arange(n, dtype=np.float64)


def run(bundle: Path, log: Path, *overrides: str, backtest: bool = False) -> dict[str, Any]:
    """The run's result as `mlops monitor --json` prints it."""
    return jsonable(monitor_recipe(str(QUICKSTART), list(overrides), str(bundle), log=str(log), backtest=backtest))


def test_no_false_alarm_on_20_resamples_of_the_reference(bundle: Path, split: dict, home: Path, tmp_path: Path) -> None:
    """Each of 20 windows (the default 1000 rows) is an independent bootstrap of the training split: at the
    default method and threshold (PSI, 0.1) no feature, no prediction column and no rule may flag."""
    log = tmp_path / "log.sqlite"
    frame = pd.concat([resample(split["train"], 1000, seed) for seed in range(20)], ignore_index=True)
    log_traffic(log, bundle, frame, seconds(len(frame), T0))

    result = run(bundle, log, *NO_REPORT)

    assert len(result["windows"]) == 20 and all(w["judged"] for w in result["windows"])
    assert [w["drifted_features"] for w in result["windows"]] == [[]] * 20
    assert [w["breaches"] for w in result["windows"]] == [[]] * 20
    assert result["alerts"] == []
    windows = _stored_windows(home)
    worst = max(c["score"] for w in windows for c in w["drift"]["columns"] + w["drift"]["predictions"])
    assert 0 < worst < 0.1  # scores were computed, and all stayed under the PSI threshold


def _stored_windows(home: Path) -> list[dict[str, Any]]:
    import json

    db = sqlite3.connect(home / "monitor" / "quickstart.sqlite")
    try:
        return [json.loads(r[0]) for r in db.execute("SELECT summary FROM windows ORDER BY id")]
    finally:
        db.close()


@pytest.fixture(scope="module")
def shifted(bundle: Path, split: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two clean windows, then three with mean_radius shifted by half a standard deviation; labels joined for
    the last window. One live run with the Evidently report and the Prometheus textfile on."""
    tmp = tmp_path_factory.mktemp("shifted")
    log = tmp / "log.sqlite"
    frames = [resample(split["train"], 1000, 100 + k, shift=0.5 if k >= 2 else 0.0) for k in range(5)]
    frame = pd.concat(frames, ignore_index=True)
    ids = log_traffic(log, bundle, frame, seconds(len(frame), T0))
    log_feedback(log, dict(zip(ids[-1000:], frame["target"].iloc[-1000:], strict=True)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(tmp / ".mlops"))
        result = run(bundle, log, *KEY, f"monitor.alerts.prometheus_textfile={tmp / 'drift.prom'}")
        yield result | {"tmp": tmp, "home": tmp / ".mlops"}


def test_a_shifted_feature_is_caught_and_alerts_on_the_second_window(shifted: dict[str, Any]) -> None:
    windows = shifted["windows"]
    assert [w["drifted_features"] for w in windows] == [[], [], ["mean_radius"], ["mean_radius"], ["mean_radius"]]
    fired = [a for a in shifted["alerts"] if a["rule"] == "drift"]
    assert len(fired) == 1 and fired[0]["state"] == "fired" and fired[0]["event"] == "mlops.alert.drift"
    assert fired[0]["window"]["index"] == 3  # breached on 2, 3, 4; two in a row needed
    assert fired[0]["detail"]["key_features"] == ["mean_radius"]
    record = last_alert("quickstart", home=shifted["home"])
    assert record is not None and record["window"]["start_iso"] == windows[3]["start"]
    assert record["value"] == pytest.approx(1 / 30) and record["threshold"] == 0.5
    from prometheus_client.parser import text_string_to_metric_families

    # read as node_exporter's textfile collector reads it (label order and number formatting are free)
    prom = {(s.name, s.labels["model"], s.labels["feature"]): s.value
            for f in text_string_to_metric_families((shifted["tmp"] / "drift.prom").read_text()) for s in f.samples}
    assert prom[("mlops_drift_detected", "quickstart", "mean_radius")] == 1
    assert prom[("mlops_drift_detected", "quickstart", "mean_texture")] == 0


def test_the_evidently_report_agrees_with_the_fast_path(shifted: dict[str, Any]) -> None:
    ev = shifted["evidently"]
    assert ev["window"] == 4 and not ev["sampled"]
    assert ev["agrees_with_fast_path"] is True and ev["disagreements"] == []
    assert Path(ev["html"]).stat().st_size > 10_000 and '"ValueDrift' in Path(ev["json"]).read_text()
    assert Path(ev["quality"]["html"]).is_file()  # the last window has ground truth: the classification preset


def test_concept_drift_is_caught_through_ground_truth(bundle: Path, split: dict, home: Path, tmp_path: Path) -> None:
    """Inputs keep their distribution; from window 2 on, the true label is flipped for a slice (large
    worst_area). No input drifts; live accuracy drops; accuracy_drop fires on window 3."""
    log = tmp_path / "log.sqlite"
    frame = pd.concat([resample(split["train"], 1000, 200 + k) for k in range(4)], ignore_index=True)
    ids = log_traffic(log, bundle, frame, seconds(len(frame), T0))
    labels = frame["target"].to_numpy().copy()
    flip = (np.arange(len(frame)) >= 2000) & (frame["worst_area"] > split["train"]["worst_area"].median()).to_numpy()
    labels[flip] = 1 - labels[flip]
    log_feedback(log, dict(zip(ids, labels, strict=True)))

    result = run(bundle, log, *NO_REPORT)

    accuracy = [w["metrics"]["accuracy"] for w in result["windows"]]
    baseline = result["baseline"]["value"]
    assert all(abs(a - baseline) < 0.05 for a in accuracy[:2]) and all(a < baseline - 0.3 for a in accuracy[2:])
    assert all(w["drifted_features"] == [] for w in result["windows"])
    assert [(a["rule"], a["window"]["index"]) for a in result["alerts"]] == [("accuracy_drop", 3)]
    before, after = (_stored_windows(home)[k]["quality"]["error_rate_by_class"] for k in (1, 3))
    # after the flip, most rows labelled 0 are large benign ones the model calls 1, and the large malignant
    # ones now labelled 1 are called 0: both classes' error rates jump
    assert before["0"] < 0.1 and before["1"] < 0.1 and after["0"] > 0.5 and after["1"] > 0.3


def test_hysteresis_holds_across_runs(bundle: Path, split: dict, home: Path, tmp_path: Path) -> None:
    """Each run sees one or two new windows: consecutive breaches and the cooldown are remembered between
    `mlops monitor` invocations, and a run with no new window changes nothing."""
    log = tmp_path / "log.sqlite"
    starts = iter(T0 + 1200.0 * k for k in range(100))

    def window(shift: float, seed: int, start: float | None = None) -> None:
        log_traffic(log, bundle, resample(split["train"], 1000, seed, shift), seconds(1000, start or next(starts)))

    def transitions() -> list[tuple[str, str]]:
        return [(a["rule"], a["state"]) for a in run(bundle, log, *KEY, *NO_REPORT)["alerts"]]

    window(0.5, 1)
    assert transitions() == []  # one breaching window of the two needed
    window(0.5, 2)
    assert transitions() == [("drift", "fired")]  # the breach from the previous run counted
    fired_at = last_alert("quickstart")["window"]["end"]
    window(0.5, 3)
    assert transitions() == []  # still firing: not sent again
    assert transitions() == []  # no new rows: nothing judged
    window(0.0, 4)
    assert transitions() == [("drift", "resolved")]
    window(0.5, 5)
    window(0.5, 6)
    assert transitions() == []  # two breaches in a row, but within the 6 h cooldown of the last firing
    window(0.5, 7, start=fired_at + 6 * 3600)
    assert transitions() == [("drift", "fired")]
    history = [(a["state"], a["window"]["index"]) for a in _alerts(home)]
    assert history == [("fired", 0), ("resolved", 0), ("fired", 0)]  # window index is per run: each run saw 1


def _alerts(home: Path) -> list[dict[str, Any]]:
    from mlops.core.workspace import Workspace
    from mlops.monitor.store import MonitorStore

    return MonitorStore(Workspace(home).monitor_store("quickstart")).alerts("quickstart")


def test_backtest_fires_at_the_right_window(bundle: Path, split: dict, home: Path, tmp_path: Path) -> None:
    """Hourly windows; mean_radius shifts from hour 4. With two windows needed the drift rule would have
    fired on hour 5, with one on hour 4. A backtest records nothing; a live run then fires where it said."""
    log = tmp_path / "log.sqlite"
    frame = pd.concat([resample(split["train"], 600, 300 + h, shift=0.5 if h >= 4 else 0.0) for h in range(8)],
                      ignore_index=True)
    log_traffic(log, bundle, frame, T0 + np.repeat(np.arange(8) * 3600.0, 600) + np.tile(np.arange(600) * 5.0, 8))
    hourly = ["monitor.window.by=time", "monitor.window.duration=1h", *KEY, *NO_REPORT]

    two = run(bundle, log, *hourly, backtest=True)
    one = run(bundle, log, *hourly, "monitor.alerts.consecutive=1", backtest=True)

    assert [w["start"] for w in two["windows"]] == [iso(T0 + 3600 * h) for h in range(8)]
    assert two["first_fired"]["drift"]["start"] == iso(T0 + 5 * 3600)
    assert one["first_fired"]["drift"]["start"] == iso(T0 + 4 * 3600)
    page = Path(two["dashboard"])  # one page: beside the JSON report, named by every alert
    assert Path(two["report"]).is_file() and page.is_file() and page == Path(two["report"]).with_suffix(".html")
    assert two["report_html"] == str(page) and {a["dashboard"] for a in two["alerts"]} == {str(page)}
    assert _alerts(home) == [] and _stored_windows(home) == []  # a backtest records nothing

    live = run(bundle, log, *hourly)
    fired = [a for a in live["alerts"] if a["state"] == "fired"]
    assert [(a["rule"], a["window"]["start_iso"]) for a in fired] == [("drift", iso(T0 + 5 * 3600))]


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ([], {"since": "yesterday-ish"}, "--since: 'yesterday-ish' is not a time"),
    ([], {"since": "2h", "until": "3h"}, "--since 2h is not before --until 3h"),
    (["monitor.drift.features={mean_radios: {key: true}}"], {},
     "monitor.drift.features names columns the model does not take: 'mean_radios' (did you mean 'mean_radius'?)"),
    (["monitor.drift.features={mean_radius: {method: chi2}}"], {},
     "drift method 'chi2' does not apply to numeric column 'mean_radius'"),
    (["monitor.accuracy.metric=rmse"], {}, "monitor.accuracy.metric 'rmse' is not computed for a binary model"),
], ids=["bad-since", "since-after-until", "unknown-feature", "method-for-kind", "metric-for-task"])
def test_mistakes_say_what_to_do(bundle: Path, home: Path, tmp_path: Path, args: list[str], kwargs: dict[str, str],
                                 message: str) -> None:
    from mlops.core.errors import MlopsError

    log = tmp_path / "log.sqlite"
    log_traffic(log, bundle, quickstart_split()["test"].head(5), seconds(5, T0))
    with pytest.raises(MlopsError) as err:
        monitor_recipe(str(QUICKSTART), args, str(bundle), log=str(log), **kwargs)
    assert message in str(err.value)


# --- the dashboard, as a browser shows it ---------------------------------------------------------------------------


class _Dom(Tables):
    """Cell texts of every table by id; every svg id; the attributes of every svg rect and circle."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: list[str] = []
        self.shapes: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        super().handle_starttag(tag, attrs)
        a = dict(attrs)
        if tag == "svg":
            self.svgs.append(a.get("id") or "")
        elif tag in ("rect", "circle", "polyline"):
            self.shapes.append(a | {"tag": tag})


def test_dashboard_renders_in_headless_chromium(shifted: dict[str, Any]) -> None:
    chromium()
    html_path = Path(shifted["dashboard"])
    assert not re.search(r"<script|<link|src=\"https?://", html_path.read_text()), "the dashboard must be self-contained"

    dom = _Dom()
    dom.feed(rendered_dom(html_path, timeout=120))

    assert {"summary", "alerts", "rules", "drift-latest", "quality-latest", "windows"} <= set(dom.tables)
    header, *alerts = dom.tables["alerts"]
    assert header[:4] == ["window end", "rule", "state", "event"]
    assert [row[1:4] for row in alerts] == [["drift", "fired", "mlops.alert.drift"]]
    drift = {row[0]: row for row in dom.tables["drift-latest"][1:]}
    assert drift["mean_radius"][5] == "DRIFT" and drift["mean_texture"][5] == "no"
    assert len(dom.tables["windows"]) == 1 + 5
    assert {"chart-drift-share", "heatmap-drift", "chart-accuracy", "chart-latency", "timeline-alerts"} <= set(dom.svgs)
    drifted = {s["data-feature"] for s in dom.shapes if s["tag"] == "rect" and "drift" in (s.get("class") or "")}
    assert drifted == {"mean_radius"}
    assert any(s["tag"] == "circle" and s.get("class") == "alert-fired" and s.get("data-rule") == "drift"
               for s in dom.shapes)
    summary = {row[0]: row[1] for row in dom.tables["summary"][1:]}
    assert summary["firing now"] == "drift" and summary["Evidently report"].endswith("evidently.html")
