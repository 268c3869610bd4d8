"""The steps of a run as plain functions: `step(ctx, out_dir) -> result`.

Each writes its files into `out_dir` (the cache publishes the directory atomically) and returns a
JSON-able result whose paths are relative to that directory. None of them knows about Prefect;
`mlops.engine.runner` wraps them. Only `register` talks to MLflow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlops.core.errors import MlopsError
from mlops.recipe import LoadedRecipe


@dataclass
class RunContext:
    loaded: LoadedRecipe
    run_id: str | None
    tracking_uri: str
    prune: Any = None  # a PruneLink when this run is a sweep trial
    allow_failed_gates: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def dir(self, step: str) -> Path:
        return Path(self.results[step]["dir"])


def load_data(ctx: RunContext, out: Path) -> dict[str, Any]:
    from mlops.data.fingerprint import dvc_revision, fingerprint_bytes, fingerprint_frame
    from mlops.data.sources import data_path, load_frame

    data = ctx.loaded.recipe.data
    frame, raw = load_frame(data, ctx.loaded.path)
    fingerprint = fingerprint_bytes(raw) if raw is not None else fingerprint_frame(frame)
    dvc = dvc_revision(data_path(data, ctx.loaded.path)) if data.path else None
    frame.to_parquet(out / "data.parquet", index=False)
    source = data.path or f"sklearn:{data.dataset}"
    return {"fingerprint": fingerprint, "dvc": dvc, "source": source, "rows": len(frame), "columns": list(frame.columns)}


def check_data(ctx: RunContext, out: Path) -> dict[str, Any]:
    import pandas as pd

    from mlops.data.expectations import check_expectations

    frame = pd.read_parquet(ctx.dir("load_data") / "data.parquet")
    return check_expectations(frame, ctx.loaded.recipe.evaluate.expectations, ctx.results["load_data"]["source"])


def split(ctx: RunContext, out: Path) -> dict[str, Any]:
    import pandas as pd

    from mlops.data.schema import infer_task
    from mlops.data.split import split_digest, split_indices

    r = ctx.loaded.recipe
    frame = pd.read_parquet(ctx.dir("load_data") / "data.parquet")
    task = infer_task(frame[r.data.target].dropna(), r.data.task)
    _check_gates_for(ctx, task)
    parts = split_indices(frame, r.data.target, r.data.split, r.split_seed, classification=task != "regression")
    np.savez(out / "split.npz", **parts)
    return {"task": task, "sizes": {k: int(len(v)) for k, v in parts.items()}, "digest": split_digest(parts),
            "seed": r.split_seed}


def _check_gates_for(ctx: RunContext, task: str) -> None:
    """Validate time could not know an 'auto' task; now that it is known, refuse gates it cannot compute
    before minutes of training, never a silent pass at the end."""
    from mlops.core.errors import RecipeError
    from mlops.recipe.checks import gate_problems

    problems = gate_problems(ctx.loaded.recipe, task)
    if problems:
        raise RecipeError(f"{ctx.loaded.path} (task {task})", problems)


def frames(ctx: RunContext) -> dict[str, Any]:
    import pandas as pd

    frame = pd.read_parquet(ctx.dir("load_data") / "data.parquet")
    idx = np.load(ctx.dir("split") / "split.npz")
    return {name: frame.iloc[idx[name]].reset_index(drop=True) for name in ("train", "val", "test")}


def preprocess(ctx: RunContext, out: Path) -> dict[str, Any]:
    from mlops.data.preprocess import fit_preprocessor
    from mlops.data.schema import encode_labels, infer_schema

    r = ctx.loaded.recipe
    parts = frames(ctx)
    schema = infer_schema(r.data.model_copy(update={"task": ctx.results["split"]["task"]}), parts["train"])
    pre = fit_preprocessor(schema, parts["train"])
    arrays: dict[str, np.ndarray] = {}
    target_scale = None
    if schema.task == "regression":
        y_train = parts["train"][r.data.target].to_numpy(np.float32)
        target_scale = (float(y_train.mean()), float(y_train.std()) or 1.0)
    for name, frame in parts.items():
        arrays[f"x_{name}"] = pre.transform(frame)
        if schema.task == "regression":
            assert target_scale is not None
            y = frame[r.data.target].to_numpy(np.float32)
            arrays[f"y_{name}"] = ((y - np.float32(target_scale[0])) / np.float32(target_scale[1])).astype(np.float32)
        else:
            arrays[f"y_{name}"] = encode_labels(frame[r.data.target], schema.labels or [])
    np.savez(out / "arrays.npz", **arrays)
    (out / "schema.json").write_text(schema.model_dump_json(indent=2))
    (out / "preprocessor.json").write_text(pre.model_dump_json(indent=2))
    return {"task": schema.task, "n_features": pre.n_features, "labels": schema.labels, "target_scale": target_scale}


def train(ctx: RunContext, out: Path) -> dict[str, Any]:
    from mlops.train.fit import TrainJob

    r = ctx.loaded.recipe
    prep = ctx.results["preprocess"]
    job = TrainJob(
        model=r.model, datamodule=r.data.datamodule, trainer=r.trainer, seed=r.seed, task=prep["task"], input_dim=prep["n_features"],
        output_dim=1 if prep["task"] == "regression" else len(prep["labels"]),
        arrays=str(ctx.dir("preprocess") / "arrays.npz"), out_dir=str(out), prune=ctx.prune,
    )
    if r.trainer.multiprocess:
        result = _train_in_worker(job, out)
    else:
        from mlops.train.fit import fit

        fitted = fit(job)
        assert fitted is not None
        result = fitted.model_dump()
    if result.get("pruned"):
        from mlops.train.pruning import TrialPruned

        raise TrialPruned(result)  # never cache or export a model the pruner stopped half-way
    return result


def _train_in_worker(job: Any, out: Path) -> dict[str, Any]:
    """DDP relaunches the current command per rank; a dedicated worker module makes that harmless."""
    job_file = out / "job.json"
    job_file.write_text(job.model_dump_json(indent=2))
    from mlops.engine.children import clean_env, die_with_parent

    proc = subprocess.run([sys.executable, "-m", "mlops.train.worker", str(job_file)], env=clean_env(),
                          preexec_fn=die_with_parent())
    result_file = out / "train_result.json"
    if proc.returncode != 0 or not result_file.is_file():
        raise MlopsError(f"training worker failed with exit code {proc.returncode} (its output is above)")
    return json.loads(result_file.read_text())


def load_module(ctx: RunContext) -> Any:
    import torch

    from mlops.train.fit import build_module

    result = ctx.results["train"]
    module = build_module(result["init"])
    module.load_state_dict(torch.load(ctx.dir("train") / result["state_dict"], map_location="cpu", weights_only=True))
    return module.eval()


def evaluate(ctx: RunContext, out: Path) -> dict[str, Any]:
    """Every metric of the task (and the recipe's custom ones) on val and test, from the trained model."""
    from mlops.evaluate.metrics import compute_metrics, custom_metric_fns
    from mlops.evaluate.plots import calibration_png, confusion_matrix_png, residual_png, roc_png
    from mlops.evaluate.scored import Scored
    from mlops.package.export import torch_outputs

    prep = ctx.results["preprocess"]
    module = load_module(ctx)
    arrays = np.load(ctx.dir("preprocess") / "arrays.npz")
    regression = prep["task"] == "regression"
    mean, std = prep["target_scale"] if regression else (0.0, 1.0)
    custom = custom_metric_fns(ctx.loaded.recipe.evaluate.custom_metrics)
    metrics: dict[str, float] = {}
    scored: dict[str, Scored] = {}
    for split_name in ("val", "test"):
        y = arrays[f"y_{split_name}"]
        outputs = torch_outputs(module, arrays[f"x_{split_name}"], prep["task"])
        if regression:
            y, outputs = y * std + mean, outputs * std + mean  # back in the target's own units
        scored[split_name] = Scored(prep["task"], y, outputs, prep["labels"])
        metrics |= compute_metrics(scored[split_name], split_name, custom)
    test = scored["test"]
    if regression:
        plots = [residual_png(test.y, test.out, out / "residuals.png")]
    else:
        plots = [confusion_matrix_png(test.y, test.pred, prep["labels"], out / "confusion_matrix.png"),
                 roc_png(test, out / "roc.png"), calibration_png(test, out / "calibration.png")]
    # logged at the step after the last epoch, so a metric's history reads: epochs..., final evaluation
    return {"metrics": metrics, "plots": [p.name for p in plots], "step": ctx.results["train"]["epochs_run"]}


def export(ctx: RunContext, out: Path) -> dict[str, Any]:
    import onnxruntime as ort

    import mlops
    from mlops.data.preprocess import Preprocessor
    from mlops.data.schema import DataSchema
    from mlops.package.bundle import write_bundle
    from mlops.package.export import check_parity, export_network
    from mlops.package.graph import assemble, io_description, postprocessing_graph, preprocessing_graph

    r = ctx.loaded.recipe
    prep = ctx.results["preprocess"]
    pre = Preprocessor.model_validate_json((ctx.dir("preprocess") / "preprocessor.json").read_text())
    schema = DataSchema.model_validate_json((ctx.dir("preprocess") / "schema.json").read_text())
    module = load_module(ctx)
    net = export_network(module, prep["n_features"], r.export.opset)
    scale = tuple(prep["target_scale"]) if prep["target_scale"] else None
    n_out = 1 if prep["task"] == "regression" else len(prep["labels"])
    full = assemble(preprocessing_graph(pre, r.export.opset, net.ir_version), net,
                    postprocessing_graph(prep["task"], n_out, prep["labels"], scale, r.export.opset, net.ir_version))
    model_bytes = full.SerializeToString()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    parity = check_parity(session, module, frames(ctx)["test"], pre, prep["task"], scale,
                          r.export.parity_batch_sizes, r.export.parity_atol)
    inputs = [{"name": s.name, "kind": "numeric", "dtype": "float32"} for s in pre.numeric]
    inputs += [{"name": c.name, "kind": "categorical", "dtype": "string"} for c in pre.categorical]
    meta = write_bundle(out / "bundle", model_bytes, {
        "name": r.model_name, "task": prep["task"], "inputs": inputs, "outputs": io_description(full)["outputs"],
        "labels": prep["labels"], "recipe_hash": ctx.loaded.model_hash, "data_fingerprint": ctx.results["load_data"]["fingerprint"],
        "metrics": ctx.results["evaluate"]["metrics"], "data_schema": schema.model_dump(), "parity": parity,
        "mlops_version": mlops.__version__,
    })
    return {"bundle": "bundle", "parity": parity, "onnx_sha256": meta.onnx_sha256, "onnx_bytes": len(model_bytes)}


def assess(ctx: RunContext, out: Path) -> dict[str, Any]:
    """Slices, fairness, robustness and the inference benchmark, all on the exported ONNX model."""
    from mlops.evaluate.assess import assess_bundle

    parts = frames(ctx)
    module = load_module(ctx) if ctx.loaded.recipe.evaluate.performance.torch else None
    features = np.load(ctx.dir("preprocess") / "arrays.npz")["x_test"] if module is not None else None
    result = assess_bundle(ctx.loaded.recipe, ctx.dir("export") / "bundle", parts["test"], parts["train"],
                           module, features)
    (out / "assess.json").write_text(json.dumps(result, indent=2))
    return result


def gate(ctx: RunContext, out: Path) -> dict[str, Any]:
    """Decide on promotion: every gate against the computed metrics, `vs: champion` gates by a paired test on
    the same rows, and the evaluation report. Never cached: the champion it compares with can change."""
    from mlops.evaluate.assess import decide

    r = ctx.loaded.recipe
    parts = frames(ctx)
    results = {"metrics": ctx.results["evaluate"]["metrics"] | ctx.results["assess"]["metrics"],
               "slices": ctx.results["assess"]["slices"], "fairness": ctx.results["assess"]["fairness"],
               "robustness": ctx.results["assess"]["robustness"],
               "performance": ctx.results["assess"]["performance"]}
    plots = {Path(p).stem: str(ctx.dir("evaluate") / p) for p in ctx.results["evaluate"]["plots"]}
    return decide(r, ctx.dir("export") / "bundle", {k: parts[k] for k in ("val", "test")}, results, plots,
                  ctx.tracking_uri, out, {"run_id": ctx.run_id, "onnx_sha256": ctx.results["export"]["onnx_sha256"]},
                  allow_failed=ctx.allow_failed_gates)


def register(ctx: RunContext, out: Path) -> dict[str, Any]:
    """Register the bundle. Only a model whose gates passed (or were overridden) gets an alias."""
    from mlflow import MlflowClient

    from mlops.package.registry import aliases_of, promote_version, register_bundle

    r = ctx.loaded.recipe
    if not r.registry.enabled or ctx.run_id is None:
        return {"model_name": r.model_name, "model_version": None, "aliases": []}
    client = MlflowClient(ctx.tracking_uri, registry_uri=ctx.tracking_uri)
    sha = ctx.results["export"]["onnx_sha256"]
    gates = ctx.results.get("gate", {}).get("outcome", "passed")  # passed | failed | allowed
    # idempotent: the same bundle (by checksum) is never registered twice
    existing = client.search_model_versions(f"name='{r.model_name}' and tags.onnx_sha256='{sha}'")
    if existing:
        latest = max(existing, key=lambda m: int(m.version))
        v = str(latest.version)
        if latest.tags.get("gates") == "failed" and gates != "failed":  # now passed, or overridden: promote it
            client.set_model_version_tag(r.model_name, v, "gates", gates)
            promote_version(client, r.model_name, v)
        return {"model_name": r.model_name, "model_version": v, "aliases": aliases_of(client, r.model_name, v),
                "reused": True, "gates": gates}
    tags = {"onnx_sha256": sha, "recipe_hash": ctx.loaded.hash,
            "data_fingerprint": ctx.results["load_data"]["fingerprint"], "gates": gates}
    return register_bundle(client, ctx.tracking_uri, ctx.run_id, r.model_name, ctx.dir("export") / "bundle", tags,
                           set_aliases=gates != "failed") | {"gates": gates}


STEPS = {"load_data": load_data, "check_data": check_data, "split": split, "preprocess": preprocess, "train": train,
         "evaluate": evaluate, "export": export, "assess": assess, "gate": gate, "register": register}
