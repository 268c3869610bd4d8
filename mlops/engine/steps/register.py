"""Register the bundle in MLflow; aliases only if the gates passed (or were overridden)."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from mlops.core.registry import store_lock
from mlops.engine.results import ExportResult, LoadDataResult, RegisterResult
from mlops.engine.steps.common import RunContext, frames
from mlops.evaluate.gates import GateDecision
from mlops.package.registry import aliases_of, promote_version, register_bundle


def register(ctx: RunContext, out: Path) -> RegisterResult:
    """Register the bundle. Only a model whose gates passed (or were overridden) gets an alias."""
    r = ctx.loaded.recipe
    if not r.registry.enabled or ctx.run_id is None:
        return RegisterResult(model_name=r.model_name, model_version=None, aliases=[])
    client = MlflowClient(ctx.tracking_uri, registry_uri=ctx.tracking_uri)
    sha = ctx.result("export", ExportResult).onnx_sha256
    gates = ctx.result("gate", GateDecision).outcome if "gate" in ctx.results else "passed"
    # idempotent: the same bundle (by checksum) is never registered twice, also by two runs at once
    with store_lock(ctx.tracking_uri, "register"):
        existing = client.search_model_versions(f"name='{r.model_name}' and tags.onnx_sha256='{sha}'")
        if existing:
            latest = max(existing, key=lambda m: int(m.version))
            v = str(latest.version)
            if latest.tags.get("gates") == "failed" and gates != "failed":  # now passed, or overridden: promote it
                client.set_model_version_tag(r.model_name, v, "gates", gates)
                promote_version(client, r.model_name, v)
            return RegisterResult(model_name=r.model_name, model_version=v,
                                  aliases=aliases_of(client, r.model_name, v), reused=True, gates=gates)
        tags = {"onnx_sha256": sha, "recipe_hash": ctx.loaded.hash,
                "data_fingerprint": ctx.result("load_data", LoadDataResult).fingerprint, "gates": gates}
        bundle = ctx.dir("export") / "bundle"
        # a real test row (what the model was judged on) as the version's input example
        registered = register_bundle(client, ctx.tracking_uri, ctx.run_id, r.model_name, bundle, tags,
                                     set_aliases=gates != "failed", rows=frames(ctx)["test"])
        return RegisterResult.model_validate(registered | {"gates": gates})
