"""The multi-input network (tabular + images + text): it trains through `fit`, exports to ONNX with named
inputs and an embedding output that agree with torch, augments training images only, and fine-tunes from
local weights with frozen parameters."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from mlops.core.errors import MlopsError, ParityError
from mlops.data.media import TABULAR, ImageSpec, ModelInputs, TextSpec
from mlops.data.preprocess import fit_preprocessor, pixel_stats
from mlops.data.schema import infer_schema
from mlops.package.export import check_parity, export_network, torch_dict_outputs, torch_outputs
from mlops.recipe.schema import (
    MULTI_INPUT_MODEL,
    DataConfig,
    DataModuleConfig,
    ModelConfig,
    TextEncoderConfig,
    TrainerConfig,
)
from mlops.train.datamodule import ArrayDataModule
from mlops.train.finetune import load_weights, read_state_dict
from mlops.train.fit import TrainJob, build_module, fit, model_init
from mlops.train.multimodal import MultiInputNet, TextEncoder
from mlops.train.result import TrainResult

ROWS = {"train": 40, "val": 12}
VOCAB = 60


def make_arrays(path: Path, inputs: ModelInputs, classes: int, seed: int = 0) -> dict[str, Any]:
    """Random inputs whose label leaks into every input kind, so a short fit has something to learn."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {}
    for split, n in ROWS.items():
        y = rng.integers(0, classes, n)
        if inputs.tabular:
            x = rng.normal(size=(n, inputs.tabular)).astype(np.float32)
            x[:, 0] += y
            arrays[ModelInputs.array_key(TABULAR, split)] = x
        for col, spec in inputs.images.items():
            img = rng.integers(0, 200, (n, *spec.shape), dtype=np.uint8)
            img[:, : spec.size[0] // 2] += (y * 20).astype(np.uint8)[:, None, None, None]
            arrays[ModelInputs.array_key(col, split)] = img
        for col, tspec in inputs.texts.items():
            ids = rng.integers(2, VOCAB, (n, tspec.max_length))
            ids[:, 0] = 2 + y
            lengths = rng.integers(0, tspec.max_length + 1, n)  # some texts are empty: all padding
            ids[np.arange(tspec.max_length)[None, :] >= lengths[:, None]] = 0
            arrays[ModelInputs.array_key(col, split)] = ids.astype(np.int64)
        arrays[f"y_{split}"] = y.astype(np.int64) if classes > 1 else rng.normal(size=n).astype(np.float32)
    np.savez(path, **arrays)
    return arrays


def job_for(tmp_path: Path, inputs: ModelInputs, model: dict[str, Any], task: str = "multiclass",
            classes: int = 3, **extra: Any) -> TrainJob:
    make_arrays(tmp_path / "arrays.npz", inputs, classes if task != "regression" else 1)
    return TrainJob(
        model=ModelConfig.model_validate({"_target_": MULTI_INPUT_MODEL, "hidden": [12, 6], "batch_size": 16,
                                          "dropout": 0.0} | model),
        datamodule=DataModuleConfig(), trainer=TrainerConfig(max_epochs=1, early_stopping=None), seed=3,
        task=task, input_dim=inputs.tabular, output_dim=1 if task == "regression" else classes,
        arrays=str(tmp_path / "arrays.npz"), out_dir=str(tmp_path / "out"), inputs=inputs, **extra,
    )


def trained(tmp_path: Path, result: TrainResult) -> MultiInputNet:
    module = build_module(result.init)
    module.load_state_dict(torch.load(tmp_path / "out" / result.state_dict, weights_only=True))
    return module.eval()


PHOTO = ImageSpec(size=(16, 16), channels=3)
GREY = ImageSpec(size=(12, 12), channels=1)
TEXT = TextSpec(tokenizer="review.json", max_length=10, vocab_size=VOCAB)
SMALL_TEXT = {"width": 16, "heads": 2, "depth": 1}
CASES = {
    "cnn": (ModelInputs(images={"photo": PHOTO}),
            {"image": {"arch": "cnn", "channels": [4, 8], "embedding": 10}}, "multiclass"),
    "resnet18": (ModelInputs(images={"photo": ImageSpec(size=(32, 32), channels=3)}),
                 {"image": {"arch": "resnet18", "embedding": 10}, "batch_size": 20}, "binary"),
    "text": (ModelInputs(texts={"review": TEXT}), {"text": SMALL_TEXT}, "regression"),
    "mixed": (ModelInputs(tabular=4, images={"scan": GREY}, texts={"review.body": TEXT}),
              {"image": {"arch": "cnn", "channels": [4], "embedding": 6}, "text": SMALL_TEXT}, "multiclass"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trains_through_fit_and_exports_an_agreeing_onnx_graph(case: str, tmp_path: Path) -> None:
    inputs, model, task = CASES[case]
    classes = {"binary": 2, "multiclass": 3, "regression": 1}[task]
    job = job_for(tmp_path, inputs, model, task=task, classes=classes)
    result = fit(job)
    assert result is not None and result.epochs_run == 1
    logged = set(result.history[0])
    if task == "regression":
        assert {"val/loss", "val/rmse", "val/mae"} <= logged
    else:
        assert {"val/loss", "val/accuracy", "val/auroc"} <= logged
    assert result.init["class"] == MULTI_INPUT_MODEL and result.fine_tune is None
    if inputs.images:  # the preprocess step recorded none: measured from the training split
        (col, arr), = ((c, np.load(job.arrays)[ModelInputs.array_key(c, "train")]) for c in inputs.images)
        assert result.init["kwargs"]["pixel_stats"][col] == pytest.approx(pixel_stats(arr).model_dump())

    module = trained(tmp_path, result)
    graph = export_network(module, inputs, 18)
    assert [i.name for i in graph.graph.input] == inputs.names
    assert [o.name for o in graph.graph.output] == ["logits", "embedding"]
    elem = {i.name: i.type.tensor_type.elem_type for i in graph.graph.input}
    assert all(elem[c] == 2 for c in inputs.images)  # uint8
    assert all(elem[c] == 7 for c in inputs.texts)  # int64
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    data = np.load(job.arrays)
    feeds = {n: data[ModelInputs.array_key(n, "val")] for n in inputs.names}
    proba, emb = torch_dict_outputs(module, feeds, task)
    assert emb is not None and emb.shape == (ROWS["val"], 6)  # the head's last hidden size
    assert np.array_equal(torch_outputs(module, feeds, task), proba)
    for bs in (1, 5):
        for start in range(0, 10, bs):
            chunk = {n: a[start:start + bs] for n, a in feeds.items()}
            logits, embedding = session.run(["logits", "embedding"], chunk)
            with torch.no_grad():
                batch = {n: torch.from_numpy(a) for n, a in chunk.items()}
                want_logits, want_emb = module.forward_with_embedding(batch)
            np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4, rtol=0)
            np.testing.assert_allclose(embedding, want_emb.numpy(), atol=1e-4, rtol=0)
            assert np.isfinite(logits).all() and embedding.shape == (bs, 6)


def test_a_text_without_tokens_encodes_to_a_finite_vector() -> None:
    torch.manual_seed(0)
    enc = TextEncoder(TEXT, TextEncoderConfig(width=16, heads=2, depth=1), dropout=0.0).eval()
    ids = torch.zeros(3, 10, dtype=torch.long)
    ids[1, :4] = torch.tensor([5, 6, 7, 8])
    for mode in (enc.eval, enc.train):
        mode()
        out = enc(ids)
        assert torch.isfinite(out).all() and out.shape == (3, 16)
    out.sum().backward()  # gradients stay finite too
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_an_unknown_architecture_is_refused_with_valid_names() -> None:
    with pytest.raises(MlopsError, match="resnet_18.*resnet18"):
        MultiInputNet(ModelInputs(images={"photo": PHOTO}).model_dump(), 2, "binary", [4],
                      image={"arch": "resnet_18"})


def dict_arrays(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    split = {}
    for name, n in (("train", 24), ("val", 10)):
        inputs = {TABULAR: rng.normal(size=(n, 2)), "review": rng.integers(0, VOCAB, (n, 5)),
                  "photo": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)}
        split[name] = (inputs, np.arange(n))  # y: the row's index
    return split


def test_augmentation_changes_training_batches_but_never_validation_ones() -> None:
    arrays = dict_arrays()
    augment = {"flip": True, "crop": 2, "rotate": 20, "brightness": 0.3, "contrast": 0.3}
    dm = ArrayDataModule(arrays, batch_size=8, seed=5, augment=augment)

    def rows(loader: Any) -> list[tuple[dict[str, torch.Tensor], int]]:
        return [({k: v[i] for k, v in x.items()}, int(y[i])) for x, y in loader for i in range(len(y))]

    torch.manual_seed(0)
    train = rows(dm.train_dataloader())
    x_train = arrays["train"][0]
    assert sorted(i for _, i in train) == list(range(24))
    changed = 0
    for row, i in train:
        assert row["photo"].dtype == torch.uint8 and row["photo"].shape == (8, 8, 3)
        assert row[TABULAR].dtype == torch.float32 and row["review"].dtype == torch.int64
        assert np.array_equal(row["review"].numpy(), x_train["review"][i])  # text and tabular as they are
        assert np.allclose(row[TABULAR].numpy(), x_train[TABULAR][i])
        changed += not np.array_equal(row["photo"].numpy(), x_train["photo"][i])
    assert changed >= 20
    for _ in range(2):
        for row, i in rows(dm.val_dataloader()):
            assert np.array_equal(row["photo"].numpy(), arrays["val"][0]["photo"][i])
    # the shuffle is seeded: the same order every time
    assert [i for _, i in rows(dm.train_dataloader())] == [i for _, i in train]
    plain = ArrayDataModule(arrays, batch_size=8, seed=5)
    for row, i in rows(plain.train_dataloader()):
        assert np.array_equal(row["photo"].numpy(), x_train["photo"][i])


def test_tabular_jobs_keep_tensor_batches_and_the_mlp(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    dm = ArrayDataModule({"train": (x, np.zeros(10, np.int64)), "val": (x, np.zeros(10, np.int64))}, 4, 0)
    xb, yb = next(iter(dm.train_dataloader()))
    assert isinstance(xb, torch.Tensor) and xb.shape == (4, 3)
    job = TrainJob(model=ModelConfig(), datamodule=DataModuleConfig(), trainer=TrainerConfig(), seed=0,
                   task="binary", input_dim=3, output_dim=2, arrays="a.npz", out_dir=str(tmp_path),
                   inputs=ModelInputs(tabular=3))  # a scalar-only description changes nothing
    assert model_init(job) == {"class": "mlops.train.models.TabularMLP", "kwargs": {
        "input_dim": 3, "output_dim": 2, "task": "binary", "hidden": [64, 32], "dropout": 0.1, "lr": 1e-3,
        "weight_decay": 0.0, "optimizer": "adam"}}


def test_image_inputs_need_a_network_that_reads_them(tmp_path: Path) -> None:
    inputs = ModelInputs(tabular=2, images={"photo": PHOTO})
    base = {"datamodule": DataModuleConfig(), "trainer": TrainerConfig(), "seed": 0, "task": "binary",
            "input_dim": 2, "output_dim": 2, "arrays": "a.npz", "out_dir": str(tmp_path), "inputs": inputs}
    with pytest.raises(MlopsError, match=MULTI_INPUT_MODEL.replace(".", "\\.")):
        model_init(TrainJob(model=ModelConfig(), **base))
    job = TrainJob(model=ModelConfig.model_validate({"_target_": MULTI_INPUT_MODEL}), **base)
    assert TrainJob.model_validate_json(job.model_dump_json()) == job  # what the DDP worker reads back
    custom = ModelConfig.model_validate({"_target_": "my.pkg.Net", "params": {"depth": 2}})
    assert model_init(TrainJob(model=custom, **base))["kwargs"] == {
        "input_dim": 2, "output_dim": 2, "task": "binary", "inputs": inputs.model_dump(mode="json"),
        "depth": 2}


# --- fine-tuning -------------------------------------------------------------------------------------------

FT_INPUTS = ModelInputs(tabular=2, images={"photo": PHOTO})
FT_MODEL = {"image": {"arch": "cnn", "channels": [4, 8], "embedding": 8}}


def source_weights(tmp_path: Path, classes: int) -> dict[str, torch.Tensor]:
    """A trained-elsewhere network's state dict (another number of classes), saved to weights.pt."""
    torch.manual_seed(123)
    net = MultiInputNet(FT_INPUTS.model_dump(), classes, "multiclass", [12, 6], image=FT_MODEL["image"])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "weights.pt")
    return state


def test_fine_tuning_loads_matching_weights_skips_a_new_head_and_freezes(tmp_path: Path) -> None:
    source = source_weights(tmp_path, classes=5)
    tune = {"weights": "weights.pt", "freeze": ["image.*", "head.0.*"]}
    job = job_for(tmp_path, FT_INPUTS, FT_MODEL | tune, classes=3, recipe_dir=str(tmp_path))
    result = fit(job)
    assert result is not None and result.fine_tune is not None
    report = result.fine_tune
    assert report["loaded"] == len(source) - 2  # all but out.weight/out.bias: 5 rows there, 3 here
    assert report["untouched"] == 2
    assert sorted(s.split(":")[0] for s in report["skipped"]) == ["out.bias", "out.weight"]
    assert "head.0.weight" in report["frozen"] and "image.photo.backbone.0.weight" in report["frozen"]
    after = torch.load(tmp_path / "out" / result.state_dict, weights_only=True)
    params = {n for n, _ in trained(tmp_path, result).named_parameters()}
    for name in params:
        if name.startswith(("image.", "head.0.")):  # frozen: exactly the file's weights after training
            assert torch.equal(after[name], source[name]), name
    assert not torch.equal(after["head.3.weight"], source["head.3.weight"])  # loaded, then trained
    assert after["out.weight"].shape == (3, 6)


def test_weights_load_from_a_lightning_checkpoint_and_a_bare_torchvision_state_dict(tmp_path: Path) -> None:
    source = source_weights(tmp_path, classes=3)
    checkpoint = {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in source.items()}}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    net = MultiInputNet(FT_INPUTS.model_dump(), 3, "multiclass", [12, 6], image=FT_MODEL["image"])
    report = load_weights(net, tmp_path / "last.ckpt")
    assert (report.strip, report.add, report.loaded, report.skipped) == ("model.", "", len(source), [])
    assert all(torch.equal(v, source[k]) for k, v in net.state_dict().items())

    import torchvision

    resnet = torchvision.models.resnet18(weights=None)  # what someone trained elsewhere, 1000 classes
    torch.save(resnet.state_dict(), tmp_path / "resnet.pt")
    photo = ModelInputs(images={"photo": ImageSpec(size=(32, 32))}).model_dump()
    net = MultiInputNet(photo, 2, "binary", [4], image={"arch": "resnet18", "embedding": 8})
    report = load_weights(net, tmp_path / "resnet.pt")
    assert report.add == "image.photo.backbone." and len(report.skipped) == 2  # fc: 1000 classes vs 8
    assert torch.equal(net.image.photo.backbone.layer1[0].conv1.weight, resnet.layer1[0].conv1.weight)


class NotTensors:
    pass


def test_fine_tuning_errors_are_clear(tmp_path: Path) -> None:
    source_weights(tmp_path, classes=3)
    net = MultiInputNet(FT_INPUTS.model_dump(), 3, "multiclass", [12, 6], image=FT_MODEL["image"])
    with pytest.raises(MlopsError, match="missing.pt does not exist"):
        load_weights(net, tmp_path / "missing.pt")
    torch.save({"model": NotTensors()}, tmp_path / "pickled.pt")
    refused = "cannot read .*pickled.pt with torch.load\\(weights_only=True\\): it holds a pickled Python"
    with pytest.raises(MlopsError, match=refused + " object \\(.*NotTensors\\)"):
        read_state_dict(tmp_path / "pickled.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MlopsError, match="garbage.pt .*not a file torch.save wrote"):
        read_state_dict(tmp_path / "garbage.pt")
    torch.save({"other.weight": torch.zeros(7, 7)}, tmp_path / "other.pt")
    with pytest.raises(MlopsError, match="no tensor of .*other.pt matches"):
        load_weights(net, tmp_path / "other.pt")
    job = job_for(tmp_path, FT_INPUTS, FT_MODEL | {"freeze": ["image.*.layer9.*"]})
    with pytest.raises(MlopsError, match="'image.\\*.layer9.\\*' matches no parameter"):
        fit(job)
    job = job_for(tmp_path, FT_INPUTS, FT_MODEL | {"freeze": ["*"]})
    with pytest.raises(MlopsError, match="nothing to train"):
        fit(job)


class FullGraph:
    """A stand-in for the bundle's full graph around the exported network: raw numeric columns through the
    fitted preprocessor into `tabular`, media inputs as they are, softmax on the logits."""

    def __init__(self, network: Any, pre: Any) -> None:
        self.network, self.pre = network, pre

    def get_outputs(self) -> list[Any]:
        return [SimpleNamespace(name="probabilities")]

    def run(self, _: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        frame = pd.DataFrame({s.name: feeds[s.name][:, 0] for s in self.pre.numeric})
        media = {k: v for k, v in feeds.items() if k not in frame}
        (logits,) = self.network.run(["logits"], {TABULAR: self.pre.transform(frame)} | media)
        return [torch.softmax(torch.from_numpy(logits), -1).numpy()]


def test_parity_check_feeds_media_to_the_graph_and_beside_tabular_to_torch() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=9), "b": rng.normal(5, 2, size=9),
                          "y": rng.choice(["n", "y"], 9)})
    pre = fit_preprocessor(infer_schema(DataConfig(path="x.csv", target="y"), frame), frame)
    inputs = ModelInputs(tabular=pre.n_features, texts={"review": TEXT})
    torch.manual_seed(0)
    net = MultiInputNet(inputs.model_dump(), 2, "binary", [6], text=SMALL_TEXT).eval()
    session = ort.InferenceSession(export_network(net, inputs, 18).SerializeToString())
    media = {"review": rng.integers(0, VOCAB, (9, TEXT.max_length))}
    report = check_parity(FullGraph(session, pre), net, frame, pre, "binary", None, [1, 4], 1e-5, media=media)
    assert report["rows"] == 9 and report["max_abs_diff"] <= 1e-5
    other = MultiInputNet(inputs.model_dump(), 2, "binary", [6], text=SMALL_TEXT).eval()  # other weights
    with pytest.raises(ParityError, match="max \\|diff\\|"):
        check_parity(FullGraph(session, pre), other, frame, pre, "binary", None, [4], 1e-5, media=media)
