"""`mlops` subcommands of the deploy phase: deploy, rollout, promote, rollback. Importing this module must stay
light (argparse only): heavy libraries are imported inside the command functions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EXIT_ROLLBACK = 1  # the canary failed a check: traffic is back on the stable model
EXIT_HOLD = 75  # EX_TEMPFAIL: not enough traffic to judge a step; run again later (with --from PERCENT)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this phase's subcommands on the `mlops` parser."""
    p = sub.add_parser("deploy", help="render the recipe's deployment: KServe InferenceService, serving image, "
                                      "prefect.yaml, alert rules")
    p.add_argument("recipe", help="a recipe YAML file, e.g. recipes/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides: key=value, e.g. deploy=standard")
    p.add_argument("--model", help="NAME@ALIAS, NAME/VERSION or a bundle directory (default: the recipe "
                                   "model's champion)")
    p.add_argument("--out", type=Path, help="output directory (default .mlops/deploy/<model>/v<version>)")
    p.add_argument("--crd", type=Path, help="the InferenceService CRD YAML of your cluster's KServe, to validate "
                                            "against (default $MLOPS_KSERVE_CRD; without it only KServe's rules)")
    p.add_argument("--target", action="append", choices=("kserve", "container", "prefect", "alerts"),
                   help="render only this target (repeatable; default: the recipe's deploy.targets)")
    p.add_argument("--prefect", action="store_true", help="also register the flows' deployments with the Prefect "
                                                          "server at PREFECT_API_URL (creates the work pool)")
    p.add_argument("--project-dir", type=Path, help="where deployed flows run (default: the current directory)")
    p.add_argument("--apply", action="store_true", help="kubectl apply the InferenceService (needs a cluster)")
    p.add_argument("--json", action="store_true", help="last line of stdout: what was written, as JSON")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("rollout", help="progressive rollout of a model: canary steps checked on live metrics; "
                                       "advance, hold or roll back")
    p.add_argument("recipe", help="the recipe whose deploy.rollout steps and checks apply")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. deploy.rollout.window_s=60")
    p.add_argument("--to", required=True, metavar="MODEL", help="the canary: NAME@ALIAS or NAME/VERSION, e.g. "
                                                                 "quickstart@challenger")
    p.add_argument("--stable", metavar="MODEL", help="the model it replaces (default NAME@champion)")
    p.add_argument("--metrics-url", help="the canary's Prometheus /metrics (a `mlops serve`)")
    p.add_argument("--log", help="a prediction log of `mlops serve` to read (p99, shadow disagreement)")
    p.add_argument("--canary-variant", default="challenger",
                   help="whose requests are the canary's: 'challenger' (mlops serve --ab, default) or 'any' (a "
                        "server that is the canary alone)")
    p.add_argument("--apply", action="store_true", help="kubectl apply each step's manifest (needs a cluster)")
    p.add_argument("--local-port", type=int, metavar="PORT",
                   help="move traffic locally: run `mlops serve STABLE --ab CANARY:PERCENT` on PORT, restarted at "
                        "each step, and read its /metrics")
    p.add_argument("--live-url", metavar="URL",
                   help="move traffic on the live server at URL (`mlops serve NAME@champion --ab NAME@challenger:0`): "
                        "each step sets the challenger's share there, no restart; its /metrics is read")
    p.add_argument("--from", dest="start_percent", type=int, metavar="PERCENT",
                   help="resume at this step (after a hold)")
    p.add_argument("--no-promote", action="store_true", help="do not move champion when every step passed")
    p.add_argument("--reason", default="", help="recorded in the champion history on promotion")
    p.add_argument("--out", type=Path, help="where each step's manifest is written")
    p.add_argument("--crd", type=Path, help="validate every manifest against this InferenceService CRD")
    p.add_argument("--json", action="store_true", help="last line of stdout: the rollout result as JSON")
    p.set_defaults(func=cmd_rollout)

    for name, help_text in (("promote", "make a model version the champion (recorded in the registry's history)"),
                            ("rollback", "move champion back to the previous champion on record")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("name", help="the registered model's name, e.g. quickstart")
        if name == "promote":
            which = p.add_mutually_exclusive_group(required=True)
            # dest differs from `mlops --version`, which would otherwise print the package version
            which.add_argument("--version", dest="model_version", metavar="V", help="the version to promote")
            which.add_argument("--from", dest="source", metavar="ALIAS",
                               help="promote the version this alias points at, e.g. challenger")
        p.add_argument("--reason", default="", help="why (recorded with who and when)")
        p.add_argument("--recipe", help="render the new champion's InferenceService from this recipe (default: "
                                        "the recipe that registered it, if it is still there)")
        p.add_argument("--out", type=Path, help="where to write the manifest")
        p.add_argument("--crd", type=Path, help="validate the manifest against this InferenceService CRD")
        p.add_argument("--apply", action="store_true", help="kubectl apply the manifest (needs a cluster)")
        p.add_argument("--live-url", metavar="URL", help="a running `mlops serve NAME@champion`: make it swap the "
                                                         "new champion in now (it would within its reload interval)")
        p.add_argument("--json", action="store_true", help="last line of stdout: what was done, as JSON")
        p.set_defaults(func=cmd_promote if name == "promote" else cmd_rollback)


def cmd_deploy(args: argparse.Namespace) -> int:
    from mlops.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides, check_data=False)
    from mlops.deploy.generate import deploy_recipe

    result = deploy_recipe(loaded, args.model, out=args.out, crd=args.crd, targets=args.target,
                           project_dir=args.project_dir, register_prefect=args.prefect, apply=args.apply)
    print(f"deploy: recipe '{result['recipe']}'" + (f", model {result['model']}" if result["model"] else "")
          + f" -> {result['out']}")
    for what, path in result["files"].items():
        check = result["checks"].get(what)
        print(f"  {what:<18} {path}" + (f"  ({check})" if check else ""))
    for name in result.get("registered", []):
        print(f"  registered         Prefect deployment {name}")
    if result.get("applied"):
        print(f"  applied            {result['applied']}")
    for line in result["next"]:
        print(f"  next: {line}")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from mlops.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides, check_data=False)
    from mlops.deploy.rollout import rollout

    result = rollout(loaded, args.to, stable=args.stable, metrics_url=args.metrics_url, log=args.log,
                     canary_variant=args.canary_variant, kubectl=args.apply, local_port=args.local_port,
                     live_url=args.live_url, out=args.out, crd=args.crd, start_percent=args.start_percent,
                     promote=False if args.no_promote else None, reason=args.reason,
                     report=lambda line: print(f"rollout: {line}", flush=True))
    print(f"rollout of {result.canary} next to {result.stable}: {result.decision.upper()} {result.reason}")
    if result.promoted and result.promotion:
        print(f"  champion: {_history_line(result.promotion)}")
    if args.json:
        print(json.dumps(result.to_dict()))
    return {"advance": 0, "rollback": EXIT_ROLLBACK, "hold": EXIT_HOLD}[result.decision]


def _history_line(entry: dict[str, Any]) -> str:
    return (f"version {entry['previous'] or '-'} -> {entry['version']} ({entry['action']} #{entry['seq']} by "
            f"{entry['by']} at {entry['at']}: {entry['reason']})")


def _after_move(args: argparse.Namespace, entry: dict[str, Any]) -> dict[str, Any]:
    from mlops.deploy.promotion import render_for

    if args.live_url:
        from mlops.deploy.local import LiveServe

        changes = LiveServe(args.live_url, args.name).reload()
        print(f"  live     {args.live_url}: " + ("; ".join(f"{c['variant']} {c.get('from')} -> {c.get('to')}"
                                                       for c in changes) or "already serving it"))
    rendered = render_for(args.recipe, args.name, entry["version"], args.out, args.crd, args.apply)
    out = {"model": args.name, "champion": entry["version"], "previous": entry["previous"], "history": entry,
           "manifest": rendered["files"].get("inferenceservice") if rendered else None}
    if rendered:
        print(f"  manifest {out['manifest']}" + ("  (applied)" if rendered.get("applied") else
                                                f"  (apply: kubectl apply -f {out['manifest']})"))
    else:
        print("  no manifest rendered: the recipe that registered it is not at hand (pass --recipe)")
    if args.json:
        print(json.dumps(out))
    return out


def cmd_promote(args: argparse.Namespace) -> int:
    from mlops.deploy.promotion import promote

    entry = promote(args.name, version=args.model_version, source=args.source, reason=args.reason)
    print(f"promoted {args.name}: champion {_history_line(entry)}")
    _after_move(args, entry)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from mlops.deploy.promotion import rollback

    entry = rollback(args.name, reason=args.reason)
    print(f"rolled back {args.name}: champion {_history_line(entry)}")
    _after_move(args, entry)
    return 0
