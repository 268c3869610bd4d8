"""`mlops deploy`, `rollout`, `promote` and `rollback`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mlops.cli.output import emit
from mlops.core.atomic import check_output
from mlops.core.errors import MlopsError
from mlops.core.refs import ModelRef
from mlops.deploy.generate import deploy_recipe
from mlops.deploy.local import LiveServe
from mlops.deploy.promotion import promote, render_for, rollback
from mlops.deploy.rollout import RolloutOptions, rollout
from mlops.recipe import load_recipe

EXIT_ROLLBACK = 1  # the canary failed a check: traffic is back on the stable model
EXIT_HOLD = 75  # EX_TEMPFAIL: not enough traffic to judge a step; run again later (with --resume-at PERCENT)


def cmd_deploy(args: argparse.Namespace) -> int:
    loaded = load_recipe(args.recipe, args.overrides)
    if args.output:
        check_output(args.output, "--output", directory=True)
    # getattr: the git options come with parser.py's `deploy` subcommand
    result = deploy_recipe(loaded, args.model, out=args.output, crd=args.crd, targets=args.target,
                           project_dir=args.project_dir, register_prefect=args.prefect, apply=args.apply,
                           git_repo=getattr(args, "git_repo", None), git_ref=getattr(args, "git_ref", None),
                           local_checkout=getattr(args, "local_checkout", False))
    print(f"deploy: recipe '{result['recipe']}'" + (f", model {result['model']}" if result["model"] else "")
          + f" -> {result['out']}")
    for what, path in result["files"].items():
        check = result["checks"].get(what)
        print(f"  {what:<18} {path}" + (f"  ({check})" if check else ""))
    for name in result.get("registered", []):
        print(f"  registered         Prefect deployment {name}")
    if result.get("applied"):
        print(f"  applied            {result['applied']}")
    if result.get("code"):
        print(f"  flows' code        {result['code']}")
    for line in result["next"]:
        print(f"  next: {line}")
    for line in result["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    emit(result)
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    if not args.model:
        raise MlopsError("rollout: give the canary with --model MODEL (e.g. quickstart@challenger)")
    loaded = load_recipe(args.recipe, args.overrides)
    if args.output:
        check_output(args.output, "--output", directory=True)
    options = RolloutOptions(stable=args.stable, metrics_url=args.metrics_url, log=args.log,
                             canary_variant=args.canary_variant, kubectl=args.apply, local_port=args.local_port,
                             live_url=args.live_url, out=args.output, crd=args.crd, start_percent=args.resume_at,
                             promote=False if args.no_promote else None, reason=args.reason)
    result = rollout(loaded, args.model, options, report=lambda line: print(f"rollout: {line}", flush=True))
    print(f"rollout of {result.canary} next to {result.stable}: {result.decision.upper()} {result.reason}")
    if result.promoted and result.promotion:
        print(f"  champion: {history_line(result.promotion)}")
    emit(result.to_dict())
    return {"advance": 0, "rollback": EXIT_ROLLBACK, "hold": EXIT_HOLD}[result.decision]


def history_line(entry: dict[str, Any]) -> str:
    return (f"version {entry['previous'] or '-'} -> {entry['version']} ({entry['action']} #{entry['seq']} by "
            f"{entry['by']} at {entry['at']}: {entry['reason']})")


def _after_move(args: argparse.Namespace, name: str, entry: dict[str, Any]) -> None:
    if args.live_url:
        changes = LiveServe(args.live_url, name).reload()
        print(f"  live     {args.live_url}: " + ("; ".join(f"{c['variant']} {c.get('from')} -> {c.get('to')}"
                                                       for c in changes) or "already serving it"))
    rendered = render_for(args.recipe, name, entry["version"], args.output, args.crd, args.apply)
    out = {"model": name, "champion": entry["version"], "previous": entry["previous"], "history": entry,
           "manifest": rendered["files"].get("inferenceservice") if rendered else None}
    if rendered:
        print(f"  manifest {out['manifest']}" + ("  (applied)" if rendered.get("applied") else
                                                f"  (apply: kubectl apply -f {out['manifest']})"))
    else:
        print("  no manifest rendered: the recipe that registered it is not at hand (pass --recipe)")
    emit(out)


def _promoted_ref(args: argparse.Namespace) -> str:
    """MODEL as NAME/VERSION or NAME@ALIAS; the old spellings `NAME --version V` and `NAME --from ALIAS` too."""
    if args.renamed_version is not None or args.renamed_from is not None:
        if "@" in args.model or "/" in args.model:
            raise MlopsError(f"promote {args.model}: the model reference already says which version; drop "
                             "--version/--from")
        if args.renamed_version is not None and args.renamed_from is not None:
            raise MlopsError("give one of --version V or --from ALIAS (better: MODEL as NAME/VERSION or NAME@ALIAS)")
        return (f"{args.model}/{args.renamed_version}" if args.renamed_version is not None
                else f"{args.model}@{args.renamed_from}")
    return args.model


def cmd_promote(args: argparse.Namespace) -> int:
    ref = ModelRef.parse(_promoted_ref(args))
    if ref.kind == "directory":
        raise MlopsError(f"promote {ref.text}: a bundle directory is not registered; promote NAME/VERSION or "
                         "NAME@ALIAS")
    entry = promote(ref, reason=args.reason)
    print(f"promoted {ref.name}: champion {history_line(entry)}")
    _after_move(args, ref.name, entry)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    entry = rollback(args.model, reason=args.reason)
    print(f"rolled back {args.model}: champion {history_line(entry)}")
    _after_move(args, args.model, entry)
    return 0
