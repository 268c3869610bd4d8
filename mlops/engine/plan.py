"""Compile a recipe into a plan: a chain of steps, each with its inputs and a cache key.

A step's key hashes the config it reads, its inputs' keys (so a change upstream invalidates
everything downstream) and its code version: the source of every mlops module its step module imports,
directly or not, of the user's modules the recipe names as `_target_`s, and the versions of the libraries
they import (see `mlops.engine.codeversion`). The first step's key includes the data's content
fingerprint. Nothing here imports torch, lightning, mlflow or prefect: the code is read, not imported.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlops
from mlops.core.errors import MlopsError
from mlops.core.installed import remembered_versions
from mlops.core.workspace import workspace
from mlops.data.fingerprint import builtin_source_key, file_source_fingerprint, fingerprint_bytes
from mlops.engine.cache import Cache
from mlops.engine.codeversion import Snapshot, libraries, remembered_parses
from mlops.engine.results import R, StepOutput, result_type
from mlops.recipe import LoadedRecipe

if TYPE_CHECKING:  # what a plan runs; importing the steps here would make `mlops plan` load them
    from collections.abc import Callable

    from mlops.engine.steps.common import RunContext

PACKAGE = Path(mlops.__file__).parent  # where the closure of mlops modules is read from (tests point it at a copy)
STEP_PACKAGE = "mlops.engine.steps"  # step `name` is the function `name` of module `mlops.engine.steps.<name>`

# the server the load test runs as `python -m mlops.cli serve` (mlops.evaluate.loadtest.SERVER_MODULE): a process
# of its own that no step imports, so its code joins the assess step's version as a target does
LOAD_TEST_SERVER = "mlops.cli.serve.cmd_serve"


@dataclass(frozen=True)
class Step:
    name: str
    description: str
    inputs: tuple[str, ...]
    config: dict[str, Any]
    targets: tuple[str, ...] = ()  # the recipe's `_target_`s this step runs: their code versions it too
    cached: bool = True  # register always runs, idempotently
    # its result depends on the registry's champion (gate): the engine joins the champion it finds when the
    # step is about to run to the key (`Plan.keyed_on`), so a rerun reuses it only against the same champion
    champion: bool = False
    code: str = ""  # the code version: the step module's import closure, its targets' code, library versions
    key: str = ""


@dataclass
class Plan:
    loaded: LoadedRecipe
    steps: list[Step]
    data_fingerprint: str | None
    cache: Cache = field(repr=False, default_factory=Cache)

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def keyed_on(self, name: str, runtime: str) -> Step:
        """Step `name` with `runtime` (what it depends on beyond its inputs, found only as it runs) joined to its
        key, in place: the rest of the run (the cache, the task run's state) sees the completed key."""
        step = self.step(name)
        key = hashlib.sha256(f"{step.key}\0{runtime}".encode()).hexdigest()[:16]
        keyed = replace(step, key=key, champion=False)
        self.steps[self.steps.index(step)] = keyed
        return keyed

    def hits(self) -> dict[str, bool]:
        return {s.name: s.cached and self.cache.has(s.name, s.key) for s in self.steps}

    def run(self, ctx: RunContext, name: str, fn: Callable[[RunContext, Path], R],
            kind: type[R] | None = None) -> StepOutput[R]:
        """Step `name`'s result: from the cache when its key is there (parsed into `kind`, by default the model
        `fn` is annotated to return), else computed by `fn` and published whole under the key. A step that is
        never cached (register) writes under the run."""
        step = self.step(name)
        if step.cached:
            if self.cache.has(name, step.key):
                return self.cache.load(name, step.key, kind or result_type(fn))
            return self.cache.compute(name, step.key, lambda out: fn(ctx, out))
        out = workspace().uncached_step_dir(name, ctx.run_id)
        out.mkdir(parents=True, exist_ok=True)
        return StepOutput(fn(ctx, out), out)


def code_version(step: str, targets: tuple[str, ...] = (), snapshot: Snapshot | None = None) -> str:
    """Derived, not listed: every mlops module the step's own module reaches through imports, the code
    behind each `_target_` it runs, and the versions of the libraries all of that imports."""
    snapshot = snapshot or Snapshot()
    roots = {"mlops": (PACKAGE,)}
    module = f"{STEP_PACKAGE}.{step}"
    if snapshot.module(module, roots) is None:
        raise MlopsError(f"step '{step}' has no module {module} under {PACKAGE}")
    own = snapshot.closure([module], roots)
    external = set(own.external)
    code: dict[str, Any] = {"mlops": own.digest(), "targets": {}}
    for target in targets:
        found = snapshot.target(target, PACKAGE)
        # unfindable: the run fails on it anyway, and finding it later must change the key
        code["targets"][target] = found.digest() if found else "not found"
        external |= found.external if found else set()
    code["libraries"] = libraries(external)
    return hashlib.sha256(json.dumps(code, sort_keys=True).encode()).hexdigest()[:16]


def source_fingerprint(loaded: LoadedRecipe) -> str:
    """The data's identity before reading it row by row: a hash of the file's bytes (and of every image file
    its rows name, or of an image folder's files), or the data set's name and its package's version for a
    built-in one."""
    data = loaded.recipe.data
    if data.dataset is not None:
        return builtin_source_key(data.dataset)
    return file_source_fingerprint(data, loaded.path)


def weights_fingerprint(loaded: LoadedRecipe) -> str | None:
    """What training starts from when it fine-tunes: the weights file's bytes, not its name."""
    weights = loaded.recipe.model.weights
    if weights is None:
        return None
    path = Path(weights).expanduser()
    path = path if path.is_absolute() else loaded.path.parent / path
    return fingerprint_bytes(path.read_bytes()) if path.is_file() else f"missing:{path}"


def compile_plan(loaded: LoadedRecipe, cache: Cache | None = None) -> Plan:
    """The run's steps with their cache keys. Parses and library versions are remembered in the workspace."""
    memo = workspace().cache
    with remembered_versions(memo / "library-versions.json"), remembered_parses(memo / "parsed-modules.json"):
        return _compile(loaded, cache)


def _compile(loaded: LoadedRecipe, cache: Cache | None) -> Plan:
    r = loaded.recipe
    # every step's config is sliced from one dump of the whole recipe: a section's own model_dump builds that
    # section's serializer first (the sections defer their builds), about 10 ms for the plan's dozen; the one
    # aliased key a slice could differ in (`_target_`) is what the model, datamodule and metrics are keyed by
    d = loaded.resolved()
    data, ev_d, monitor = d["data"], d["evaluate"], d["monitor"]
    # the category policies act in preprocess (trim) and in the bundle (unseen): reading the rows ignores both
    data_cfg = {k: v for k, v in data.items() if k not in ("split", "datamodule", "categories")}
    source = source_fingerprint(loaded)
    tracking = {"tracking": d["tracking"], "registry": d["registry"]}
    ev = r.evaluate
    # the user's code each step calls: the model and datamodule shape training; custom metrics are computed by
    # evaluate, on every slice in assess, and on the champion's rows in gate
    trained = (r.model.target, r.data.datamodule.target)
    metrics = tuple(c.target for c in ev.custom_metrics.values())
    server = (LOAD_TEST_SERVER,) if ev.load_test.enabled else ()  # assess runs it; gate's code reaches that code
    text = {k: v for k, v in d["model"]["text"].items() if k in ("tokenizer", "vocab_size", "lowercase", "max_length")}
    specs = [
        Step("load_data", "read the rows and fingerprint their bytes", (), data_cfg | {"source": source}),
        Step("check_data", "check the recipe's data expectations before training", ("load_data",),
             {"expectations": ev_d["expectations"]}),
        Step("split", "deterministic train/val/test split", ("load_data",),
             {"split": data["split"], "seed": r.split_seed, "target": r.data.target, "task": r.data.task}),
        Step("preprocess", "infer the data schema, fit imputation/scaling/one-hot on train; decode images, learn "
             "the tokenizer", ("split",), data_cfg | {"trim": r.data.categories.trim, "text": text}),  # not the encoder
        Step("train", "fit the LightningModule", ("preprocess",),
             {"model": d["model"], "datamodule": data["datamodule"], "trainer": d["trainer"], "seed": r.seed,
              "weights": weights_fingerprint(loaded)}, trained),
        Step("evaluate", "val/test metrics and plots", ("train", "preprocess"),
             {"custom_metrics": ev_d["custom_metrics"]}, metrics),
        Step("export", "ONNX with preprocessing inside, parity check, bundle", ("train", "preprocess", "evaluate"),
             {"export": d["export"], "name": r.model_name, "recipe": loaded.model_hash,
              "payloads": monitor["payloads"], "log_limits": monitor["log_limits"]}),
        Step("assess", "slices, fairness, robustness, inference benchmark of the ONNX model", ("export", "split"),
             {k: v for k, v in ev_d.items() if k not in ("gates", "expectations", "seed")}
             | {"seed": r.eval_seed, "target": r.data.target}, metrics + server),
        Step("gate", "apply the gates (vs champion: paired test), write the evaluation report", ("assess",),
             {"gates": ev_d["gates"]}, metrics + server, champion=True),
        Step("register", "register in MLflow; aliases only if the gates passed", ("export", "gate"), tracking,
             cached=False),
    ]
    keys: dict[str, str] = {}
    steps = []
    snapshot = Snapshot()
    for s in specs:
        code = code_version(s.name, s.targets, snapshot)
        payload = {"step": s.name, "config": s.config, "inputs": [keys[i] for i in s.inputs], "code": code}
        keys[s.name] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
        steps.append(replace(s, code=code, key=keys[s.name]))
    return Plan(loaded=loaded, steps=steps, data_fingerprint=source if r.data.path else None, cache=cache or Cache())


def render(plan: Plan) -> str:
    """The plan as plain aligned columns, one line a step, the description last (it may run long). Plain text,
    not a rich table: importing and laying out rich cost `mlops plan` about 70 ms, a tenth of the command."""
    r = plan.loaded.recipe
    hits = plan.hits()
    rows = [("#", "step", "cache key", "cached result", "inputs", "does")]
    for i, s in enumerate(plan.steps, 1):
        status = ("reused" if hits[s.name] else "always runs (idempotent)" if not s.cached
                  else "reused if the champion is unchanged" if s.champion else "will run")
        rows.append((str(i), s.name, s.key, status, ", ".join(s.inputs) or "-", s.description))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
    lines = [f"plan for recipe '{r.name}' -> model '{r.model_name}'"]
    lines += ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]
    t = r.trainer
    lines.append(f"trainer: {t.accelerator} x {t.devices} devices, strategy {t.strategy}, {t.max_epochs} epochs"
                 + ("  (multi-process: trains in a worker subprocess)" if t.multiprocess else ""))
    lines.append(f"recipe hash {plan.loaded.hash[:16]}; cache at {plan.cache.root}")
    return "\n".join(lines) + "\n"
