"""The `mlops` command. Thin: parse, call one function, print.

Heavy libraries (torch, lightning, mlflow, prefect) are imported inside the commands that need them,
so `mlops --help`, `validate` and `plan` answer in well under a second or two.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

from mlops.core.errors import MlopsError

EPILOG = """examples:
  mlops validate recipes/quickstart.yaml
  mlops plan recipes/quickstart.yaml
  mlops run recipes/quickstart.yaml trainer.max_epochs=3 model.hidden=[64,32]
  mlops run -m recipes/quickstart.yaml model.lr=1e-3,1e-2
  mlops run --json recipes/quickstart.yaml
  mlops sweep recipes/quickstart_sweep.yaml
"""


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe YAML file, e.g. recipes/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides: key=value, group=option, +new=value")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops", description="Take a model from a YAML recipe to a registered, servable ONNX bundle.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check a recipe: types, keys, files, columns (errors at file:line)")
    _recipe_args(p)
    p.add_argument("--json", action="store_true", help="print the resolved recipe as JSON")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="show the steps a run would take and which cached results it reuses")
    _recipe_args(p)
    p.add_argument("--json", action="store_true", help="last line of stdout: the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run a recipe as a Prefect flow: train, evaluate, export ONNX, register")
    p.add_argument("-m", "--multirun", action="store_true", help="Hydra multirun: a=1,2 b=x,y runs every combination")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object summarising the run")
    p.add_argument("--allow-failed-gates", action="store_true",
                   help="register a model that failed its gates WITH aliases (loudly tagged gates=allowed)")
    _recipe_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("evaluate", help="evaluate a registered model (or bundle) on a recipe's data, apply its gates")
    p.add_argument("--model", required=True, help="NAME@ALIAS, NAME/VERSION or a bundle directory")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object with metrics and gates")
    p.add_argument("--allow-failed-gates", action="store_true", help="exit 0 even when a gate fails (says so)")
    _recipe_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="run the recipe's Optuna sweep (resumable); register the best as challenger")
    p.add_argument("--worker", action="store_true",
                   help="join the study from another process or machine (shared RDB storage); no registration")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object summarising the sweep")
    p.add_argument("--allow-failed-gates", action="store_true",
                   help="register the best model WITH aliases even if it fails its gates (says so loudly)")
    _recipe_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("runs", help="a table of tracked runs: metrics, params that differ, data, duration")
    p.add_argument("recipe", nargs="?", help="only this recipe's experiment")
    p.add_argument("--experiment", help="an experiment name (instead of a recipe)")
    p.add_argument("--metric", action="append", default=[], help="a metric column (repeatable)")
    p.add_argument("--sort", help="sort by this metric, highest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="last line of stdout: the runs as a JSON list")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("diff", help="every difference between two runs: config, data, packages, seeds, metrics")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("reproduce", help="re-run a run from its recipe.lock and compare metrics and ONNX bytes")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("serve", help="serve a model over KServe's V1/V2 protocols (ONNX Runtime, no torch)")
    p.add_argument("model", help="NAME@ALIAS, NAME/VERSION (MLflow registry) or a bundle directory")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--log", help="prediction log (SQLite); default .mlops/predictions/<model>.sqlite")
    p.add_argument("--max-batch", type=int, default=1024, help="most rows one request may carry")
    p.add_argument("--shadow", metavar="MODEL",
                   help="also run this model on every answered request, after the response; logged as variant "
                        "'shadow', never returned")
    p.add_argument("--ab", metavar="MODEL:PERCENT",
                   help="A/B test: this model answers PERCENT%% of request keys (variant 'challenger'), "
                        "e.g. quickstart@challenger:10")
    p.add_argument("--ab-key-header", default="X-Request-Key",
                   help="request header whose value picks the A/B arm (default X-Request-Key; "
                        "without it the body's id, else random)")
    p.add_argument("--reload-interval", type=float, default=None, metavar="S",
                   help="for NAME@ALIAS references: re-resolve the aliases every S seconds and swap a moved one in "
                        "without a restart (default 10; 0: only on POST /v2/repository/models/NAME/load)")
    p.add_argument("--runtime", choices=("mlops", "kserve"), default="mlops",
                   help="mlops: the lean ASGI app with prediction log, shadow, A/B and batching (default); kserve: "
                        "the stock kserve.ModelServer over the same model (inference only: no log, no routing)")
    p.add_argument("--batch-max", type=int, default=None, metavar="N",
                   help="adaptive batching: concurrent small requests share one model call of up to N rows "
                        "(default off; 1 is off)")
    p.add_argument("--batch-wait-ms", type=float, default=None, metavar="W",
                   help="with --batch-max: the longest a request waits for others to join its batch (default "
                        "2 ms); a request that arrives alone is sent at once")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("feedback", help="record ground truth by prediction id in a prediction log (CSV or JSONL)")
    p.add_argument("file", help="CSV with columns id and label (or value, for regression), or JSONL of "
                                '{"id": ..., "label": ...} objects')
    p.add_argument("--log", help="the prediction log (SQLite) that `mlops serve` wrote")
    p.add_argument("--model", help="NAME (or NAME@ALIAS, or a bundle dir): use its default log "
                                   ".mlops/predictions/<NAME>.sqlite")
    p.add_argument("--json", action="store_true", help="last line of stdout: the counts as JSON")
    p.set_defaults(func=cmd_feedback)

    # each later phase registers its own commands (light modules: argparse only at import)
    for phase in ("mlops.deploy.commands", "mlops.score.commands", "mlops.monitor.commands",
                  "mlops.improve.commands"):
        importlib.import_module(phase).add_commands(sub)

    p = sub.add_parser("schema", help="print the recipe JSON Schema (for editors)")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from mlops.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides)
    if args.json:
        print(json.dumps(loaded.resolved()))
    else:
        r = loaded.recipe
        print(f"ok: {args.recipe} is a valid recipe '{r.name}' (model '{r.model_name}', recipe hash {loaded.hash[:12]})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from mlops.engine.plan import compile_plan, render
    from mlops.recipe import load_recipe

    plan = compile_plan(load_recipe(args.recipe, args.overrides))
    print(render(plan), end="")
    if args.json:
        hits = plan.hits()
        steps = [{"name": s.name, "inputs": list(s.inputs), "key": s.key, "cached": hits[s.name]} for s in plan.steps]
        print(json.dumps({"recipe": plan.loaded.recipe.name, "recipe_hash": plan.loaded.hash, "steps": steps}))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from mlops.engine.multirun import expand
    from mlops.recipe import load_recipe

    jobs = expand(args.overrides) if args.multirun else [args.overrides]
    for job in jobs:  # fail fast, before any server starts or anything is written
        load_recipe(args.recipe, job)
    from mlops.engine import runner

    if args.multirun:
        result = runner.multirun(args.recipe, jobs, allow_failed_gates=args.allow_failed_gates)
        for summary in result["jobs"]:
            _print_summary(summary, brief=True)
    else:
        result = runner.run(args.recipe, jobs[0], allow_failed_gates=args.allow_failed_gates)
        _print_summary(result, brief=False)
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mlops.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides)
    from mlops.engine.evaluate_model import evaluate_model

    result = evaluate_model(loaded, args.model, args.allow_failed_gates)
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]evaluated {result['model']}[/bold] (run {result['run_id']})  "
                  + "  ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items() if _headline(k)))
    console.print(f"  gates      {result['gates']['outcome']}")
    console.print(f"  report     {result['report']}")
    if args.json:
        print(json.dumps(result, default=str))
    if result["gates"]["outcome"] == "failed":
        from mlops.core.errors import GateError

        raise GateError("\n".join([f"{result['model']} FAILED its gates:",
                                    *(f"  {line}" for line in result["gates"]["failures"])]))
    return 0


HEADLINE = ("accuracy", "auroc", "f1", "f1_macro", "rmse", "mae", "r2")


def _headline(metric: str) -> bool:
    split, _, name = metric.partition("/")
    return split == "test" and name in HEADLINE


def cmd_sweep(args: argparse.Namespace) -> int:
    from mlops.recipe import load_recipe
    from mlops.sweep.study import sweep_config

    sweep_config(load_recipe(args.recipe, args.overrides))  # a recipe without a sweep fails before anything starts
    from mlops.engine.sweep import sweep

    result = sweep(args.recipe, args.overrides, worker=args.worker, allow_failed_gates=args.allow_failed_gates)
    t = result["trials"]
    print(f"study {result['study_name']}: {t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed "
          f"(storage {result['storage']})")
    if "best" in result:
        print(f"best trial {result['best']['number']}: {result['best']['value']:.5f}  {' '.join(result['best']['overrides'])}")
        _print_summary(result, brief=False)
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.runtime == "kserve":
        from mlops.serve.run import serve_with_kserve

        serve_with_kserve(args)
        return 0
    from mlops.serve.run import serve

    serve(args.model, args.host, args.port, args.log, args.max_batch, shadow=args.shadow, ab=args.ab,
          ab_key_header=args.ab_key_header, batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms,
          reload_interval=args.reload_interval)
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from mlops.core.predlog import read_feedback_file, record_feedback
    from mlops.serve.run import feedback_log_path

    log_path = feedback_log_path(args.model, args.log)
    result = record_feedback(log_path, read_feedback_file(args.file))
    print(f"feedback from {args.file}: {result['matched']} of {result['rows']} ids matched a prediction and were "
          f"recorded, {result['unknown']} unknown (log {result['log']})")
    if result["unknown"]:
        print(f"  unknown ids, e.g. {', '.join(result['unknown_ids'])}")
    if args.json:
        print(json.dumps(result))
    if not result["matched"]:
        raise MlopsError(f"none of the {result['rows']} ids in {args.file} has a prediction in {log_path}: "
                         "is it the right log?")
    return 0


def _client(recipe: str | None = None) -> Any:
    from mlops.core.registry import registry_client, tracking_uri

    loaded = None
    if recipe:
        from mlops.recipe import load_recipe

        loaded = load_recipe(recipe, check_data=False)
    return registry_client(tracking_uri(loaded.recipe.tracking.uri if loaded else None)), loaded


def cmd_runs(args: argparse.Namespace) -> int:
    from mlops.tracking.compare import default_metrics, list_runs, render_runs

    client, loaded = _client(args.recipe)
    experiment = args.experiment or (loaded.recipe.experiment if loaded else None)
    rows = list_runs(client, experiment, args.metric, args.sort, args.limit)
    metrics = args.metric or default_metrics(rows)
    print(render_runs(rows, metrics), end="")
    if args.json:
        print(json.dumps(rows, default=str))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from mlops.tracking.compare import diff_runs, render_diff

    client, _ = _client()
    rows = diff_runs(client, args.run_a, args.run_b)
    print(render_diff(rows, args.run_a, args.run_b), end="")
    if args.json:
        print(json.dumps(rows, default=str))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mlops.tracking.reproduce import reproduce

    client, _ = _client()
    result = reproduce(client, args.run_id)
    if result["match"]:
        print(f"reproduced run {args.run_id} exactly: same metrics, same per-epoch history, byte-identical ONNX "
              f"(sha256 {result['onnx_sha256'][:16]}); reproduction run {result['reproduction_run_id']}")
    else:
        print(f"run {args.run_id} did NOT reproduce ({len(result['mismatches'])} differences):")
        for m in result["mismatches"]:
            print(f"  {m['field']}: original {m['original']!r}, now {m['now']!r}")
    if args.json:
        print(json.dumps(result, default=str))
    return 0 if result["match"] else 1


def _print_summary(s: dict[str, Any], brief: bool) -> None:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    shown = {k: v for k, v in s["metrics"].items() if _headline(k)}
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
    model = f"{s['model_name']}/{s['model_version']}" if s["model_version"] else f"{s['model_name']} (not registered)"
    console.print(f"[bold]run {s['run_id']}[/bold] {' '.join(s['overrides'])}  model {model} "
                  f"aliases {','.join(s['aliases']) or '-'}  {metrics}")
    if brief:
        return
    uri = s["tracking_uri"]
    console.print(f"  bundle     {s['bundle']}")
    console.print(f"  data       {s['data_fingerprint']}")
    console.print(f"  run dir    {s['run_dir']}")
    console.print(f"  steps      {', '.join(f'{k}:{v}' for k, v in s['cache'].items())}")
    gates = s["gates"]
    console.print(f"  gates      {gates['outcome']} ({len(gates['verdicts'])} gates"
                  + (f", vs champion {gates['champion']}" if gates["champion"] else "") + ")")
    console.print(f"  report     {gates['report']}")
    console.print(f"  look next  mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else f"  look next  {uri}")
    if s["model_version"]:
        alias = "champion" if "champion" in s["aliases"] else "challenger"
        console.print(f"  serve it   mlops serve {s['model_name']}@{alias}   (or the bundle dir above)")


def cmd_schema(args: argparse.Namespace) -> int:
    from mlops.recipe.schema import json_schema

    text = json.dumps(json_schema(), indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after an option (`RECIPE --model X a=1`) are still overrides
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.version:
        import mlops

        print(mlops.__version__)
        return 0
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return func(args)
    except MlopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
