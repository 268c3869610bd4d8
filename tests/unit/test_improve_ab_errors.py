"""`mlops ab report` on logs with a known difference between the arms, and `mlops errors` on logs with planted
errors: the numbers come out where they were put, with intervals that cover them."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from mlops.cli import main
from mlops.improve.ab import ab_report
from mlops.improve.error_analysis import analyse_errors, write_report
from mlops.improve.intervals import proportion_difference, required_per_arm, wilson
from mlops.recipe.improve import AbConfig
from tests.improve_fixtures import log_feedback, log_predictions


def arm(log: Path, variant: str, n: int, correct: int, version: str, converted: int | None = None) -> None:
    """n answers "yes" of `variant`; the first `correct` have truth "yes", the rest "no"."""
    ids = [f"{variant}-{i}" for i in range(n)]
    log_predictions(log, ids, variant=variant, version=version, label="yes")
    feedback = []
    for i, pid in enumerate(ids):
        item = {"id": pid, "label": "yes" if i < correct else "no"}
        if converted is not None:
            item["converted"] = i % n < converted  # the first `converted` rows converted
        feedback.append(item)
    log_feedback(log, feedback)


def test_ab_report_finds_a_known_difference_with_its_interval(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "ab.sqlite"
    arm(log, "champion", 1000, 800, "1", converted=100)
    arm(log, "challenger", 1000, 880, "2", converted=150)
    report = ab_report(log, "toy", AbConfig(min_effect=0.05, business_metric="converted"))
    m = report["metric"]
    assert (m["champion"], m["challenger"]) == (0.8, 0.88) and m["difference"] == pytest.approx(0.08)
    lo, hi = m["ci"]
    assert 0 < lo < 0.08 < hi < 0.16 and m["p_value"] < 1e-5
    assert m["verdict"] == "challenger better" and m["enough"] is True and m["required_per_arm"] < 1000
    assert report["arms"]["challenger"] == {"requests": 1000, "versions": ["2"], "labelled": 1000}
    b = report["business"]
    assert (b["champion"], b["challenger"]) == (0.1, 0.15) and b["ci"][0] < 0.05 < b["ci"][1]
    assert b["ci"][0] > 0 and b["verdict"] == "challenger better"
    # the same through the CLI
    assert main(["ab", "report", "toy", "--log", str(log), "--min-effect", "0.05", "--business", "converted",
                 "--json"]) == 0
    captured = capsys.readouterr()  # --json: the report alone on stdout, the readable text on stderr
    assert "difference +0.08  95% CI [" in captured.err and "large enough to detect 0.05" in captured.err
    assert json.loads(captured.out)["metric"]["difference"] == pytest.approx(0.08)


def test_ab_report_says_when_the_sample_is_too_small(tmp_path: Path) -> None:
    log = tmp_path / "ab.sqlite"
    arm(log, "champion", 40, 32, "1")
    arm(log, "challenger", 40, 34, "2")
    m = ab_report(log, "toy", AbConfig(min_effect=0.05))["metric"]
    assert m["enough"] is False and m["ci"][0] < 0 < m["ci"][1]
    assert m["verdict"].startswith("undecided: keep the test running") and m["required_per_arm"] > 40
    assert m["detectable_effect"] > 0.05
    error_rate = ab_report(log, "toy", AbConfig(metric="error_rate"))["metric"]
    assert error_rate["higher_is_better"] is False and error_rate["difference"] == pytest.approx(-0.05)


def test_ab_report_on_regression_compares_mean_errors(tmp_path: Path) -> None:
    from mlops.core.predlog import PredictionLog, prediction_rows

    log = tmp_path / "ab.sqlite"
    writer = PredictionLog(log)
    rng = random.Random(3)
    rows, feedback = [], []
    for variant, noise in (("champion", 2.0), ("challenger", 1.0)):
        ids = [f"{variant}-{i}" for i in range(400)]
        truths = [rng.uniform(0, 100) for _ in ids]
        rows += prediction_rows(ids, "toy", "1", variant, [{"x": 1.0}] * 400,
                                [{"prediction": t + rng.gauss(0, noise)} for t in truths], 1.0)
        feedback += [(i, 0.0, None, t, json.dumps({"id": i, "value": t})) for i, t in zip(ids, truths, strict=True)]
    writer.submit("predictions", rows).result()
    writer.submit("feedback", feedback).result()
    writer.close()
    m = ab_report(log, "toy", AbConfig(metric="mae", min_effect=0.1))["metric"]
    # E|N(0, s)| = s * sqrt(2 / pi): 1.596 vs 0.798
    assert m["champion"] == pytest.approx(1.596, abs=0.15) and m["challenger"] == pytest.approx(0.798, abs=0.08)
    assert m["ci"][1] < 0 and m["verdict"] == "challenger better" and m["method"].startswith("Welch")


@pytest.mark.parametrize("metric", ["mae", "mse"])
def test_ab_report_leaves_out_a_regression_truth_that_is_no_number(tmp_path: Path, metric: str) -> None:
    """A feedback file may give a regression's answer a class name as its label (`mlops errors` skips it): the
    A/B report's mean error raised ValueError at float('high'); such a row, and a prediction past a float's range,
    is not measured."""
    from mlops.core.predlog import PredictionLog, prediction_rows

    log = tmp_path / "ab.sqlite"
    rows = []
    for variant in ("champion", "challenger"):
        rows += prediction_rows([f"{variant}{i}" for i in range(5)], "toy", "1", variant, [{"x": 1.0}] * 5,
                                [{"prediction": 1.0}] * 5, 1.0)
    rows[9] = (*rows[9][:6], json.dumps({"prediction": int("1" + "0" * 400)}), *rows[9][7:])  # another writer's
    writer = PredictionLog(log)
    writer.submit("predictions", rows).result()
    writer.submit("feedback", [(f"{v}{i}", 0.0, None, 3.0, "{}") for v in ("champion", "challenger")
                               for i in range(5) if f"{v}{i}" != "champion4"]
                  + [("champion4", 0.0, "high", None, "{}")]).result()
    writer.close()
    m = ab_report(log, "toy", AbConfig(metric=metric))["metric"]
    assert m["n"] == {"champion": 4, "challenger": 4}, m
    assert m["champion"] == pytest.approx(2.0 if metric == "mae" else 4.0), m


def test_ab_report_refuses_a_log_without_a_challenger_arm(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "ab.sqlite"
    arm(log, "champion", 10, 8, "1")
    assert main(["ab", "report", "toy", "--log", str(log)]) == 2
    assert "no challenger arm" in capsys.readouterr().err
    assert main(["ab", "report", "toy", "--log", str(tmp_path / "absent.sqlite")]) == 2
    assert "no prediction log at" in capsys.readouterr().err


def test_the_difference_interval_covers_the_true_difference_95_percent_of_the_time() -> None:
    rng = random.Random(11)
    covered = 0
    for _ in range(400):
        k_a = sum(rng.random() < 0.30 for _ in range(150))
        k_b = sum(rng.random() < 0.40 for _ in range(120))
        lo, hi = proportion_difference(k_b, 120, k_a, 150)["ci"]
        covered += lo <= 0.10 <= hi
    assert 0.92 <= covered / 400 <= 0.98
    assert wilson(0, 10)[0] == 0.0 and 0 < wilson(0, 10)[1] < 0.35
    # 0.8 vs 0.85 needs about 900 rows per arm at alpha 0.05 and power 0.8 (the textbook figure is 903)
    assert 880 <= required_per_arm(0.8 * 0.2, 0.85 * 0.15, 0.05, 0.05, 0.8) <= 920


# --- error analysis ---------------------------------------------------------------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """300 answers: wrong on 70 % of city 'a' with income above 60, on 5 % of the rest (by construction)."""
    from mlops.core.predlog import PredictionLog, prediction_rows

    rng = random.Random(5)
    log = tmp_path / "errors.sqlite"
    rows, feedback = [], []
    for i in range(300):
        city = ["a", "b", "c"][i % 3]
        income = rng.uniform(0, 100)
        hard = city == "a" and income > 60
        wrong = rng.random() < (0.7 if hard else 0.05)
        confidence = 0.55 + 0.4 * rng.random()
        pid = f"r{i}"
        rows += prediction_rows([pid], "toy", "1", "champion", [{"age": rng.uniform(20, 70), "income": income,
                                                                 "city": city}],
                                [{"label": "yes", "probabilities": [1 - confidence, confidence]}], 1.0)
        feedback.append((pid, 0.0, "no" if wrong else "yes", None, json.dumps({"id": pid})))
    writer = PredictionLog(log)
    writer.submit("predictions", rows).result()
    writer.submit("feedback", feedback).result()
    writer.close()
    return log


def test_error_analysis_finds_the_planted_slice_and_cluster(planted: Path, tmp_path: Path) -> None:
    a = analyse_errors(planted, "toy", min_rows=15)
    o = a["overall"]
    assert o["rows"] == 300 and o["ci"][0] < o["error_rate"] < o["ci"][1]
    worst, second = a["slices"][:2]
    assert (worst["column"], worst["slice"], worst["rows"]) == ("city", "a", 100) and worst["above_overall"]
    assert worst["ci"][0] > o["error_rate"] and worst["errors"] == 31  # 31 % where 5 % was planted elsewhere
    assert second["column"] == "income" and second["slice"].endswith("99.93]")  # the top income bin
    best = a["clusters"][0]
    assert best["rule"] == "city = a and income > 79.75" and best["error_rate"] > 0.8
    assert all(c["error_rate"] > o["error_rate"] for c in a["clusters"])
    confidences = [m["confidence"] for m in a["confident_mistakes"]]
    assert confidences == sorted(confidences, reverse=True) and len(confidences) == 10
    paths = write_report(a, tmp_path / "out")
    html = Path(paths["html"]).read_text()
    assert 'id="slices"' in html and 'id="clusters"' in html and 'id="mistakes"' in html
    assert "city = a" in html and not re.search(r"(src|href)=\"?https?:", html)  # self-contained
    assert json.loads(Path(paths["json"]).read_text())["overall"]["errors"] == o["errors"]


def test_errors_cli_writes_the_report(planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["errors", "toy", "--log", str(planted), "--output", str(tmp_path / "rep"), "--min-rows", "15",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert "labelled predictions wrong" in captured.err and "cluster  city = a" in captured.err
    assert (tmp_path / "rep" / "errors.html").is_file()
    assert json.loads(captured.out)["report"]["json"] == str(tmp_path / "rep" / "errors.json")
    assert main(["errors", "toy", "--log", str(planted), "--bins", "1"]) == 2
    capsys.readouterr()
    for tolerance in ("nan", "-1"):  # NaN counted no error at all
        assert main(["errors", "toy", "--log", str(planted), "--tolerance", tolerance]) == 2
        assert f"error: --tolerance {float(tolerance)}: expected an absolute error" in capsys.readouterr().err


def test_error_analysis_needs_ground_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.sqlite"
    log_predictions(log, ["a", "b"])
    assert main(["errors", "toy", "--log", str(log)]) == 2
    assert "has ground truth yet" in capsys.readouterr().err


def test_regression_errors_are_absolute_errors_above_a_tolerance(tmp_path: Path) -> None:
    from mlops.core.predlog import PredictionLog, prediction_rows

    log = tmp_path / "reg.sqlite"
    rows, feedback = [], []
    for i in range(100):
        big = i % 10 == 0
        rows += prediction_rows([f"r{i}"], "toy", "1", "champion", [{"x": float(i), "kind": "big" if big else "small"}],
                                [{"prediction": 10.0 + (5.0 if big else 0.1)}], 1.0)
        feedback.append((f"r{i}", 0.0, None, 10.0, json.dumps({"id": f"r{i}", "value": 10.0})))
    writer = PredictionLog(log)
    writer.submit("predictions", rows).result()
    writer.submit("feedback", feedback).result()
    writer.close()
    a = analyse_errors(log, "toy", tolerance=1.0, min_rows=5)
    assert a["task"] == "regression" and a["overall"]["errors"] == 10
    assert a["slices"][0]["column"] == "kind" and a["slices"][0]["slice"] == "big" and a["slices"][0]["error_rate"] == 1
    assert a["confident_mistakes"][0]["abs_error"] == pytest.approx(5.0)


def test_a_class_label_given_for_a_regression_is_skipped_naming_the_prediction(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mlops feedback FILE` takes a `label` whatever the model's task (the server refuses one for a regression;
    a file is not checked against a model): `mlops errors` reached float('high') and raised ValueError."""
    from mlops.core.predlog import PredictionLog, prediction_rows

    log = tmp_path / "reg.sqlite"
    writer = PredictionLog(log)  # the rows `mlops serve` logs for a regression bundle's answers
    writer.submit("predictions", [row for i in range(12) for row in prediction_rows(
        [f"r{i}"], "reg", "1", "champion", [{"x": float(i)}], [{"prediction": 10.0 + i % 3}], 1.0)]).result()
    writer.close()
    feedback = tmp_path / "truth.csv"
    feedback.write_text("id,label,value\nr0,high,\nr1,low,\n" + "".join(f"r{i},,10\n" for i in range(2, 11))
                        + "r11,12.0,\n")  # a label that reads as a number is the truth still
    assert main(["feedback", str(feedback), "--log", str(log)]) == 0
    capsys.readouterr()

    assert main(["errors", "reg", "--log", str(log), "--tolerance", "1.5", "--min-rows", "2",
                 "--output", str(tmp_path / "rep"), "--json"]) == 0
    captured = capsys.readouterr()
    analysis = json.loads(captured.out)
    assert analysis["overall"]["rows"] == 10 and analysis["overall"]["errors"] == 3  # r2, r5, r8 answer 12
    assert analysis["skipped"]["rows"] == 2 and analysis["skipped"]["ids"] == ["r0", "r1"]
    assert "skipped  2 whose truth is no number, e.g. prediction 'r0': label 'high'" in captured.err
    assert "give its true 'value'" in captured.err and "Traceback" not in captured.err

    writer = PredictionLog(log)  # a model whose every truth is a class name: nothing to score, said as an error
    writer.submit("predictions", prediction_rows(["s0"], "solo", "1", "champion", [{"x": 1.0}],
                                                 [{"prediction": 3.0}], 1.0)).result()
    writer.close()
    only_labels = tmp_path / "labels.jsonl"
    only_labels.write_text('{"id": "s0", "label": "high"}\n')
    assert main(["feedback", str(only_labels), "--log", str(log)]) == 0
    capsys.readouterr()
    assert main(["errors", "solo", "--log", str(log)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: none of the 1 predictions of 'solo' with feedback in ") and "Traceback" not in err
    assert "prediction 's0': label 'high'" in err and '{"id": "s0", "value": 12.5}' in err, err



def test_a_regression_log_mixing_thumbs_and_values_is_scored_by_its_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A thumb on a regression's answer sets whether it was right; one such row made the whole analysis a
    classification, in which every row with a true value counted as wrong. Now the model's outputs say the task:
    values are scored by their error, a thumbs-down is a mistake, a thumbs-up is none."""
    from mlops.core.predlog import PredictionLog, prediction_rows

    log = tmp_path / "mixed.sqlite"
    writer = PredictionLog(log)
    writer.submit("predictions", [row for i in range(12) for row in prediction_rows(
        [f"r{i}"], "reg", "1", "champion", [{"x": float(i)}], [{"prediction": 10.0 + i % 3}], 1.0)]).result()
    writer.close()
    feedback = tmp_path / "truth.jsonl"
    feedback.write_text("".join(f'{{"id": "r{i}", "value": 10}}\n' for i in range(10))
                        + '{"id": "r10", "thumbs": "up"}\n{"id": "r11", "thumbs": "down"}\n')
    assert main(["feedback", str(feedback), "--log", str(log)]) == 0
    capsys.readouterr()

    assert main(["errors", "reg", "--log", str(log), "--tolerance", "1.5", "--min-rows", "2",
                 "--output", str(tmp_path / "rep"), "--json"]) == 0
    analysis = json.loads(capsys.readouterr().out)
    assert analysis["task"] == "regression" and analysis["overall"]["rows"] == 12
    # r2, r5 and r8 answer 12 where the truth is 10; r11 was a thumbs-down; r10's thumbs-up and the rest are right
    assert analysis["overall"]["errors"] == 4
    mistakes = analysis["confident_mistakes"]
    assert [m["id"] for m in mistakes] == ["r2", "r5", "r8", "r11"] and mistakes[-1]["abs_error"] is None, mistakes


def test_errors_takes_an_integer_past_a_floats_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log written by another writer may hold a 400-digit integer (JSON allows it; float() of it overflows):
    in a logged input it is a value of its column, as its digits; as a prediction it is no number to score."""
    from mlops.core.predlog import PredictionLog, prediction_rows

    log = tmp_path / "huge.sqlite"
    huge = int("1" + "0" * 400)
    rows, feedback = [], []
    for i in range(20):
        row = prediction_rows([f"r{i}"], "toy", "1", "champion", [{"x": float(i)}], [{"prediction": 1.0}], 1.0)[0]
        if i == 0:  # our writer refuses such an integer: the row is written as another writer would
            row = (*row[:5], json.dumps({"x": huge}), *row[6:])
        if i == 1:
            row = (*row[:6], json.dumps({"prediction": huge}), *row[7:])
        rows.append(row)
        feedback.append((f"r{i}", 0.0, None, 1.0 + i % 2, json.dumps({"id": f"r{i}", "value": 1.0 + i % 2})))
    writer = PredictionLog(log)
    writer.submit("predictions", rows).result()
    writer.submit("feedback", feedback).result()
    writer.close()
    a = analyse_errors(log, "toy", tolerance=0.5, min_rows=2, top=20)
    assert a["overall"]["rows"] == 19 and a["overall"]["errors"] == 9  # r1's prediction is no number: left out
    assert {m["id"] for m in a["confident_mistakes"]} == {f"r{i}" for i in range(3, 20, 2)}
    assert main(["errors", "toy", "--log", str(log), "--tolerance", "0.5", "--min-rows", "2",
                 "--output", str(tmp_path / "rep")]) == 0, capsys.readouterr().err
    assert (tmp_path / "rep" / "errors.html").is_file()
    # a classifier's wrong answer whose probabilities hold one: ranked as no confidence known
    cls = [prediction_rows([f"c{i}"], "cls", "1", "champion", [{"x": float(i)}],
                           [{"label": "yes", "probabilities": [0.4, 0.6]}], 1.0)[0] for i in range(3)]
    cls[0] = (*cls[0][:6], json.dumps({"label": "yes", "probabilities": [huge, 0.6]}), *cls[0][7:])
    writer = PredictionLog(log)
    writer.submit("predictions", cls).result()
    writer.submit("feedback", [(f"c{i}", 0.0, "no", None, "{}") for i in range(3)]).result()
    writer.close()
    mistakes = analyse_errors(log, "cls", min_rows=1)["confident_mistakes"]
    assert [(m["id"], m["confidence"]) for m in mistakes] == [("c1", 0.6), ("c2", 0.6), ("c0", None)]


@pytest.mark.parametrize(("flags", "said"), [
    (["--alpha", "2"], "error: ab report: --alpha 2.0: Input should be less than"),
    (["--alpha", "nan"], "error: ab report: --alpha nan: "),
    (["--alpha", "0", "--min-effect", "-1"], "error: ab report: --min-effect -1.0: Input should be greater than 0; --alpha 0.0"),
])
def test_ab_report_names_the_flag_of_a_bad_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   flags: list[str], said: str) -> None:
    """Not pydantic's dump of AbConfig's fields (its links to errors.pydantic.dev included)."""
    assert main(["ab", "report", "toy", "--log", str(tmp_path / "ab.sqlite"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and "pydantic" not in err and "AbConfig" not in err, err
