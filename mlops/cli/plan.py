"""`mlops plan`: the steps a run would take and which of them it would reuse. Its own module, so that
`validate` does not import the plan's code versions and cache (about 20 ms); light like validate (no torch,
lightning, mlflow, prefect or sklearn)."""

from __future__ import annotations

import argparse

from mlops.cli.output import emit
from mlops.engine.plan import compile_plan, render
from mlops.engine.validate import load_validated


def cmd_plan(args: argparse.Namespace) -> int:
    plan = compile_plan(load_validated(args.recipe, args.overrides))
    print(render(plan), end="")
    hits = plan.hits()
    steps = [{"name": s.name, "inputs": list(s.inputs), "key": s.key, "cached": hits[s.name]} for s in plan.steps]
    emit({"recipe": plan.loaded.recipe.name, "recipe_hash": plan.loaded.hash, "steps": steps})
    return 0
