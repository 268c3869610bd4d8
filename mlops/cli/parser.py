"""The `mlops` command line: every command, argument and flag, in one place, with one vocabulary.

- What a command acts on is its first argument: a RECIPE (`run`, `deploy`, `monitor`, ...), a MODEL (`serve`,
  `promote`, `rollback`, `errors`, `ab report`) or a FILE (`feedback`).
- `--model MODEL` names the model of a command that acts on a recipe or a file. A MODEL is always a reference:
  `NAME@ALIAS`, `NAME/VERSION` or a bundle directory (commands that act on a registered model's history take
  its `NAME`).
- `--recipe RECIPE` names the recipe of a command that acts on a model.
- `--reason TEXT` says why (recorded); `--output PATH` is where results go; `--json` prints only one JSON
  object on stdout (what a person reads goes to stderr); `--version` is the package's version, nothing else.

Building the parser imports nothing but argparse: each command names its handler as `module:function`, and
`mlops.cli.main` imports that module only when the command runs, so `mlops --help`, `validate` and `plan`
never load the training or serving stack.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

EPILOG = """examples:
  mlops init my_project
  mlops validate recipes/quickstart.yaml
  mlops plan recipes/quickstart.yaml
  mlops run recipes/quickstart.yaml trainer.max_epochs=3 model.hidden=[64,32]
  mlops run -m recipes/quickstart.yaml model.lr=1e-3,1e-2
  mlops run --json recipes/quickstart.yaml
  mlops sweep recipes/quickstart_sweep.yaml
  mlops serve quickstart@champion
"""

BATCH_EPILOG = """examples:
  mlops batch recipes/churn_csv.yaml --input new_customers.csv --output scores.parquet
  mlops batch recipes/churn_csv.yaml --model churn/3 --input new.parquet --output scores.parquet --id-column customer
  mlops batch recipes/churn_csv.yaml --input new.csv --output scores.parquet --engine spark --spark-master local[2]
"""

STREAM_EPILOG = """examples:
  mlops stream recipes/quickstart.yaml --stream requests
  mlops stream recipes/quickstart.yaml --model quickstart/4 --source redis://cache:6379/0 --stream requests \\
      --group scorers --consumer worker-1 --output-stream requests:predictions
"""

RETRAIN_EPILOG = """reasons:
  (none) or auto       retrain if the monitor recorded a drift or accuracy-drop alert no retrain answered yet
  drift[: detail]      the drift trigger (also: mlops.alert.drift); accuracy_drop[: detail]; schedule
  any other text       a manual retrain, with that text as its reason

exit codes: 0 promoted or waiting for approval, 1 skipped, 2 bad input, 3 stopped or rolled back
"""

RUN_EPILOG = """Hydra's flags (they print, nothing runs, nothing heavy is imported):
  mlops run --cfg job recipes/quickstart.yaml model.lr=3e-3    the recipe the job gets, every default filled in
  mlops run --cfg all --resolve recipes/quickstart.yaml        ... and Hydra's own node; interpolations resolved
  mlops run --info recipes/quickstart.yaml                     the config search path and the defaults list
  mlops run -cp recipes -cn quickstart trainer.max_epochs=3    the recipe as Hydra's config path and name
"""

MODEL_REF = "NAME@ALIAS, NAME/VERSION or a bundle directory"

CFG_HANDLER = "mlops.cli.recipe:cmd_cfg"
INFO_HANDLER = "mlops.cli.recipe:cmd_info"
COMPLETION_HANDLER = "mlops.cli.completion:cmd_shell_completion"


class _Instead(argparse.Action):
    """A flag that makes the command do something else (Hydra's `--cfg`, `--info`, `--shell-completion`): it
    stores its value and swaps the command's handler, which `mlops.cli.main` then imports (a light one)."""

    def __init__(self, *args: object, handler: str, **kwargs: object) -> None:
        self.handler = handler
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.handler = self.handler
        if getattr(namespace, "command", None) is None:  # a top-level flag: name it for the trace log
            namespace.command = self.dest.replace("_", "-")


def _hydra_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a Hydra app, spelt as Hydra spells them (see docs/cli.md)."""
    p.add_argument("-c", "--cfg", choices=("job", "hydra", "all"), action=_Instead, handler=CFG_HANDLER,
                   help="print the composed recipe instead of running it: job (what the job gets: every default "
                        "filled in), hydra (the parts of Hydra's own node mlops uses), all (both)")
    p.add_argument("--resolve", action="store_true", help="with --cfg: resolve ${...} interpolations")
    p.add_argument("-p", "--package", help="with --cfg: print only this dotted key, e.g. model or trainer.max_epochs")
    # no `choices`: `--info RECIPE` must parse, so the handler tells a kind from a recipe (cmd_info)
    p.add_argument("-i", "--info", nargs="?", const="all", metavar="{all,config,defaults,searchpath}",
                   action=_Instead, handler=INFO_HANDLER,
                   help="print the config search path and the defaults list (or only one of them, or the config) "
                        "instead of running")
    p.add_argument("-cp", "--config-path", metavar="DIR",
                   help="the recipe's folder (relative to the current directory); with --config-name")
    p.add_argument("-cn", "--config-name", metavar="NAME",
                   help="the recipe's name in --config-path (default .), .yaml optional: -cp recipes -cn quickstart")


@dataclass(frozen=True)
class Renamed:
    """A flag spelt differently before this release: still accepted, with a warning, for one release."""

    old: str  # e.g. --to
    new: str  # e.g. --model
    dest: str  # where argparse keeps the old spelling's value


def _renamed(p: argparse.ArgumentParser, old: str, new: str, **kwargs: object) -> None:
    dest = "renamed_" + old.lstrip("-").replace("-", "_")
    p.add_argument(old, dest=dest, help=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]
    renamed: list[Renamed] = p.get_default("renamed") or []
    p.set_defaults(renamed=[*renamed, Renamed(old, new, dest)])


def _command(sub: argparse._SubParsersAction, name: str, handler: str, help_text: str,
             epilog: str | None = None) -> argparse.ArgumentParser:
    kwargs: dict[str, object] = {"help": help_text}
    if epilog:
        kwargs |= {"epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}
    p: argparse.ArgumentParser = sub.add_parser(name, **kwargs)  # type: ignore[arg-type]
    p.set_defaults(handler=handler, renamed=[])
    return p


def _recipe(p: argparse.ArgumentParser, help_text: str = "a recipe YAML file, e.g. recipes/quickstart.yaml",
            overrides: str = "Hydra overrides: key=value, group=option, +new=value") -> None:
    p.add_argument("recipe", help=help_text)
    p.add_argument("overrides", nargs="*", help=overrides)


def _model(p: argparse.ArgumentParser, default: str = "the recipe model's champion") -> None:
    p.add_argument("--model", metavar="MODEL", help=f"{MODEL_REF} (default: {default})")


def _json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print only {what} as one JSON object on stdout "
                                                       "(the human-readable report goes to stderr)")


def _output(p: argparse.ArgumentParser, help_text: str, old: bool = True, **kwargs: object) -> None:
    p.add_argument("-o", "--output", help=help_text, **kwargs)  # type: ignore[arg-type]
    if old:
        _renamed(p, "--out", "--output", **kwargs)


def _feedback_log(p: argparse.ArgumentParser) -> None:
    """Where feedback is recorded (`mlops feedback`, `mlops label import`): the log a server wrote."""
    p.add_argument("--log", help="the prediction log that `mlops serve` wrote: a SQLite PATH, postgresql://... or "
                   "redis://... (appended to the stream unchecked)")
    p.add_argument("--model", metavar="MODEL", help=f"{MODEL_REF}, or a NAME: use its default log "
                                                    ".mlops/predictions/<NAME>.sqlite")
    _json(p, "the counts")


def _reason(p: argparse.ArgumentParser, help_text: str, default: str = "") -> None:
    p.add_argument("--reason", default=default, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops", description="Take a model from a YAML recipe to a registered, servable ONNX bundle, and keep "
                                  "it improving in production.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version of mlops and exit")
    parser.add_argument("-sc", "--shell-completion", metavar="install=bash", action=_Instead,
                        handler=COMPLETION_HANDLER,
                        help="shell completion as Hydra spells it: `eval \"$(mlops -sc install=bash)\"` "
                             "(also uninstall=bash; see docs/cli.md)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = _command(sub, "init", "mlops.cli.init:cmd_init",
                 "start a project: a recipe, its own configs/ and a .gitignore (never overwrites a file)")
    p.add_argument("directory", metavar="DIR", help="the project's folder (created when missing)")
    _recipe_commands(sub)
    _tracking_commands(sub)
    _serve_commands(sub)
    _deploy_commands(sub)
    _score_commands(sub)
    _monitor_commands(sub)
    _improve_commands(sub)
    _server_commands(sub)
    _collect_commands(sub)
    p = _command(sub, "schema", "mlops.cli.recipe:cmd_schema", "print the recipe JSON Schema (for editors)")
    _output(p, "write to this file instead of stdout")
    return parser


def _recipe_commands(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "validate", "mlops.cli.recipe:cmd_validate",
                 "check a recipe: types, keys, files, columns (errors at file:line)")
    _recipe(p)
    _json(p, "the resolved recipe")

    p = _command(sub, "plan", "mlops.cli.plan:cmd_plan",
                 "show the steps a run would take and which cached results it reuses")
    _recipe(p)
    _json(p, "the plan")

    p = _command(sub, "run", "mlops.cli.run:cmd_run",
                 "run a recipe as a Prefect flow: train, evaluate, export ONNX, register", RUN_EPILOG)
    p.add_argument("-m", "--multirun", action="store_true", help="Hydra multirun: a=1,2 b=x,y runs every combination")
    _json(p, "the run's summary")
    p.add_argument("--allow-failed-gates", action="store_true",
                   help="register a model that failed its gates WITH aliases (loudly tagged gates=allowed)")
    _hydra_flags(p)
    p.add_argument("recipe", nargs="?", help="a recipe YAML file, e.g. recipes/quickstart.yaml (or give it with "
                                             "--config-path/--config-name)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides: key=value, group=option, +new=value")

    p = _command(sub, "evaluate", "mlops.cli.run:cmd_evaluate",
                 "evaluate a registered model (or bundle) on a recipe's data, apply its gates")
    p.add_argument("--model", metavar="MODEL", required=True, help=MODEL_REF)
    _json(p, "the metrics and gates")
    p.add_argument("--allow-failed-gates", action="store_true", help="exit 0 even when a gate fails (says so)")
    _recipe(p)

    p = _command(sub, "sweep", "mlops.cli.sweep:cmd_sweep",
                 "run the recipe's Optuna sweep (resumable); register the best as challenger")
    p.add_argument("--worker", action="store_true",
                   help="join the study from another process or machine (shared RDB storage); no registration")
    _json(p, "the sweep's summary")
    p.add_argument("--allow-failed-gates", action="store_true",
                   help="register the best model WITH aliases even if it fails its gates (says so loudly)")
    _recipe(p)


def _tracking_commands(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "runs", "mlops.cli.tracking:cmd_runs",
                 "a table of tracked runs: metrics, params that differ, data, duration")
    p.add_argument("recipe", nargs="?", help="only this recipe's experiment")
    p.add_argument("--experiment", help="an experiment name (instead of a recipe)")
    p.add_argument("--metric", action="append", default=[], help="a metric column (repeatable)")
    p.add_argument("--sort", help="sort by this metric, highest first")
    p.add_argument("--limit", type=int, default=50)
    _json(p, "the runs (a list)")

    p = _command(sub, "diff", "mlops.cli.tracking:cmd_diff",
                 "every difference between two runs: config, data, packages, seeds, metrics")
    p.add_argument("run_a")
    p.add_argument("run_b")
    _json(p, "the differences")

    p = _command(sub, "reproduce", "mlops.cli.tracking:cmd_reproduce",
                 "re-run a run from its recipe.lock and compare metrics and ONNX bytes")
    p.add_argument("run_id")
    p.add_argument("--env", metavar="DIR", help="first rebuild the run's environment (its pip freeze) as the new "
                   "virtual environment DIR, and reproduce there")
    _json(p, "the comparison")


def _serve_commands(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "serve", "mlops.cli.serve:cmd_serve",
                 "serve a model over KServe's V1/V2 protocols (ONNX Runtime, no torch)")
    p.add_argument("model", metavar="MODEL", help=MODEL_REF)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--log", help="prediction log: a SQLite PATH (default .mlops/predictions/<model>.sqlite), "
                   "postgresql://USER@HOST/DATABASE (shared by replicas), or redis://HOST:PORT/DB[?stream=NAME] (a "
                   "stream that `mlops collect` lands in a store)")
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
    p.add_argument("--body-timeout", type=float, default=None, metavar="S",
                   help="a request body must arrive in full within S seconds, else the answer is a 408 "
                        "(default 30)")
    p.add_argument("--grpc-port", type=int, default=None, metavar="PORT",
                   help="also serve the V2 gRPC protocol (KServe's GRPCInferenceService, as tritonclient.grpc "
                        "calls it) on PORT, beside HTTP, with the same log, metrics, shadow and A/B (default off)")

    p = _command(sub, "feedback", "mlops.cli.serve:cmd_feedback",
                 "record ground truth by prediction id in a prediction log (CSV or JSONL)")
    p.add_argument("file", help="CSV with columns id and label (or value, for regression), or JSONL of "
                                '{"id": ..., "label": ...} objects')
    _feedback_log(p)

    p = _command(sub, "loadtest", "mlops.cli.loadtest:cmd_loadtest",
                 "load-test a model in the real serving process (or a live server) with Locust: rps, p50/p95/p99, "
                 "error rate, peak memory")
    p.add_argument("model", metavar="MODEL", help=f"{MODEL_REF}: served here on 127.0.0.1 for the test (with --url: "
                                                  "the model the live server serves, for its inputs and name)")
    p.add_argument("--url", help="drive the running `mlops serve` at URL instead (nothing started; its peak memory "
                                 "is not measured)")
    p.add_argument("--data", metavar="FILE", help="CSV or Parquet rows to send, one per request (default: rows drawn "
                                                  "from the training data's schema in the bundle; images and texts "
                                                  "need --data)")
    p.add_argument("--users", type=int, default=8, help="concurrent users (default 8)")
    p.add_argument("--rps", type=float, help="target requests per second across all users (default: as fast as the "
                                             "server answers)")
    p.add_argument("--duration", type=float, default=10.0, metavar="S", help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, metavar="S", help="seconds of load before the measurement, "
                                                                          "not counted (default 2)")
    p.add_argument("--spawn-rate", type=float, metavar="N", help="users started per second (default: all at once)")
    p.add_argument("--rows", type=int, default=200, metavar="N", help="rows the requests cycle through (default 200)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="the longest the server may take to start, and a request to be answered (default 60)")
    p.add_argument("--max-p99-ms", type=float, metavar="MS", help="fail (exit 3) when p99 latency is above MS")
    p.add_argument("--max-error-rate", type=float, metavar="R", help="fail (exit 3) when the error rate is above R")
    p.add_argument("--min-rps", type=float, metavar="N", help="fail (exit 3) when fewer requests per second are "
                                                              "answered")
    _json(p, "the load test's figures")


def _deploy_commands(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "deploy", "mlops.cli.deploy:cmd_deploy", "render the recipe's deployment: KServe "
                 "InferenceService, serving image, prefect.yaml, alert rules")
    _recipe(p, overrides="Hydra overrides: key=value, e.g. deploy=standard")
    _model(p)
    _output(p, "output directory (default .mlops/deploy/<model>/v<version>)", type=Path)
    p.add_argument("--crd", type=Path, help="the InferenceService CRD YAML of your cluster's KServe, to validate "
                                            "against (default $MLOPS_KSERVE_CRD, else the CRD shipped with mlops)")
    p.add_argument("--target", action="append", choices=("kserve", "container", "prefect", "alerts"),
                   help="render only this target (repeatable; default: the recipe's deploy.targets)")
    p.add_argument("--prefect", action="store_true", help="also register the flows' deployments with the Prefect "
                                                          "server at PREFECT_API_URL (creates the work pool)")
    p.add_argument("--project-dir", type=Path, help="the project whose flows are deployed (default: the current "
                                                    "directory); workers run in the same folder of their clone")
    p.add_argument("--git-repo", metavar="URL", help="the git repository Prefect workers clone the project from "
                                                     "(default: the project's remote origin)")
    p.add_argument("--git-ref", metavar="REF", help="the branch or tag workers follow, or a commit to pin (default: "
                                                    "the commit checked out)")
    p.add_argument("--local-checkout", action="store_true", help="run deployed flows in --project-dir on this "
                                                                  "machine instead of a clone (no git needed)")
    p.add_argument("--apply", action="store_true", help="kubectl apply the InferenceService (needs a cluster)")
    _json(p, "what was written")

    p = _command(sub, "rollout", "mlops.cli.deploy:cmd_rollout", "progressive rollout of a model: canary steps "
                 "checked on live metrics; advance, hold or roll back")
    _recipe(p, help_text="the recipe whose deploy.rollout steps and checks apply",
            overrides="Hydra overrides, e.g. deploy.rollout.window_s=60")
    p.add_argument("--model", metavar="MODEL", help="the canary: NAME@ALIAS or NAME/VERSION, e.g. "
                                                    "quickstart@challenger (required)")
    _renamed(p, "--to", "--model", metavar="MODEL")
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
    p.add_argument("--resume-at", type=int, metavar="PERCENT", help="resume at this step (after a hold)")
    _renamed(p, "--from", "--resume-at", type=int, metavar="PERCENT")
    p.add_argument("--no-promote", action="store_true", help="do not move champion when every step passed")
    _reason(p, "recorded in the champion history on promotion")
    _output(p, "where each step's manifest is written", type=Path)
    p.add_argument("--crd", type=Path, help="validate every manifest against this InferenceService CRD")
    _json(p, "the rollout's result")

    for name, help_text, model_help in (
            ("promote", "make a model version the champion (recorded in the registry's history)",
             "the version to promote: NAME/VERSION (e.g. quickstart/3) or NAME@ALIAS (e.g. quickstart@challenger)"),
            ("rollback", "move champion back to the previous champion on record",
             "the registered model's NAME, e.g. quickstart")):
        p = _command(sub, name, f"mlops.cli.deploy:cmd_{name}", help_text)
        p.add_argument("model", metavar="MODEL", help=model_help)
        if name == "promote":
            _renamed(p, "--version", "MODEL as NAME/VERSION", metavar="V")
            _renamed(p, "--from", "MODEL as NAME@ALIAS", metavar="ALIAS")
        _reason(p, "why (recorded with who and when)")
        p.add_argument("--recipe", help="render the new champion's InferenceService from this recipe (default: "
                                        "the recipe that registered it, if it is still there)")
        _output(p, "where to write the manifest", type=Path)
        p.add_argument("--crd", type=Path, help="validate the manifest against this InferenceService CRD")
        p.add_argument("--apply", action="store_true", help="kubectl apply the manifest (needs a cluster)")
        p.add_argument("--live-url", metavar="URL", help="a running `mlops serve NAME@champion`: make it swap the "
                                                         "new champion in now (it would within its reload interval)")
        _json(p, "what was done")


def _score_commands(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "batch", "mlops.cli.score:cmd_batch",
                 "score a CSV/Parquet file with a model: chunked, resumable, bad rows reported", BATCH_EPILOG)
    _recipe(p, help_text="the recipe: its model name is the default model, its data file the default input",
            overrides="Hydra overrides of the recipe: key=value")
    _model(p, "<recipe model>@champion")
    p.add_argument("--input", help="CSV or Parquet file to score (default: the recipe's data file)")
    p.add_argument("--format", choices=("csv", "parquet"), help="input format when its suffix does not say")
    _output(p, "predictions as Parquet: a file (local engine), a dataset directory or URI (spark engine)",
            old=False, required=True)
    p.add_argument("--id-column", help="input column holding each row's id, unique: a file where an id repeats is "
                   "refused (default: <input file name>:<row>)")
    p.add_argument("--chunk-rows", type=int, default=10_000, metavar="N",
                   help="rows per chunk: the unit of scoring, of resuming and of Spark's Arrow batches (default 10000)")
    p.add_argument("--engine", choices=("local", "spark"), default="local",
                   help="local: pandas/pyarrow chunks on this machine, resumable (default); spark: PySpark "
                        "mapInPandas over the same bundle")
    p.add_argument("--spark-master", metavar="URL",
                   help="with --engine spark: e.g. local[2], spark://host:7077 (default: spark-submit's, else local[*])")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="with --engine spark: a Spark setting, e.g. spark.executor.memory=4g (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _json(p, "the summary")

    p = _command(sub, "stream", "mlops.cli.score:cmd_stream",
                 "score a Redis Stream with a consumer group: at-least-once, idempotent by message id", STREAM_EPILOG)
    _recipe(p, help_text="the recipe: its model name is the default model",
            overrides="Hydra overrides of the recipe: key=value")
    _model(p, "<recipe model>@champion")
    p.add_argument("--source", default="redis://127.0.0.1:6379/0", help="Redis URL (default redis://127.0.0.1:6379/0)")
    p.add_argument("--stream", required=True, help="the input stream: one message per row")
    p.add_argument("--group", default="mlops", help="consumer group (created at the start of the stream if absent)")
    p.add_argument("--consumer", help="this consumer's name in the group (default <host>-<pid>); a restart under "
                                      "the same name picks up its own pending messages at once")
    p.add_argument("--output-stream", help="where predictions go (default <stream>:predictions)")
    p.add_argument("--dead-letter", help="where bad messages go, with the error (default <stream>:dead)")
    p.add_argument("--log", help="prediction log: a SQLite PATH or postgresql://USER@HOST/DATABASE (the log the "
                                 "servers share); default the recipe's monitor.log, else "
                                 ".mlops/predictions/<model>.sqlite")
    p.add_argument("--batch", type=int, default=64, metavar="N", help="messages read and scored at once (default 64)")
    p.add_argument("--block-ms", type=int, default=1000, help="how long one read waits for new messages")
    p.add_argument("--claim-idle-ms", type=int, default=60_000,
                   help="take over messages another consumer has held unacknowledged this long (default 60000)")
    p.add_argument("--max-messages", type=int, metavar="N", help="stop after handling N messages")
    p.add_argument("--idle-exit-s", type=float, metavar="S", help="stop after S seconds without a message")
    _json(p, "the counts")


def _monitor_commands(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "monitor", "mlops.cli.monitor:cmd_monitor", "drift, live accuracy, latency and alerts over "
                 "the prediction log (or a backtest of the alert rules)")
    _recipe(p, help_text="a recipe YAML file; its monitor: section sets windows, thresholds and alerts",
            overrides="Hydra overrides, e.g. monitor.window.size=500")
    _model(p, "the recipe's model @champion")
    p.add_argument("--log", help="the prediction log (default: where `mlops serve` writes it, "
                                 ".mlops/predictions/<model>.sqlite)")
    p.add_argument("--since", help="only log rows from this time: ISO 8601 (UTC unless zoned), unix seconds, or a "
                                   "duration ago such as 24h")
    p.add_argument("--until", help="only log rows before this time (same forms as --since)")
    p.add_argument("--backtest", action="store_true",
                   help="replay the log window by window from scratch and report when each rule would have fired; "
                        "records nothing and sends no alert")
    _json(p, "the result")


def _rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local-port", type=int, metavar="PORT", help="canary steps: move traffic on a local "
                   "`mlops serve --ab` on PORT (restarted at each step)")
    p.add_argument("--metrics-url", help="canary steps: read the canary's Prometheus /metrics here")
    p.add_argument("--live-url", metavar="URL", help="shadow and canary on the live server at URL (`mlops serve "
                   "NAME@champion --shadow NAME@challenger --ab NAME@challenger:0`): traffic moved there, no restart")


def _improve_commands(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "retrain", "mlops.cli.improve:cmd_retrain", "refresh data, retrain, gate vs the champion, "
                 "then promote, wait for approval, stop or roll back (a Prefect flow)", RETRAIN_EPILOG)
    _recipe(p, overrides="Hydra overrides, e.g. improve.promotion.policy=auto")
    _reason(p, "why (see below); default: answer the monitor's alerts", default="auto")
    p.add_argument("--force", action="store_true", help="ignore the cooldown and the daily limit (recorded)")
    p.add_argument("--by", help="who asks (recorded; default: the current user for a manual retrain)")
    _rollout_args(p)
    _json(p, "what happened")

    for name, verb in (("approve", "accept"), ("reject", "turn down")):
        p = _command(sub, name, f"mlops.cli.improve:cmd_{name}", f"{verb} a retrained model that waits for a "
                     "person" + (" (it then goes through shadow and canary to champion)" if name == "approve" else ""))
        p.add_argument("run", help="the retrain's MLflow run id (or a unique prefix), as `mlops retrain` printed it")
        p.add_argument("--by", help="who decides (recorded; default: the current user)")
        _reason(p, "why (recorded)")
        _renamed(p, "--note", "--reason")
        p.add_argument("--log", help="the production log, when it is a postgresql://... URL: the audit the retrain "
                       "recorded lives in its database (default: the workspace's audit file)")
        if name == "approve":
            _rollout_args(p)
        _json(p, "what happened")

    ab = sub.add_parser("ab", help="A/B tests read from the prediction log")
    ab_sub = ab.add_subparsers(dest="ab_command", metavar="COMMAND", required=True)
    p = _command(ab_sub, "report", "mlops.cli.readout:cmd_ab_report", "the difference between the champion and "
                 "challenger arms, with its interval, whether the sample is large enough, and a business metric")
    p.add_argument("model", metavar="MODEL", help="the model's NAME (its log is .mlops/predictions/NAME.sqlite "
                                                  "unless --log)")
    p.add_argument("--log", help="the prediction log of `mlops serve --ab`")
    p.add_argument("--recipe", help="take defaults (improve.ab, improve.feedback) from this recipe")
    p.add_argument("--metric", choices=("accuracy", "error_rate", "mae", "mse"), help="default accuracy")
    p.add_argument("--business", metavar="FIELD", help="a feedback field to compare too, e.g. converted")
    p.add_argument("--min-effect", type=float, help="the smallest difference worth detecting (default 0.02)")
    p.add_argument("--alpha", type=float, help="significance level (default 0.05)")
    p.add_argument("--since", help="only predictions since: ISO time, unix seconds, or a duration ago (7d, 12h)")
    _json(p, "the report")

    p = _command(sub, "errors", "mlops.cli.readout:cmd_errors", "error analysis from ground truth: worst slices, "
                 "confident mistakes, clusters of errors (HTML + JSON)")
    p.add_argument("model", metavar="MODEL", help="the model's NAME, or NAME/VERSION for one version only (its log "
                                                  "is .mlops/predictions/NAME.sqlite unless --log)")
    p.add_argument("--log", help="the prediction log")
    p.add_argument("--recipe", help="read improve.feedback (thumbs, outcome) from this recipe")
    p.add_argument("--since", help="only predictions since: ISO time, unix seconds, or a duration ago (7d, 12h)")
    _renamed(p, "--version", "MODEL as NAME/VERSION", metavar="V")
    p.add_argument("--variant", action="append", choices=("champion", "challenger", "shadow"),
                   help="only these variants (repeatable; default champion and challenger: the served answers)")
    p.add_argument("--bins", type=int, default=4, help="quantile bins per numeric column (default 4)")
    p.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    p.add_argument("--min-rows", type=int, default=10, help="smallest slice or cluster shown (default 10)")
    p.add_argument("--tolerance", type=float, help="regression: an error is an absolute error above this "
                                                    "(default: the 90th percentile)")
    _output(p, "output directory (default .mlops/improve/errors/NAME)")
    _json(p, "the analysis")
    _label_commands(sub)


def _label_commands(sub: argparse._SubParsersAction) -> None:
    label = sub.add_parser("label", help="a labelling round trip with Label Studio: the predictions most worth "
                                         "labelling out, the annotations back in as feedback")
    label_sub = label.add_subparsers(dest="label_command", metavar="COMMAND", required=True)
    p = _command(label_sub, "export", "mlops.cli.label:cmd_label_export", "write a Label Studio import file of the "
                 "predictions most worth labelling (lowest confidence, shadow disagreements, drifted windows), the "
                 "model's answer as a pre-annotation, and its labeling config")
    p.add_argument("model", metavar="MODEL", help="the model's NAME, or NAME/VERSION for one version only (its log "
                                                  "is .mlops/predictions/NAME.sqlite unless --log)")
    p.add_argument("--log", help="the prediction log")
    p.add_argument("--recipe", help="read improve.refresh.log from this recipe")
    p.add_argument("--count", type=int, default=50, help="how many tasks (default 50)")
    p.add_argument("--by", metavar="CRITERIA", help="comma-separated, taken in turn: confidence (lowest first), "
                   "disagreement (with the shadow), drift (windows the monitor judged drifted); default all three")
    p.add_argument("--since", help="only predictions since: ISO time, unix seconds, or a duration ago (7d, 12h)")
    p.add_argument("--labels", help="comma-separated classes to choose from (default: every label the model "
                                    "answered in the log)")
    p.add_argument("--include-labelled", action="store_true", help="also propose predictions that have feedback")
    p.add_argument("--config-out", metavar="FILE", help="where the labeling config (XML) goes (default: beside the "
                                                        "tasks, NAME.config.xml)")
    _output(p, "the tasks file (default .mlops/improve/labelling/NAME/tasks.json)", old=False)
    _json(p, "what was written")

    p = _command(label_sub, "import", "mlops.cli.label:cmd_label_import", "record a Label Studio JSON export's "
                 "annotations as feedback by prediction id (as mlops feedback does)")
    p.add_argument("file", help="the project's export from Label Studio (Export -> JSON) of `mlops label export` "
                                "tasks")
    _feedback_log(p)


def _collect_commands(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "collect", "mlops.cli.collect:cmd_collect",
                 "land predictions written elsewhere in a prediction log: a Redis stream that `mlops serve --log "
                 "redis://...` appends to, or KServe's payload logger (--http)")
    p.add_argument("url", nargs="?", metavar="URL",
                   help="the stream: redis://[:PASSWORD@]HOST[:PORT]/DB[?stream=NAME] (default stream "
                        "mlops:predictions)")
    p.add_argument("--log", required=True, metavar="STORE",
                   help="where the rows land: a SQLite PATH or postgresql://USER@HOST/DATABASE")
    p.add_argument("--http", metavar="[HOST:]PORT",
                   help="instead of a stream: receive KServe's payload logger (CloudEvents) on this address "
                        "(host default 127.0.0.1)")
    p.add_argument("--input-names", metavar="NAME,...",
                   help="with --http: the input columns, in order, of list instances and V2 tensors")
    p.add_argument("--once", action="store_true",
                   help="a stream URL only: stop once the backlog is landed (default: run until SIGTERM or Ctrl-C)")
    p.add_argument("--batch", type=int, default=500, metavar="N", help="entries read, landed and acknowledged at "
                                                                       "a time (default 500)")
    p.add_argument("--claim-idle", type=float, default=30.0, metavar="S",
                   help="take over entries another collector left unacknowledged for S seconds (default 30)")
    p.add_argument("--keep", action="store_true",
                   help="leave landed entries in the stream (default: remove those every consumer group has "
                        "acknowledged, every 10 s and at the end)")
    _json(p, "the result")


def _server_commands(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser("server", help="the local Prefect server that runs the flows when PREFECT_API_URL "
                                           "names none (started by the first run, kept for the next)")
    server_sub = server.add_subparsers(dest="server_command", metavar="COMMAND", required=True)
    p = _command(server_sub, "status", "mlops.cli.server:cmd_server_status",
                 "whether it runs: its URL, pid, uptime and log")
    _json(p, "its status")
    p = _command(server_sub, "start", "mlops.cli.server:cmd_server_start",
                 "start it now (a run starts it anyway), or find it running")
    _json(p, "its status")
    p = _command(server_sub, "stop", "mlops.cli.server:cmd_server_stop",
                 "stop it (the next run starts it again), and this user's warm run workers "
                 "(MLOPS_WARM_RUNS=1); its run history stays in PREFECT_HOME")
    p.add_argument("--timeout", type=float, default=20, help="seconds to wait after SIGTERM before SIGKILL")
    _json(p, "what was stopped")
