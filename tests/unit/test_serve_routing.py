"""Shadow and A/B routing through the real app over real bundles, the sticky arm hash, and `mlops feedback`."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from mlops.cli import main
from mlops.core.errors import MlopsError
from mlops.core.predlog import SHADOW, PredictionLog, prediction_rows, read_predictions
from mlops.core.refs import CHALLENGER
from mlops.core.workspace import workspace
from mlops.package.predictor import Prediction, Predictor
from mlops.serve.app import Server
from mlops.serve.routing import (
    Arm,
    assign_arm,
    disagreements,
    feeds_for,
    parse_ab,
    request_key,
)
from mlops.serve.run import ServeOptions, build_server
from tests.conftest import ROOT
from tests.serve_fixtures import build_bundle, training_frame

ROW = {"age": 41.0, "income": 50.0, "city": "a"}
OTHER_SEED = 5  # weights that disagree with the default bundle on most rows


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("champion") / "bundle")


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("challenger") / "bundle", weights_seed=OTHER_SEED)


def rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    frame = training_frame(n, seed=seed)
    return [{"age": float(r.age), "income": float(r.income), "city": r.city} for r in frame.itertuples()]


class ExplodingPredictor(Predictor):
    def predict(self, feeds: dict[str, np.ndarray]) -> Prediction:
        raise RuntimeError("the shadow exploded")


class BlockedPredictor(Predictor):
    """A shadow stuck until `release` is set (at most 20 s, so a broken test cannot hang)."""

    release = threading.Event()

    def predict(self, feeds: dict[str, np.ndarray]) -> Prediction:
        self.release.wait(timeout=20)
        return super().predict(feeds)


def make_server(bundle: Path, log_path: Path, **kwargs: Any) -> Server:
    return Server(Predictor(bundle), PredictionLog(log_path), version="3", **kwargs)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def v2_body(batch: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    return {"id": request_id, "inputs": [
        {"name": "age", "shape": [len(batch)], "datatype": "FP64", "data": [r["age"] for r in batch]},
        {"name": "income", "shape": [len(batch)], "datatype": "FP64", "data": [r["income"] for r in batch]},
        {"name": "city", "shape": [len(batch)], "datatype": "BYTES", "data": [r["city"] for r in batch]}]}


# every kind of request: answered ones (single, batch, V1, V2) and refused ones; ids fixed so that
# responses are comparable byte for byte (they carry no timing fields)
TRAFFIC: list[tuple[str, Any]] = [
    ("/v1/models/toy:predict", {"id": "a", "instances": [ROW]}),
    ("/v1/models/toy:predict", {"id": "b", "instances": rows(5)}),
    ("/v2/models/toy/infer", v2_body(rows(3, seed=8), "c")),
    ("/v2/models/toy/infer", v2_body([ROW], "d")),
    ("/v1/models/toy:predict", {"id": "e", "instances": [ROW | {"age": None, "city": None}]}),
    ("/v1/models/toy:predict", {"id": "f", "instances": [ROW | {"age": "old"}]}),  # 400
    ("/v2/models/toy/infer", {"id": "g", "inputs": []}),  # 400
    ("/v1/models/other:predict", {"id": "h", "instances": [ROW]}),  # 404
]
ANSWERED = 5
ANSWERED_ROWS = 1 + 5 + 3 + 1 + 1


def replay(client: TestClient) -> list[tuple[int, bytes, str | None]]:
    out = []
    for path, body in TRAFFIC:
        r = client.post(path, json=body)
        out.append((r.status_code, r.content, r.headers.get("x-model-variant")))
    return out


# --- shadow ---------------------------------------------------------------------------------------------


def test_a_failing_shadow_never_changes_a_response(bundle: Path, tmp_path: Path) -> None:
    plain = make_server(bundle, tmp_path / "plain.sqlite")
    with TestClient(plain.app()) as c:
        expected = replay(c)
    shadowed = make_server(bundle, tmp_path / "shadowed.sqlite", shadow=Arm(ExplodingPredictor(bundle), "4", SHADOW))
    with TestClient(shadowed.app()) as c:
        got = replay(c)
        assert shadowed.shadow is not None and shadowed.shadow.join()
        text = c.get("/metrics").text
    assert [s for s, _, _ in expected] == [200] * ANSWERED + [400, 400, 404]
    assert got == expected  # status, body bytes and variant header, request by request
    assert metric(text, "mlops_shadow_errors_total", model="toy") == ANSWERED
    assert metric(text, "mlops_shadow_rows_total", model="toy") == 0
    assert metric(text, "mlops_requests_total", route="v1_predict", model="toy", variant="champion",
                  status="200") == 3
    served = [(r["id"], r["variant"], r["outputs"]) for r in read_predictions(tmp_path / "shadowed.sqlite")]
    assert served == [(r["id"], r["variant"], r["outputs"]) for r in read_predictions(tmp_path / "plain.sqlite")]
    assert {v for _, v, _ in served} == {"champion"}


@pytest.mark.parametrize("same_model", [True, False], ids=["same-model", "other-weights"])
def test_shadow_rows_are_logged_under_the_served_id_and_disagreements_counted(
        bundle: Path, other: Path, tmp_path: Path, same_model: bool) -> None:
    shadow_bundle = bundle if same_model else other
    log_path = tmp_path / "log.sqlite"
    server = make_server(bundle, log_path, shadow=Arm(Predictor(shadow_bundle), "4", SHADOW))
    with TestClient(server.app()) as c:
        assert [s for s, _, _ in replay(c)][:ANSWERED] == [200] * ANSWERED
        assert server.shadow is not None and server.shadow.join()
        text = c.get("/metrics").text
    logged = read_predictions(log_path)
    served = {r["id"]: r for r in logged if r["variant"] == "champion"}
    shadow = {r["id"]: r for r in logged if r["variant"] == "shadow"}
    assert len(served) == ANSWERED_ROWS and set(shadow) == set(served)  # one shadow row per served row, same id
    assert {(r["model"], r["version"]) for r in shadow.values()} == {("toy", "4")}
    # the shadow answered from the served request's inputs, with its own model
    direct = Predictor(shadow_bundle)
    differ = 0
    for pid, row in shadow.items():
        assert row["inputs"] == served[pid]["inputs"]
        inputs = json.loads(row["inputs"])
        expected = direct.predict(direct.feeds_from_rows([inputs])).instances()[0]
        assert json.loads(row["outputs"])["label"] == expected["label"]
        differ += json.loads(row["outputs"])["label"] != json.loads(served[pid]["outputs"])["label"]
    assert metric(text, "mlops_shadow_rows_total", model="toy") == ANSWERED_ROWS
    assert metric(text, "mlops_shadow_disagreements_total", model="toy") == differ
    assert metric(text, "mlops_shadow_errors_total", model="toy") == 0
    if same_model:
        assert differ == 0
    else:
        assert differ > 0


def test_a_saturated_shadow_drops_and_counts_without_delaying_answers(bundle: Path, tmp_path: Path) -> None:
    BlockedPredictor.release.clear()
    server = make_server(bundle, tmp_path / "log.sqlite", shadow=Arm(BlockedPredictor(bundle), None, SHADOW),
                         shadow_queue=1)
    try:
        with TestClient(server.app()) as c:
            started = time.monotonic()
            for i in range(4):
                assert c.post("/v1/models/toy:predict", json={"id": f"r{i}", "instances": [ROW]}).status_code == 200
            assert time.monotonic() - started < 10  # the blocked shadow held nobody up
            text = c.get("/metrics").text
            # one request is stuck in the shadow, at most one waits in its queue: the rest were dropped
            assert 2 <= metric(text, "mlops_shadow_dropped_total", model="toy") <= 3
            BlockedPredictor.release.set()
            assert server.shadow is not None and server.shadow.join()
    finally:
        BlockedPredictor.release.set()
    variants = [r["variant"] for r in read_predictions(tmp_path / "log.sqlite")]
    assert variants.count("champion") == 4 and 1 <= variants.count("shadow") <= 2


class GatedPredictor(Predictor):
    """A shadow that records each call's row count, holds the first call until `release`, and fails any call
    holding an age of -1 (a request only this model cannot take)."""

    def __init__(self, bundle: Path) -> None:
        super().__init__(bundle)
        self.release, self.calls = threading.Event(), []

    def predict(self, feeds: dict[str, np.ndarray]) -> Prediction:
        ages = self.named(feeds)["age"]
        self.calls.append(len(ages))
        self.release.wait(timeout=20)
        if (ages == -1).any():
            raise RuntimeError("the shadow cannot take age -1")
        return super().predict(feeds)


def test_queued_shadow_work_runs_in_one_call_and_a_bad_request_fails_alone(bundle: Path, tmp_path: Path) -> None:
    gated = GatedPredictor(bundle)
    log_path = tmp_path / "log.sqlite"
    server = make_server(bundle, log_path, shadow=Arm(gated, "4", SHADOW))
    bodies = [{"id": "first", "instances": [ROW]}, {"id": "multi", "instances": rows(3)},
              {"id": "bad", "instances": [ROW | {"age": -1}]}, {"id": "last", "instances": [ROW]}]
    with TestClient(server.app()) as c:
        answers = [c.post("/v1/models/toy:predict", json=bodies[0])]
        deadline = time.monotonic() + 10
        while not gated.calls and time.monotonic() < deadline:  # the shadow is held in its first call ...
            time.sleep(0.01)
        answers += [c.post("/v1/models/toy:predict", json=b) for b in bodies[1:]]  # ... while the rest queue
        assert [a.status_code for a in answers] == [200] * 4
        gated.release.set()
        assert server.shadow is not None and server.shadow.join()
        text = c.get("/metrics").text
    # 1 row alone, then the 5 queued rows in one call, which fails on "bad"; then one call per request
    assert gated.calls == [1, 5, 3, 1, 1]
    assert metric(text, "mlops_shadow_errors_total", model="toy") == 1
    assert metric(text, "mlops_shadow_rows_total", model="toy") == 5
    logged = read_predictions(log_path)
    served = {r["id"]: r for r in logged if r["variant"] == "champion"}
    shadow = {r["id"]: r for r in logged if r["variant"] == "shadow"}
    assert set(shadow) == set(served) - {"bad"} and len(shadow) == 5
    for pid, row in shadow.items():  # same model: every row answered as the served one, from its own inputs
        assert (row["inputs"], row["outputs"]) == (served[pid]["inputs"], served[pid]["outputs"])


def test_the_champions_block_reaches_a_shadow_packing_the_same_columns_whole_and_any_other_by_name(
        bundle: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "unpacked"  # a shadow from before packing: model.onnx takes each column by name
    unpacked.mkdir()
    meta = json.loads((bundle / "bundle.json").read_text())
    del meta["packed"]
    (unpacked / "bundle.json").write_text(json.dumps(meta))
    shutil.copy(bundle / "model.onnx", unpacked / "model.onnx")
    champion, same, before = Predictor(bundle), Predictor(bundle), Predictor(unpacked)
    feeds = champion.feeds_from_rows(rows(4))
    block = champion.block_in(feeds)
    assert block is not None

    whole, by_name = feeds_for(same, feeds, champion), feeds_for(before, feeds, champion)

    assert whole[same.block_key] is block and not any(same.packs(k) for k in whole)  # passed on, not split
    assert before.block_in(by_name) is None
    assert all(np.shares_memory(by_name[c], block) for c in champion.packed_columns)  # views, not copies
    expected = champion.predict(feeds).outputs["probabilities"]
    np.testing.assert_allclose(same.predict(whole).outputs["probabilities"], expected)
    np.testing.assert_allclose(before.predict(by_name).outputs["probabilities"], expected, atol=1e-6)


# --- A/B ------------------------------------------------------------------------------------------------


def test_assign_arm_splits_as_asked_over_20000_random_keys() -> None:
    keys = [uuid.uuid4().hex for _ in range(20_000)]
    for percent in (1.0, 10.0, 33.3, 50.0, 90.0):
        share = 100 * sum(assign_arm(k, percent) for k in keys) / len(keys)
        assert abs(share - percent) <= 1.5, (percent, share)
    assert not any(assign_arm(k, 0) for k in keys[:1000]) and all(assign_arm(k, 100) for k in keys[:1000])


STICKY_KEYS = ["user-1", "user-5", "alice", "bob", "ünïcode-key", "", *(f"k{i}" for i in range(200))]


def test_assign_arm_is_sticky_across_calls_and_processes() -> None:
    here = [assign_arm(k, 40) for k in STICKY_KEYS]
    assert here == [assign_arm(k, 40) for k in STICKY_KEYS]
    # SHA-256, not Python's per-process salted hash(): fixed values, and the same in other interpreters
    assert [assign_arm(k, 40) for k in ("user-1", "user-5", "alice", "bob", "ünïcode-key", "")] == [
        False, True, True, False, False, False]
    assert assign_arm("bob", 50.7) and not assign_arm("bob", 50.6)  # bob sits at 50.67 %
    code = ("import json, sys\nfrom mlops.serve.routing import assign_arm\n"
            "print(json.dumps([assign_arm(k, 40) for k in json.loads(sys.argv[1])]))")
    for seed in ("1", "2"):
        env = os.environ | {"PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(STICKY_KEYS)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == here


def test_request_key_and_ab_spec() -> None:
    assert request_key("h", "body-id") == ("h", True)
    assert request_key(None, "body-id") == ("body-id", True)
    generated, sticky = request_key("", None)
    assert len(generated) == 32 and not sticky and request_key(None, None)[0] != generated
    assert parse_ab("quickstart@challenger:10") == ("quickstart@challenger", 10.0)
    assert parse_ab("/tmp/dir:with:colons:2.5") == ("/tmp/dir:with:colons", 2.5)
    for bad in ("quickstart@challenger", "quickstart@challenger:ten", "x:101", "x:-1", ":10", "x:nan"):
        with pytest.raises(MlopsError, match="--ab"):
            parse_ab(bad)


def test_disagreements_by_label_and_by_relative_tolerance() -> None:
    labels = {"label": np.array(["yes", "no", "yes"], dtype=object)}
    assert disagreements(labels, {"label": np.array(["yes", "yes", "no"], dtype=object)}, 3) == 2
    assert disagreements(labels, labels, 3) == 0
    served = {"prediction": np.array([100.0, 0.0, 5.0, 1.0], dtype=np.float32)}
    shadow = {"prediction": np.array([100.05, 1e-7, 5.1, np.nan], dtype=np.float32)}
    assert disagreements(served, shadow, 4) == 2  # 0.05 % and 1e-7 agree; 2 % and NaN do not
    assert disagreements(served, {"other": np.zeros(4)}, 4) == 4


@pytest.fixture
def ab_client(bundle: Path, other: Path, tmp_path: Path) -> Any:
    server = make_server(bundle, tmp_path / "log.sqlite", challenger=Arm(Predictor(other), "4", CHALLENGER),
                         ab_percent=30, ab_key_header="X-User")
    with TestClient(server.app()) as c:
        yield c, tmp_path / "log.sqlite"


def test_ab_arms_are_sticky_logged_and_answered_by_their_own_model(ab_client: Any, bundle: Path,
                                                                   other: Path) -> None:
    c, log_path = ab_client
    models = {"champion": Predictor(bundle), "challenger": Predictor(other)}
    seen: dict[str, str] = {}
    instances = rows(60)
    for i, row in enumerate(instances):
        key = f"user-{i}"
        r = c.post("/v1/models/toy:predict", json={"id": f"req-{i}", "instances": [row]}, headers={"X-User": key})
        assert r.status_code == 200, r.text
        variant = r.headers["x-model-variant"]
        assert variant == ("challenger" if assign_arm(key, 30) else "champion")
        model = models[variant]
        assert r.json()["predictions"] == model.predict(model.feeds_from_rows([row])).instances()
        seen[key] = variant
    assert set(seen.values()) == {"champion", "challenger"}
    for i in range(0, 60, 7):  # the same key again, another id, V2 this time: the same arm
        r = c.post("/v2/models/toy/infer", json=v2_body([instances[i]], f"again-{i}"), headers={"X-User": f"user-{i}"})
        assert r.headers["x-model-variant"] == seen[f"user-{i}"]
        assert r.json()["model_version"] == ("4" if seen[f"user-{i}"] == "challenger" else "3")
    for i in range(40):  # no key header: the body's id is the key
        r = c.post("/v1/models/toy:predict", json={"id": f"id-{i}", "instances": [ROW]})
        assert r.headers["x-model-variant"] == ("challenger" if assign_arm(f"id-{i}", 30) else "champion")
    text = c.get("/metrics").text
    logged = {r["id"]: r for r in read_predictions(log_path)}
    for i in range(60):
        row = logged[f"req-{i}"]
        assert (row["variant"], row["version"]) == ((seen[f"user-{i}"], "4" if seen[f"user-{i}"] == "challenger"
                                                     else "3"))
    challengers = sum(v == "challenger" for v in seen.values()) + sum(assign_arm(f"id-{i}", 30) for i in range(40))
    assert metric(text, "mlops_requests_total", route="v1_predict", model="toy", variant="challenger",
                  status="200") == challengers
    assert metric(text, "mlops_requests_total", route="v1_predict", model="toy", variant="champion",
                  status="200") == 100 - challengers


def test_ab_without_any_key_still_answers(ab_client: Any) -> None:
    c, log_path = ab_client
    variants = {c.post("/v1/models/toy:predict", json={"instances": [ROW]}).headers["x-model-variant"]
                for _ in range(40)}
    assert variants == {"champion", "challenger"}  # a fresh random key per request: 40 draws at 30 %


def test_build_server_wires_shadow_and_ab_and_imports_no_training_stack(bundle: Path, other: Path,
                                                                        tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from mlops.serve.run import ServeOptions, build_server\n"
        f"s = build_server(ServeOptions(model={str(bundle)!r}, log={str(tmp_path / 'log.sqlite')!r}, shadow={str(other)!r}, "
        f"ab={str(other) + ':25'!r}, ab_key_header='X-User'))\n"
        "s.app()\n"
        "assert s.shadow.arm.variant == 'shadow' and s.challenger.variant == 'challenger'\n"
        "assert s.ab_percent == 25 and s.ab_key_header == 'X-User'\n"
        "print(sorted(m for m in ('torch', 'lightning', 'prefect', 'evidently', 'mlflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_build_server_refuses_a_model_taking_other_inputs(bundle: Path, tmp_path: Path) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    odd = shutil.copytree(bundle, tmp_path / "odd")
    meta["inputs"] = list(reversed(meta["inputs"]))
    (odd / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(MlopsError, match="--shadow model 'toy' takes inputs"):
        build_server(ServeOptions(model=str(bundle), log=str(tmp_path / "log.sqlite"), shadow=str(odd)))
    with pytest.raises(MlopsError, match="--ab model 'toy' takes inputs"):
        build_server(ServeOptions(model=str(bundle), log=str(tmp_path / "log.sqlite"), ab=f"{odd}:10"))
    with pytest.raises(MlopsError, match="--ab 'x': expected MODEL:PERCENT"):
        build_server(ServeOptions(model=str(bundle), log=str(tmp_path / "log.sqlite"), ab="x"))


# --- mlops feedback -------------------------------------------------------------------------------------


@pytest.fixture
def log_with_predictions(tmp_path: Path) -> Path:
    path = tmp_path / "predictions.sqlite"
    log = PredictionLog(path)
    log.submit("predictions", prediction_rows(["p1", "p2", "p3"], "toy", "3", "champion", [ROW] * 3,
                                              [{"label": "yes"}] * 3, 1.0)).result()
    log.submit("predictions", prediction_rows(["p1"], "toy", "4", "shadow", [ROW], [{"label": "no"}], 1.0)).result()
    log.close()
    return path


def feedback(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, label, value FROM feedback ORDER BY rowid").fetchall()
    finally:
        db.close()


def test_feedback_cli_records_known_ids_and_counts_unknown(log_with_predictions: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    csv_file = tmp_path / "truth.csv"
    csv_file.write_text("id,label,note\np1,yes,checked\n\np2,no,\nnope,yes,typo\n")
    assert main(["feedback", str(csv_file), "--log", str(log_with_predictions), "--json"]) == 0
    captured = capsys.readouterr()  # --json: the counts alone on stdout, the readable lines on stderr
    assert "2 of 3 ids matched" in captured.err and "1 unknown" in captured.err and "nope" in captured.err
    assert json.loads(captured.out)["unknown_ids"] == ["nope"]
    jsonl = tmp_path / "truth.jsonl"
    jsonl.write_text('{"id": "p3", "value": 2.5}\n\n{"id": "p1", "label": 1}\n')
    assert main(["feedback", str(jsonl), "--log", str(log_with_predictions)]) == 0
    assert "2 of 2 ids matched" in capsys.readouterr().out
    assert feedback(log_with_predictions) == [("p1", "yes", None), ("p2", "no", None), ("p3", None, 2.5),
                                              ("p1", "1", None)]


def test_feedback_cli_finds_the_default_log_of_a_model(log_with_predictions: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    default = workspace().prediction_log("toy")
    default.parent.mkdir(parents=True)
    default.write_bytes(log_with_predictions.read_bytes())
    csv_file = tmp_path / "truth.csv"
    csv_file.write_text("id,value\np2,3\n")
    assert main(["feedback", str(csv_file), "--model", "toy@champion"]) == 0
    assert feedback(default) == [("p2", None, 3.0)]
    assert main(["feedback", str(csv_file), "--model", "missing"]) == 2  # no such log: a clear error


def test_feedback_cli_exits_nonzero_when_no_id_matches(log_with_predictions: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    csv_file = tmp_path / "truth.csv"
    csv_file.write_text("id,label\nx1,yes\nx2,no\n")
    assert main(["feedback", str(csv_file), "--log", str(log_with_predictions)]) == 2
    assert "none of the 2 ids" in capsys.readouterr().err
    assert feedback(log_with_predictions) == []


MALFORMED = [
    ("bad-value", "truth.csv", "id,label,value\np1,yes,\np2,,high\n", ":3: value: not a number"),
    ("nan-value", "truth.csv", "id,value\np1,nan\n", ":2: value: must be a finite number"),
    ("no-id-column", "truth.csv", "pid,label\np1,yes\n", ":1: id: the header needs an 'id' column"),
    ("no-label-column", "truth.csv", "id\np1\n", ":1: label: the header needs a 'label'"),
    ("missing-label", "truth.csv", "id,label\np1,yes\np2,\n", ":3: label: give 'label'"),
    ("empty-id", "truth.csv", "id,label\np1,yes\n,no\n", ":3: id: a prediction id"),
    ("wrong-field-count", "truth.csv", "id,label\np1,yes,extra\n", ":2: row: expected 2 fields"),
    ("invalid-json", "truth.jsonl", '{"id": "p1", "label": "yes"}\n{"id": "p2", \n', ":2: body: invalid JSON"),
    ("not-an-object", "truth.jsonl", '["p1", "yes"]\n', ":1: body: expected a JSON object"),
    ("value-not-number", "truth.jsonl", '{"id": "p1", "value": "3"}\n', ":1: value: must be a finite number"),
    ("id-not-string", "truth.jsonl", '{"id": 7, "label": "yes"}\n', ":1: id: a prediction id"),
    ("unknown-format", "truth.txt", "id,label\np1,yes\n", "unknown feedback format '.txt'"),
    ("empty", "truth.csv", "id,label\n", "no feedback rows"),
    ("not-utf8", "truth.csv", b"id,label\np1,yes\np2,\xff\n", ":3: not UTF-8 text (byte 0xff)"),
    ("not-utf8-after-bom", "truth.csv", b"\xef\xbb\xbfid,label\np1,\xe9\n", ":2: not UTF-8 text (byte 0xe9)"),
    # a lone surrogate JSON may escape: the log's SQLite cannot store it
    ("surrogate-id", "truth.jsonl", '{"id": "\\ud800", "label": "yes"}\n', ":1: id: holds a lone UTF-16 surrogate"),
    ("surrogate-label", "truth.jsonl", '{"id": "p1", "label": "a\\udfff"}\n', ":1: label: holds a lone UTF-16"),
    ("huge-value", "truth.jsonl", '{"id": "p1", "value": ' + "9" * 400 + "}\n",
     ":1: value: must be a finite number, got an integer past a float's range"),
]


@pytest.mark.parametrize(("name", "text", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_feedback_cli_rejects_a_malformed_file_at_its_line_and_field(
        log_with_predictions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | bytes,
        message: str) -> None:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["feedback", str(path), "--log", str(log_with_predictions)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}" in err and message in err, err
    assert feedback(log_with_predictions) == []  # nothing recorded from a file that does not parse


def test_http_feedback_and_cli_feedback_share_one_format(bundle: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "log.sqlite"
    with TestClient(make_server(bundle, log_path).app()) as c:
        c.post("/v1/models/toy:predict", json={"id": "p1", "instances": [ROW]})
        assert c.post("/v1/feedback", json={"id": "p1", "label": "yes"}).json() == {"recorded": 1}
    jsonl = tmp_path / "truth.jsonl"
    jsonl.write_text('{"id": "p1", "label": "yes"}\n')
    assert main(["feedback", str(jsonl), "--log", str(log_path)]) == 0
    db = sqlite3.connect(log_path)
    stored = db.execute("SELECT id, label, value, payload FROM feedback ORDER BY rowid").fetchall()
    db.close()
    assert stored[0] == stored[1] == ("p1", "yes", None, '{"id": "p1", "label": "yes"}')
