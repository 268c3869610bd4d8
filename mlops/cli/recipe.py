"""`mlops validate`, `schema`, and `mlops run`'s Hydra flags `--cfg` and `--info`: light on purpose (no
torch, lightning, mlflow, prefect or sklearn)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from mlops.cli.output import emit
from mlops.core.atomic import check_output, write_text
from mlops.core.errors import MlopsError
from mlops.engine.multirun import expand
from mlops.engine.validate import load_validated
from mlops.recipe import load_recipe
from mlops.recipe.compose import hydra_view
from mlops.recipe.schema import json_schema


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_validated(args.recipe, args.overrides)
    r = loaded.recipe
    print(f"ok: {args.recipe} is a valid recipe '{r.name}' (model '{r.model_name}', recipe hash {loaded.hash[:12]})")
    emit(loaded.resolved())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    text = json.dumps(json_schema(), indent=2)
    if args.output:
        write_text(check_output(args.output, "--output"), text + "\n")
    else:
        print(text)
    return 0

INFO_KINDS = ("all", "config", "defaults", "searchpath")


def resolve_recipe(args: argparse.Namespace) -> None:
    """`-cp DIR -cn NAME` (Hydra's config path and name) to `args.recipe`; the first positional is then an
    override. `-cp DIR RECIPE` reads RECIPE in DIR."""
    recipe: str | None = args.recipe
    if args.config_name:
        if recipe is not None and "=" not in recipe:
            raise MlopsError(f"give the recipe once: '{recipe}' or --config-name {args.config_name}, not both")
        if recipe is not None:
            args.overrides = [recipe, *args.overrides]
        name = args.config_name if args.config_name.endswith((".yaml", ".yml")) else f"{args.config_name}.yaml"
        args.recipe = str(Path(args.config_path or ".") / name)
    elif recipe is None or "=" in recipe:
        raise MlopsError("mlops run: give a RECIPE (a YAML file) or --config-name NAME (with --config-path DIR)")
    elif args.config_path and not Path(recipe).is_absolute():
        args.recipe = str(Path(args.config_path) / recipe)


def _jobs(args: argparse.Namespace) -> list[list[str]]:
    return expand(args.overrides) if args.multirun else [args.overrides]


def cmd_cfg(args: argparse.Namespace) -> int:
    """`mlops run --cfg job|hydra|all [--resolve] [-p KEY]`: what `--cfg` prints in a Hydra app, for each job
    of a multirun, without running anything. `job` is the recipe as the job gets it: Hydra's composition
    validated by the schema, so every default is filled in; interpolations stay as written (`${...}`) unless
    `--resolve`. `hydra` is the part of Hydra's own node that mlops uses (see `hydra_view`)."""
    resolve_recipe(args)
    jobs = _jobs(args)
    shown = []
    for i, overrides in enumerate(jobs):
        view = hydra_view(args.recipe, overrides)
        out: dict[str, Any] = {}
        if args.cfg in ("job", "all"):
            job = load_recipe(args.recipe, overrides).resolved()
            out |= job if args.resolve else _unresolved(job, view.config)
        if args.cfg in ("hydra", "all"):
            out["hydra"] = view.hydra
        if args.package:
            out = _package(out, args.package)
        if len(jobs) > 1:
            print(f"# job {i}: {' '.join(overrides)}")
        print(yaml.safe_dump(out, sort_keys=False, allow_unicode=True, width=120), end="")
        shown.append(out)
    emit(shown[0] if len(shown) == 1 else {"jobs": shown})
    return 0


def _unresolved(job: Any, composed: Any) -> Any:
    """The job's values with the interpolations the composition wrote (`${data.seed}`) put back in place."""
    if isinstance(composed, str) and "${" in composed:
        return composed
    if isinstance(job, dict) and isinstance(composed, dict):
        return {k: _unresolved(v, composed.get(k)) for k, v in job.items()}
    if isinstance(job, list) and isinstance(composed, list) and len(job) == len(composed):
        return [_unresolved(v, c) for v, c in zip(job, composed, strict=True)]
    return job


def _package(config: dict[str, Any], key: str) -> dict[str, Any]:
    node: Any = config
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise MlopsError(f"--package {key}: no such key in the composed recipe (keys at the top: "
                             f"{', '.join(config)})")
    return {key: node}


def cmd_info(args: argparse.Namespace) -> int:
    """`mlops run --info [all|config|defaults|searchpath]`: where Hydra looks for configs, and what it merged."""
    what = args.info
    if what not in INFO_KINDS:  # `--info RECIPE a=1`: the optional kind took the recipe
        args.overrides = [args.recipe, *args.overrides] if args.recipe is not None else args.overrides
        args.recipe, what = what, "all"
    resolve_recipe(args)
    view = hydra_view(args.recipe, _jobs(args)[0])
    if what in ("all", "searchpath"):
        print("Config search path (first match wins)")
        for d in view.search:
            print(f"  {d.source:<18} {d.path}")
        print(f"  {'hydra':<18} pkg://hydra.conf (Hydra's own configs)")
    if what in ("all", "defaults"):
        print("Defaults list (merge order: later configs win)")
        width = max(len(d.config) for d in view.defaults)
        for d in view.defaults:
            package = f"@{d.package}" if d.package and d.package != d.config.partition("/")[0] else ""
            print(f"  {d.config + package:<{width + 10}} from {d.parent:<12} {d.file or '(not found)'}")
    if what in ("all", "config"):
        print("Composed config (before the schema fills in its defaults)")
        print(yaml.safe_dump(view.config, sort_keys=False, allow_unicode=True, width=120), end="")
    full = {"searchpath": [{"path": str(d.path), "source": d.source} for d in view.search],
            "defaults": [dataclasses.asdict(d) for d in view.defaults], "config": view.config}
    emit(full if what == "all" else {what: full[what]})
    return 0
