"""Apply the gates (vs champion: a paired test) and write the evaluation report."""

from __future__ import annotations

from pathlib import Path

from mlops.engine.results import AssessResult, EvaluateResult, ExportResult
from mlops.engine.steps.common import RunContext, frames
from mlops.evaluate.assess import decide
from mlops.evaluate.gates import GateDecision


def gate(ctx: RunContext, out: Path) -> GateDecision:
    """Decide on promotion: every gate against the computed metrics, `vs: champion` gates by a paired test on
    the same rows, and the evaluation report. Its cache key holds the champion it compares with (the engine
    looks it up first, `ctx.champion`): a rerun reuses the decision only while that champion is the same."""
    r = ctx.loaded.recipe
    parts = frames(ctx)
    evaluated = ctx.result("evaluate", EvaluateResult)
    results = ctx.result("assess", AssessResult).gate_inputs(evaluated.metrics)
    plots = {Path(p).stem: str(ctx.dir("evaluate") / p) for p in evaluated.plots}
    return decide(r, ctx.dir("export") / "bundle", {k: parts[k] for k in ("val", "test")}, results, plots,
                  ctx.tracking_uri, out,
                  {"run_id": ctx.run_id, "onnx_sha256": ctx.result("export", ExportResult).onnx_sha256},
                  allow_failed=ctx.allow_failed_gates, champion=ctx.champion, report_at=ctx.run_dir)
