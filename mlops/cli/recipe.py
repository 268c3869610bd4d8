"""`mlops validate`, `plan` and `schema`: light on purpose (no torch, lightning, mlflow, prefect or sklearn)."""

from __future__ import annotations

import argparse
import json

from mlops.cli.output import emit
from mlops.core.atomic import write_text
from mlops.engine.plan import compile_plan, render
from mlops.engine.validate import load_validated
from mlops.recipe.schema import json_schema


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_validated(args.recipe, args.overrides)
    r = loaded.recipe
    print(f"ok: {args.recipe} is a valid recipe '{r.name}' (model '{r.model_name}', recipe hash {loaded.hash[:12]})")
    emit(loaded.resolved())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    plan = compile_plan(load_validated(args.recipe, args.overrides))
    print(render(plan), end="")
    hits = plan.hits()
    steps = [{"name": s.name, "inputs": list(s.inputs), "key": s.key, "cached": hits[s.name]} for s in plan.steps]
    emit({"recipe": plan.loaded.recipe.name, "recipe_hash": plan.loaded.hash, "steps": steps})
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    text = json.dumps(json_schema(), indent=2)
    if args.output:
        write_text(args.output, text + "\n")
    else:
        print(text)
    return 0
