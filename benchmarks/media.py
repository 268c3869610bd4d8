"""Images and text: what the framework costs in training, what the bundle saves in inference, and the served
request rate for one PNG, each against its peer in the same run.

    .venv/bin/python benchmarks/media.py [--images 20000] [--epochs 2] [--repeats 1] [--skip-serve]

1. Training, on `--images` generated 32x32 RGB PNG files (10 classes: a coloured bar whose colour and
   orientation give the class, over noise), written with a manifest CSV into a temporary directory:
   * framework: `mlops run --json` of a generated recipe (data = that manifest, model=cnn, no augmentation,
     early stopping off, N epochs) in a subprocess with a fresh MLOPS_HOME; the fit time is the train step's
     own measurement (`train/fit_seconds`: `trainer.fit` wall time);
   * plain loop: a fresh Python process builds the same network (MultiInputNet with the run's own init:
     the CNN, the pixel statistics, the head), decodes the same PNG files with Pillow (outside the timing, as
     the framework's preprocess step is outside its fit time), and trains with Adam, the same learning rate,
     batch size and epochs, a validation pass each epoch and the best weights kept, as Lightning does.
   Goal: framework / plain <= 1.15.
2. Inference, one thread each side (ONNX Runtime intra-op 1; torch.set_num_threads(1)), preprocessing
   included on both sides, batch 1 and 32, median over repeated calls:
   * bundle: `Predictor.feeds_from_rows` (PNG decode + resize, or tokenize) + `Predictor.predict`;
   * torch eager: the same decode (`mlops.data.media`) or tokenizer, then the trained LightningModule.
   For the image model of part 1 and a text model (recipes/fine_foods_text.yaml, 1 epoch). Goal: >= 2x.
3. Served requests/s for one 32x32 PNG, c=8: benchmarks/serve.py over the image bundle of part 1 (it
   serves it with `mlops serve`, stock KServe ModelServer and the others, measured interleaved).
   Goal: ours / KServe stock >= 2x.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SEED = 42
BATCH = 64
LR = 1e-3
CLASSES = 10


# --------------------------------------------------------------------------- the data


def write_images(directory: Path, n: int) -> Path:
    """n PNG files and manifest.csv (image, label): class c is a bar of colour c % 5, vertical when c >= 5."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(SEED)
    colours = np.array([[230, 40, 40], [40, 200, 40], [40, 40, 230], [220, 220, 40], [200, 40, 200]], np.uint8)
    (directory / "png").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c = int(rng.integers(CLASSES))
        img = rng.integers(0, 90, size=(32, 32, 3), dtype=np.uint8)
        at, width = int(rng.integers(4, 24)), int(rng.integers(3, 7))
        if c >= 5:
            img[:, at:at + width] = colours[c % 5]
        else:
            img[at:at + width, :] = colours[c % 5]
        name = f"png/{i:05d}.png"
        Image.fromarray(img, "RGB").save(directory / name)
        rows.append({"image": name, "label": f"c{c}"})
    pd.DataFrame(rows).to_csv(directory / "manifest.csv", index=False)
    return directory / "manifest.csv"


RECIPE = """\
defaults:
  - base
  - override model: cnn
  - _self_
name: bench-images
data:
  path: {manifest}
  target: label
  task: multiclass
  columns:
    image: {{kind: image, size: [32, 32], channels: 3}}
model:
  lr: {lr}
  batch_size: {batch}
trainer:
  max_epochs: {epochs}
  early_stopping: null
"""


def child_env(home: Path, prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL")}
    return env | {"MLOPS_HOME": str(home), "PREFECT_HOME": str(prefect_home),
                  "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def mlops_run(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "run", "--json", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"mlops run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])


def trained(summary: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The train step's result (its `init` rebuilds the module) and its fit time, from the run's records."""
    from mlflow import MlflowClient

    client = MlflowClient(summary["tracking_uri"], registry_uri=summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    key = json.loads(run.data.tags["mlops.plan"])["train"]
    home = Path(summary["run_dir"]).parents[2]
    result = json.loads((home / "cache" / "train" / key / "train_result.json").read_text())
    return result, float(run.data.metrics["train/fit_seconds"])


def module_of(summary: dict[str, Any]) -> Any:
    import torch

    from mlops.train.fit import build_module
    from mlops.train.result import TrainResult

    result, _ = trained(summary)
    module = build_module(TrainResult.model_validate(result).init)
    module.load_state_dict(torch.load(summary["weights"], map_location="cpu", weights_only=True))
    return module.eval()


# --------------------------------------------------------------------------- 1. training


def plain_once(manifest: Path, init_file: Path, epochs: int) -> dict[str, float]:
    """The plain loop (in its own process): the run's network, the same PNG files, a hand-written loop."""
    import copy

    import numpy as np
    import pandas as pd
    import torch
    from torch.nn import functional as F

    from mlops.data.media import ImageSpec, decode_images
    from mlops.train.fit import build_module

    frame = pd.read_csv(manifest)
    spec = ImageSpec(size=(32, 32), channels=3)
    pixels = decode_images([(manifest.parent / p).read_bytes() for p in frame["image"]], spec)
    labels = sorted(frame["label"].unique())
    y = frame["label"].map({v: i for i, v in enumerate(labels)}).to_numpy(np.int64)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(frame))
    n_train, n_val = int(0.7 * len(frame)), int(0.15 * len(frame))
    train, val = order[:n_train], order[n_train:n_train + n_val]

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)  # the recipe's trainer.deterministic: true
    model = build_module(json.loads(init_file.read_text()))
    x = torch.from_numpy(pixels)
    yt = torch.from_numpy(y)
    started = time.perf_counter()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    best_loss, best_state = float("inf"), None
    val_loss = float("nan")
    for _ in range(epochs):
        model.train()
        perm = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
        for start in range(0, len(perm), BATCH):
            idx = perm[start:start + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model({"image": x[idx]}), yt[idx])
            loss.backward()
            opt.step()
        model.eval()
        loss_sum = n = 0.0
        with torch.inference_mode():
            for start in range(0, len(val), 256):
                idx = torch.from_numpy(val[start:start + 256])
                loss_sum += F.cross_entropy(model({"image": x[idx]}), yt[idx]).item() * len(idx)
                n += len(idx)
        val_loss = loss_sum / n
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(model.state_dict())
    seconds = time.perf_counter() - started
    assert best_state is not None
    return {"seconds": seconds, "val_loss": val_loss}


def run_plain(manifest: Path, init: dict[str, Any], epochs: int, tmp: Path) -> dict[str, float]:
    init_file = tmp / "init.json"
    init_file.write_text(json.dumps(init))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--plain-once", str(manifest),
                           str(init_file), "--epochs", str(epochs)], cwd=REPO, capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"plain loop failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- 2. inference


def timed(fn: Any, seconds: float = 3.0) -> float:
    """Median wall time of one call, in ms, over as many calls as fit in `seconds` (at least 5)."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def inference(summary: dict[str, Any], rows: list[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """{batch: (bundle ms, torch ms)} for one call of each at batch 1 and 32, preprocessing included."""
    import numpy as np
    import torch

    from mlops.data.media import decode_images, encode_texts, image_bytes, load_tokenizer
    from mlops.package.predictor import Predictor

    torch.set_num_threads(1)
    predictor = Predictor(summary["bundle"], threads=1)
    module = module_of(summary)
    image = {i.name: i.image for i in predictor.meta.inputs if i.image is not None}
    text = {i.name: i.text for i in predictor.meta.inputs if i.text is not None}
    tokenizers = {n: load_tokenizer((Path(summary["bundle"]) / s.tokenizer).read_text()) for n, s in text.items()}

    def ours(batch: list[dict[str, Any]]) -> Any:
        return predictor.predict(predictor.feeds_from_rows(batch)).outputs

    def eager(batch: list[dict[str, Any]]) -> Any:
        feeds: dict[str, torch.Tensor] = {}
        for name, spec in image.items():
            feeds[name] = torch.from_numpy(decode_images([image_bytes(r[name]) for r in batch], spec))
        for name, spec in text.items():
            feeds[name] = torch.from_numpy(encode_texts(tokenizers[name], [r[name] for r in batch], spec.max_length))
        with torch.inference_mode():
            return torch.softmax(module(feeds), dim=-1).numpy()

    out = {}
    for size in (1, 32):
        batch = rows[:size]
        got = ours(batch)["probabilities"]
        assert np.allclose(got, eager(batch), atol=1e-3), "the bundle and the module disagree"
        out[size] = (timed(lambda b=batch: ours(b)), timed(lambda b=batch: eager(b)))
    return out


# --------------------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="training repetitions, interleaved")
    parser.add_argument("--skip-serve", action="store_true", help="leave out part 3 (benchmarks/serve.py)")
    parser.add_argument("--serve-duration", type=float, default=5)
    parser.add_argument("--plain-once", nargs=2, metavar=("MANIFEST", "INIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_once:
        print(json.dumps(plain_once(Path(args.plain_once[0]), Path(args.plain_once[1]), args.epochs)))
        return 0

    import platform

    import torch

    print(f"media benchmark: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench-media-") as name:
        tmp = Path(name)
        started = time.perf_counter()
        manifest = write_images(tmp / "images", args.images)
        print(f"wrote {args.images} 32x32 PNG files in {time.perf_counter() - started:.1f} s")
        recipe = tmp / "bench_images.yaml"
        recipe.write_text(RECIPE.format(manifest=manifest, lr=LR, batch=BATCH, epochs=args.epochs))
        prefect_home = tmp / "prefect"

        framework, plain = [], []
        summary: dict[str, Any] = {}
        for rep in range(args.repeats):
            summary = mlops_run([str(recipe)], child_env(tmp / f"home-{rep}", prefect_home))
            init, fit = trained(summary)
            framework.append(fit)
            plain.append(run_plain(manifest, init["init"], args.epochs, tmp)["seconds"])
            print(f"  repetition {rep + 1}: framework fit {fit:.1f} s, plain loop {plain[-1]:.1f} s "
                  f"(test accuracy {summary['metrics']['test/accuracy']:.3f})")
        f, p = statistics.median(framework), statistics.median(plain)
        print(f"\n1. training, {args.images} images, {args.epochs} epochs, batch {BATCH}: framework {f:.1f} s, "
              f"plain loop {p:.1f} s, ratio {f / p:.2f} (goal <= 1.15)")

        pngs = [(manifest.parent / f"png/{i:05d}.png").read_bytes() for i in range(32)]
        image_rows = [{"image": {"b64": base64.b64encode(b).decode()}} for b in pngs]
        text_summary = mlops_run(["recipes/fine_foods_text.yaml", "trainer.max_epochs=1", "evaluate.gates=[]"],
                                 child_env(tmp / "home-text", prefect_home))
        from mlops.data.sources import load_fine_foods

        texts = load_fine_foods()["review"].iloc[:32].tolist()
        text_rows = [{"review": t} for t in texts]
        print("\n2. inference, one thread each, preprocessing included (median ms per call)")
        print("| model | batch | bundle (ORT) | torch eager | speed-up |\n| --- | --- | --- | --- | --- |")
        for label, s, rows in (("image CNN 32x32", summary, image_rows), ("text Transformer", text_summary,
                                                                          text_rows)):
            for size, (ours_ms, torch_ms) in inference(s, rows).items():
                print(f"| {label} | {size} | {ours_ms:.2f} | {torch_ms:.2f} | {torch_ms / ours_ms:.1f}x |")

        if not args.skip_serve:
            print("\n3. served requests/s for one 32x32 PNG (benchmarks/serve.py over the image bundle)")
            sys.stdout.flush()
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve.py"), "--bundle", summary["bundle"],
                            "--duration", str(args.serve_duration), "--example-image",
                            str(manifest.parent / "png/00000.png")], cwd=REPO, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
