"""Apply the gates (vs champion: a paired test) and write the evaluation report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlops.engine.steps.common import RunContext, frames
from mlops.evaluate.assess import decide


def gate(ctx: RunContext, out: Path) -> dict[str, Any]:
    """Decide on promotion: every gate against the computed metrics, `vs: champion` gates by a paired test on
    the same rows, and the evaluation report. Never cached: the champion it compares with can change."""
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
