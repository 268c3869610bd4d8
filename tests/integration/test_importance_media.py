"""Feature importance of an image + text model: a real multi-input network (a small CNN over 8x8 digit images,
a one-layer Transformer over short reviews) trained here for a moment and exported as the export step does.
Permutation importance shuffles the image and text columns whole through the bundle; Captum attributes the
trained module on a few rows: heatmap overlays of the images' size, token highlights of the texts as the
bundle's tokenizer splits them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from mlops.data.media import ImageSpec, ModelInputs, TextSpec, decode_images, encode_texts, train_tokenizer
from mlops.data.preprocess import pixel_stats
from mlops.data.schema import encode_labels, infer_schema
from mlops.evaluate.importance import JSON_NAME, PLOT_NAME, feature_importance
from mlops.package.bundle import write_bundle
from mlops.package.export import export_network
from mlops.package.graph import assemble_inputs, io_description, postprocessing_graph
from mlops.recipe.schema import DataConfig, ImportanceConfig
from mlops.train.multimodal import MultiInputNet

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("importance_media")]

OPSET = 18
TOKENIZER = "review.tokenizer.json"
GOOD = ["great fresh coffee", "lovely strong taste", "great value would buy", "fresh and lovely"]
BAD = ["awful stale chips", "terrible bitter taste", "broken awful box", "stale and terrible"]


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels * (255 / 16), 0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MultiInputNet, ModelInputs, pd.DataFrame]:
    """Zeros and ones of sklearn's digits, each with a review; the label is the digit, and the review agrees
    with it three times in four (so both inputs carry signal)."""
    d = load_digits()
    keep = np.flatnonzero(d.target < 2)[:240]
    rng = np.random.default_rng(0)
    agree = rng.random(len(keep)) < 0.75
    reviews = [str(rng.choice(GOOD if (t == 1) == a else BAD)) for t, a in zip(d.target[keep], agree, strict=True)]
    frame = pd.DataFrame({"image": [_png(d.images[i]) for i in keep], "review": reviews,
                          "y": ["one" if t else "zero" for t in d.target[keep]]})
    tokenizer = train_tokenizer(frame["review"], vocab_size=100)
    image_spec = ImageSpec(size=(8, 8), channels=1)
    text_spec = TextSpec(tokenizer=TOKENIZER, max_length=6, vocab_size=tokenizer.get_vocab_size())
    network = ModelInputs(images={"image": image_spec}, texts={"review": text_spec})
    schema = infer_schema(DataConfig(path="x.csv", target="y", columns={
        "image": {"kind": "image", "size": [8, 8], "channels": 1}, "review": {"kind": "text"}}), frame)
    pixels = decode_images(frame["image"], image_spec)
    ids = encode_texts(tokenizer, frame["review"].tolist(), text_spec.max_length)
    torch.manual_seed(0)
    module = MultiInputNet(network.model_dump(mode="json"), 2, "binary", hidden=[16], dropout=0.0,
                           image={"channels": [4, 8], "embedding": 8}, text={"width": 16, "heads": 2, "depth": 1},
                           pixel_stats={"image": pixel_stats(pixels).model_dump()})
    inputs = {"image": torch.from_numpy(pixels), "review": torch.from_numpy(ids)}
    target = torch.from_numpy(encode_labels(frame["y"], schema.labels or []))
    optimizer = torch.optim.Adam(module.parameters(), lr=5e-3)
    module.train()
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(module(inputs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    net = export_network(module, network, OPSET)
    full = assemble_inputs(None, net, postprocessing_graph("binary", 2, schema.labels, None, OPSET, net.ir_version))
    dest = tmp_path_factory.mktemp("media") / "media"
    write_bundle(dest, full.SerializeToString(), {
        "name": "media", "task": "binary", "outputs": io_description(full)["outputs"], "labels": schema.labels,
        "inputs": [{"name": "image", "kind": "image", "dtype": "uint8", "nullable": False,
                    "image": image_spec.model_dump()},
                   {"name": "review", "kind": "text", "dtype": "int64", "nullable": False,
                    "text": text_spec.model_dump()}],
        "recipe_hash": "test", "data_fingerprint": "sha256:test", "metrics": {}, "data_schema": schema.model_dump(),
        "parity": {}, "mlops_version": "test"}, {TOKENIZER: tokenizer.to_str()})
    return dest, module, network, frame


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_images_get_overlays_and_texts_token_highlights(
        trained: tuple[Path, MultiInputNet, ModelInputs, pd.DataFrame], tmp_path: Path, method: str) -> None:
    bundle, module, network, frame = trained
    cfg = ImportanceConfig(repeats=2, samples=4, n_steps=8, method=method)

    result = feature_importance(bundle, frame.iloc[160:], frame.iloc[:160], "y", cfg, 0, module, network, tmp_path)

    assert {c["column"] for c in result["columns"]} == {"image", "review"}  # each medium shuffled whole
    assert result["columns"][0]["mean"] > 0.05  # the model leans on at least one of them
    by = {a["column"]: a for a in result["attributions"]}
    assert set(by) == {"image", "review"}, result["attributions"]

    overlays = [Path(p) for p in by["image"]["overlays"]]
    assert len(overlays) == 4 and all(t > 0 for t in by["image"]["total"])
    for path in overlays:
        with Image.open(path) as img:
            assert img.size == (8, 8) and img.mode == "RGB"
            rgb = np.asarray(img).astype(int)
        assert (rgb[..., 0] - rgb[..., 1]).max() > 0  # red where the heatmap lies: not the grey image alone

    rows = by["review"]["rows"]
    assert len(rows) == 4
    vocabulary = " ".join(GOOD + BAD).split()
    for row in rows:
        assert row["tokens"] and all(t.lstrip("#") in " ".join(vocabulary) for t in row["tokens"])
        assert len(row["scores"]) == len(row["tokens"]) and any(s != 0 for s in row["scores"])
    page = (tmp_path / by["review"]["html"]).read_text()
    assert page.count("<p>") == 4 and "<span title=" in page and "background: rgba(" in page

    assert set(result["files"]) == {JSON_NAME, PLOT_NAME, "review.attribution.html",
                                    *(p.name for p in overlays)}
    assert all((tmp_path / f).is_file() for f in result["files"])


def test_no_module_means_no_attributions(trained: tuple[Path, MultiInputNet, ModelInputs, pd.DataFrame],
                                         tmp_path: Path) -> None:
    bundle, _, network, frame = trained

    result = feature_importance(bundle, frame.iloc[200:], frame.iloc[:200], "y", ImportanceConfig(repeats=2), 0,
                                None, network, tmp_path)

    assert result["attributions"] == [] and set(result["files"]) == {JSON_NAME, PLOT_NAME}
