"""`mlops evaluate RECIPE --model REF`: evaluate any registered model (or bundle) on the recipe's data.

The data steps come from the step cache, so the rows are exactly the ones a run of this recipe tests on;
the model is scored through its ONNX bundle only. The evaluation is tracked as its own MLflow run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from mlops.core.log import say
from mlops.core.refs import fetch
from mlops.core.registry import experiment_id, registry_client, tracking_uri
from mlops.core.workspace import workspace
from mlops.engine.plan import compile_plan
from mlops.engine.results import AssessResult
from mlops.engine.steps.check_data import check_data
from mlops.engine.steps.common import RunContext, frames
from mlops.engine.steps.load_data import load_data
from mlops.engine.steps.split import split as split_step
from mlops.engine.summary import Evaluation
from mlops.evaluate.assess import assess_bundle, decide
from mlops.evaluate.metrics import compute_metrics, custom_metric_fns
from mlops.evaluate.plots import calibration_png, confusion_matrix_png, residual_png, roc_png
from mlops.evaluate.scored import score_bundle
from mlops.package.bundle import read_bundle
from mlops.recipe import LoadedRecipe


def evaluate_model(loaded: LoadedRecipe, ref: str, allow_failed_gates: bool = False) -> Evaluation:
    from mlflow.entities import Metric

    r = loaded.recipe
    uri = tracking_uri(r.tracking.uri)
    client = registry_client(uri)
    resolved = fetch(ref, uri, client)
    bundle_dir, model_ref = resolved.path, resolved.label
    meta = read_bundle(bundle_dir)
    plan = compile_plan(loaded)
    ctx = RunContext(loaded=loaded, run_id=None, tracking_uri=uri)
    for fn in (load_data, check_data, split_step):  # the rows a run of this recipe tests on, from the step cache
        ctx.record(fn.__name__, plan.run(ctx, fn.__name__, fn))
    parts = frames(ctx)
    say(f"evaluating {model_ref} on {len(parts['test'])} test rows of recipe '{r.name}'")
    out = workspace().evaluation_dir(meta.name, datetime.now(UTC).strftime('%Y%m%d-%H%M%S'))
    out.mkdir(parents=True, exist_ok=True)
    custom = custom_metric_fns(r.evaluate.custom_metrics)
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        scored = score_bundle(bundle_dir, parts[split], r.data.target)
        metrics |= compute_metrics(scored, split, custom)
    if scored.task == "regression":
        plots = [residual_png(scored.y, scored.out, out / "residuals.png")]
    else:
        plots = [confusion_matrix_png(scored.y, scored.pred, scored.labels or [], out / "confusion_matrix.png"),
                 roc_png(scored, out / "roc.png"), calibration_png(scored, out / "calibration.png")]
    assessed = AssessResult.model_validate(assess_bundle(r, bundle_dir, parts["test"], parts["train"]))
    results = assessed.gate_inputs(metrics)
    exp = experiment_id(client, r.experiment, uri)
    run_id = client.create_run(exp, run_name=f"evaluate {model_ref}", tags={
        "mlops.evaluates": model_ref, "mlops.recipe": str(loaded.path), "mlops.recipe_hash": loaded.hash,
        "mlflow.source.name": "mlops evaluate"}).info.run_id
    decision = decide(r, bundle_dir, {k: parts[k] for k in ("val", "test")}, results,
                      {p.stem: str(p) for p in plots}, uri, out, {"version": model_ref, "run_id": run_id},
                      allow_failed=allow_failed_gates)
    now = int(datetime.now(UTC).timestamp() * 1000)
    logged = [Metric(k, v, now, 0) for k, v in results["metrics"].items()]
    for i in range(0, len(logged), 500):
        client.log_batch(run_id, metrics=logged[i:i + 500])
    client.set_tag(run_id, "mlops.gates", decision.outcome)
    for name in decision.report.values():
        client.log_artifact(run_id, str(out / name), "evaluation")
    client.set_terminated(run_id, "FAILED" if decision.outcome == "failed" else "FINISHED")
    summary = Evaluation(model=model_ref, run_id=run_id, metrics=results["metrics"], gates=decision,
                         report=str(out / decision.report["html"]), tracking_uri=uri)
    (out / "summary.json").write_text(json.dumps(summary.model_dump(mode="json"), indent=2, default=str))
    return summary
