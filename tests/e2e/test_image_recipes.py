"""The image recipes as a user runs them: digits written as PNG files by examples/make_digits.py, validated,
planned, trained with the CNN, gated and registered; the champion served (V1 b64 and V2 BYTES, bad images
refused by name), batch-scored from image paths and from bytes, streamed through Redis and monitored; then
fine-tuned from the run's own weights with the first block frozen."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from mlops.core.predlog import read_predictions
from mlops.package.predictor import DESCRIPTORS
from tests.conftest import ROOT, last_json, run_cli
from tests.media_e2e import b64, module_env, post, serving, stream_outputs
from tests.net import drop_stream, redis_client
from tests.shipped import DIGITS_MANIFEST

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("image-recipes")]

RECIPE = "recipes/digits_cnn.yaml"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, prefect_home: Path, prefect_api: str) -> dict[str, str]:
    return module_env(tmp_path_factory, prefect_home, prefect_api, "images")


@pytest.fixture(scope="module")
def digits(env: dict[str, str]) -> dict[str, Any]:
    """The recipe validated, planned and run as shipped."""
    valid = last_json(run_cli(["validate", "--json", RECIPE], env))
    assert valid["data"]["columns"]["image"]["kind"] == "image" and valid["model"]["image"]["arch"] == "cnn"
    plan = last_json(run_cli(["plan", "--json", RECIPE], env))
    assert [s["name"] for s in plan["steps"]][:5] == ["load_data", "check_data", "split", "preprocess", "train"]
    assert not any(s["cached"] for s in plan["steps"])
    return last_json(run_cli(["run", "--json", RECIPE], env))


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return pd.read_csv(DIGITS_MANIFEST)


def png(manifest: pd.DataFrame, i: int) -> bytes:
    return (DIGITS_MANIFEST.parent / manifest["image"][i]).read_bytes()


def test_the_run_is_gated_registered_and_bundled_from_raw_images(digits: dict[str, Any]) -> None:
    assert digits["gates"]["outcome"] == "passed" and digits["model_version"] == "1"
    assert digits["aliases"] == ["challenger", "champion"]
    assert digits["metrics"]["test/f1_macro"] >= 0.8  # the recipe's own gate
    meta = json.loads((Path(digits["bundle"]) / "bundle.json").read_text())
    image = next(i for i in meta["inputs"] if i["name"] == "image")
    assert image["kind"] == "image" and image["dtype"] == "uint8"
    assert image["image"]["size"] == [16, 16] and image["image"]["channels"] == 1
    assert {i["name"]: i["kind"] for i in meta["inputs"]}["ink"] == "numeric"  # the metadata beside the image
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities", "embedding"]
    # parity was checked on raw test images decoded by the bundle's own Predictor, at several batch sizes
    assert meta["parity"]["rows"] == digits["split_sizes"]["test"] and meta["parity"]["batch_sizes"] == [1, 7, 64]
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["atol"] <= 1e-4
    assert Path(digits["weights"]).is_file()


def test_the_champion_serves_pngs_and_refuses_bad_images_by_name(digits: dict[str, Any], env: dict[str, str],
                                                                  manifest: pd.DataFrame, tmp_path: Path) -> None:
    log = tmp_path / "predictions.sqlite"
    rows = list(range(0, 1797, 45))  # 40 images from every part of the manifest
    with serving("digits-cnn@champion", env, log) as port:
        status, body = post(port, "/v1/models/digits-cnn:predict", {"instances": [
            {"image": b64(png(manifest, i)), "ink": float(manifest["ink"][i])} for i in rows]})
        assert status == 200, body
        labels = [p["label"] for p in body["predictions"]]
        assert np.mean([a == b for a, b in zip(labels, manifest["label"][rows], strict=True)]) >= 0.8
        assert "embedding" not in body["predictions"][0]

        # V2: the PNG as BYTES (base64 in JSON, as KServe's binary-data convention has it)
        status, v2 = post(port, "/v2/models/digits-cnn/infer", {"inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(png(manifest, 0))["b64"]]},
            {"name": "ink", "shape": [1], "datatype": "FP32", "data": [float(manifest["ink"][0])]}]})
        assert status == 200, v2
        assert next(o for o in v2["outputs"] if o["name"] == "label")["data"] == [labels[0]]

        for bad, why in [({"b64": "bm90IGFuIGltYWdl"}, "image"), ("not base64 !", "image"), (3, "image")]:
            status, body = post(port, "/v1/models/digits-cnn:predict",
                                {"instances": [{"image": bad, "ink": 0.3}]})
            assert 400 <= status < 500 and why in body["error"], (bad, status, body)
        status, body = post(port, "/v2/models/digits-cnn/infer", {"inputs": [
            {"name": "image", "shape": [1, 16, 16, 3], "datatype": "UINT8", "data": [0] * 768},
            {"name": "ink", "shape": [1], "datatype": "FP32", "data": [0.3]}]})
        assert 400 <= status < 500 and "image" in body["error"] and "channel" in body["error"], body
    logged = read_predictions(log)
    assert len(logged) == len(rows) + 1
    entry = json.loads(logged[0]["inputs"])
    # a digest and a size (and the PNG as sent, for the sampled share the bundle keeps), never pixels, and the
    # image's descriptors
    assert set(entry) == {"image", "ink", DESCRIPTORS} and set(entry["image"]) <= {"sha1", "shape", "b64"}
    assert entry[DESCRIPTORS]["image.width"] == 16 and 0 <= entry[DESCRIPTORS]["image.brightness"] <= 255

    # the monitor reads a log of images without tripping over them
    report = run_cli(["monitor", "--json", RECIPE, "--log", str(log)], env)
    assert report.returncode in (0, 3), report.stderr[-3000:]
    assert "Traceback" not in report.stderr


def test_batch_scores_image_paths_and_bytes_alike(digits: dict[str, Any], env: dict[str, str],
                                                   manifest: pd.DataFrame, tmp_path: Path) -> None:
    paths = last_json(run_cli(["batch", "--json", RECIPE, "--input", str(DIGITS_MANIFEST), "-o",
                               str(tmp_path / "from-paths.parquet")], env))
    assert paths["rows"] == 1797 and paths["failed"] == 0, paths
    by_path = pd.read_parquet(tmp_path / "from-paths.parquet")
    assert np.mean(by_path["label"].to_numpy() == manifest["label"].to_numpy()) >= 0.8

    # the same images as bytes in a Parquet column, one path that does not exist among them
    some = manifest.head(30).copy()
    some["image"] = [png(manifest, i) for i in range(30)]
    some.loc[5, "image"] = b"\x89PNG truncated"
    some.drop(columns=["label"]).to_parquet(tmp_path / "bytes.parquet")
    scored = last_json(run_cli(["batch", "--json", RECIPE, "--input", str(tmp_path / "bytes.parquet"), "-o",
                                str(tmp_path / "from-bytes.parquet")], env))
    assert scored["rows"] == 30 and scored["failed"] == 1, scored
    by_bytes = pd.read_parquet(tmp_path / "from-bytes.parquet")
    bad = by_bytes[by_bytes["error"].notna()]
    assert list(bad.index) == [5] and "image" in bad["error"].iloc[0]
    good = by_bytes["error"].isna()
    assert (by_bytes["label"][good].to_numpy() == by_path["label"].head(30)[good].to_numpy()).all()


def test_stream_scores_images_from_redis(digits: dict[str, Any], env: dict[str, str], manifest: pd.DataFrame,
                                         tmp_path: Path) -> None:
    r = redis_client()
    stream = f"mlops-test-{uuid.uuid4().hex[:12]}"
    try:
        ids = {}
        for i in range(12):  # both message forms: a JSON row, and one field per column (the PNG's own bytes)
            if i % 2:
                fields = {"json": json.dumps({"image": b64(png(manifest, i)), "ink": float(manifest["ink"][i])})}
            else:
                fields = {"image": png(manifest, i), "ink": str(manifest["ink"][i])}
            ids[r.xadd(stream, fields).decode()] = i
        bad = r.xadd(stream, {"image": b"GIF89a not really", "ink": "0.2"}).decode()
        done = last_json(run_cli(["stream", "--json", RECIPE, "--stream", stream, "--max-messages", "13",
                                  "--idle-exit-s", "20", "--log", str(tmp_path / "stream.sqlite")], env))
        assert done["predicted"] == 12 and done["dead"] == 1, done
        out = stream_outputs(r, stream)
        served = last_json(run_cli(["batch", "--json", RECIPE, "--input", str(DIGITS_MANIFEST), "-o",
                                    str(tmp_path / "all.parquet")], env))
        assert served["rows"] == 1797
        batch = pd.read_parquet(tmp_path / "all.parquet")["label"]
        assert {out[k]["label"] for k in ids} <= set(manifest["label"])
        assert all(out[k]["label"] == batch[i] for k, i in ids.items())  # stream and batch: one Predictor
        dead = {f[b"source_id"].decode(): f for _, f in r.xrange(f"{stream}:dead")}
        assert dead[bad][b"field"] == b"image"
    finally:
        drop_stream(r, stream)
        r.close()


def test_fine_tuning_from_the_runs_weights_keeps_the_frozen_block(digits: dict[str, Any],
                                                                  env: dict[str, str]) -> None:
    missing = run_cli(["validate", "recipes/digits_finetune.yaml"], env)
    assert missing.returncode != 0 and "model.weights: is required" in missing.stderr
    assert "Traceback" not in missing.stderr

    proc = run_cli(["run", "--json", "recipes/digits_finetune.yaml", f"model.weights={digits['weights']}",
                    "trainer.max_epochs=2"], env)
    tuned = last_json(proc)
    assert "loaded 18 tensors" in proc.stderr and "frozen" in proc.stderr
    assert tuned["model_name"] == "digits-finetune" and tuned["gates"]["outcome"] == "passed"
    before = torch.load(digits["weights"], weights_only=True)
    after = torch.load(tuned["weights"], weights_only=True)
    frozen = [k for k in after if k.startswith("image.image.backbone.0.") or k.startswith("image.image.backbone.1.")
              and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["out.weight"], after["out.weight"])  # the rest was trained
    assert tuned["metrics"]["test/accuracy"] >= digits["metrics"]["test/accuracy"] - 0.05


def test_no_hub_is_reached_for_a_torchvision_architecture(env: dict[str, str]) -> None:
    """resnet18 by name builds with random weights and never downloads: a fresh TORCH_HOME stays empty."""
    code = ("from mlops.train.multimodal import MultiInputNet\n"
            "net = MultiInputNet(inputs={'images': {'image': {'size': [16, 16], 'channels': 1}}}, output_dim=3,"
            " task='multiclass', hidden=[8], image={'arch': 'resnet18'})\n"
            "print(sum(p.numel() for p in net.parameters()))")
    home = Path(env["MLOPS_HOME"]).parent / "torch-home"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env | {"TORCH_HOME": str(home)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip()) > 10_000_000 and not home.exists()


def test_two_ddp_ranks_train_the_image_model_through_the_worker(digits: dict[str, Any], env: dict[str, str]) -> None:
    """The multi-process path `trainer=gpu` takes on GPUs (DDP in the training worker), here with two CPU ranks:
    dict batches of pixels, a DistributedSampler, one tracked run and a bundle that passes parity."""
    summary = last_json(run_cli(["run", "--json", RECIPE, "trainer=ddp_cpu", "trainer.max_epochs=1",
                                 "evaluate.gates=[]"], env, timeout=900))
    assert summary["world_size"] == 2 and summary["cache"]["train"] == "ran"
    assert summary["parity_max_abs_diff"] <= 1e-4 and summary["metrics"]["train/epochs"] == 1  # one epoch: no accuracy to expect
