"""Checks that need more than types but nothing beyond the recipe: classes import, metrics are logged, gates
read metrics that will be computed, swept keys exist. (What the data says is checked by `mlops.data.checks`.)

They run at validate time so a mistake surfaces in a second, not at minute three of a run. None of them
imports torch, lightning, mlflow or prefect: a `_target_` is checked by reading its module's source.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable
from pathlib import Path

from mlops.core.errors import Problem
from mlops.recipe.compose import Composed
from mlops.recipe.metrics import LOAD, available, importance_metrics, is_importance_metric
from mlops.recipe.schema import BUILTIN_DATAMODULE, BUILTIN_MODEL, MULTI_INPUT_MODEL, Recipe
from mlops.recipe.suggest import closest, keys_at, model_at

EPOCH_METRICS = {
    "classification": ("train/loss", "val/loss", "val/accuracy", "val/auroc"),
    "regression": ("train/loss", "val/loss", "val/rmse", "val/mae"),
}


def semantic_problems(recipe: Recipe, composed: Composed, task: str | None = None) -> list[Problem]:
    """`task`: the one the data says, when known (an 'auto' recipe's gates are then checked against it)."""
    problems = _target_problems(recipe, composed)
    problems += _metric_problems(recipe, composed)
    problems += _sweep_param_problems(recipe, composed)
    problems += gate_problems(recipe, task, origin=lambda key: str(composed.origin(key)))
    return problems


def _target_problems(recipe: Recipe, composed: Composed) -> list[Problem]:
    problems = []
    targets = [("model._target_", recipe.model.target, BUILTIN_MODEL),
               ("data.datamodule._target_", recipe.data.datamodule.target, BUILTIN_DATAMODULE)]
    targets += [(f"evaluate.custom_metrics.{n}._target_", c.target, "") for n, c in recipe.evaluate.custom_metrics.items()]
    for key, target, builtin in targets:
        reason = None if target == builtin else importable_class(target)
        if reason:
            problems.append(Problem(key, reason, str(composed.origin(key))))
    media = sorted(name for name, c in recipe.data.columns.items() if c.kind in ("image", "text"))
    if media and recipe.model.target == BUILTIN_MODEL:
        problems.append(Problem("model._target_", f"the built-in MLP takes scalar columns only, and {', '.join(media)} "
                                f"{'is' if len(media) == 1 else 'are'} image or text", str(composed.origin("model")),
                                f"choose the multi-input network: model=cnn, model=text or model=multimodal "
                                f"({MULTI_INPUT_MODEL})"))
    weights = recipe.model.weights
    if weights is not None:
        path = Path(weights).expanduser()
        path = path if path.is_absolute() else composed.path.parent / path
        if not path.is_file():
            problems.append(Problem("model.weights", f"no weights file at {path}", str(composed.origin("model.weights")),
                                    "a local checkpoint or state dict: nothing is ever downloaded"))
    return problems


def importable_class(dotted: str) -> str | None:
    """None if `dotted` names a class or callable that can be imported; else why not. Imports nothing."""
    module_name, _, attr = dotted.rpartition(".")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return f"cannot import '{dotted}': no module named '{module_name}'"
    if spec.origin and spec.origin.endswith(".py"):
        tree = ast.parse(Path(spec.origin).read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        names |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        if attr not in names:
            hint = closest(attr, sorted(names))
            return f"cannot import '{dotted}': module '{module_name}' has no '{attr}'" + (
                f" (did you mean '{hint}'?)" if hint else ""
            )
    return None


def epoch_metrics(recipe: Recipe) -> tuple[str, ...]:
    """The metrics the built-in model logs every epoch for the recipe's task."""
    if recipe.data.task == "auto":
        return tuple(dict.fromkeys(EPOCH_METRICS["classification"] + EPOCH_METRICS["regression"]))
    return EPOCH_METRICS["regression" if recipe.data.task == "regression" else "classification"]


def _metric_problems(recipe: Recipe, composed: Composed) -> list[Problem]:
    valid = epoch_metrics(recipe)
    problems = []
    monitors = [("trainer.checkpoint.monitor", recipe.trainer.checkpoint.monitor)]
    if recipe.trainer.early_stopping is not None:
        monitors.append(("trainer.early_stopping.monitor", recipe.trainer.early_stopping.monitor))
    if recipe.sweep is not None:
        monitors.append(("sweep.metric", recipe.sweep.metric))
    for key, metric in monitors:
        if metric not in valid:
            hint = closest(metric, list(valid))
            problems.append(
                Problem(
                    key,
                    f"'{metric}' is not a metric logged each epoch (logged: {', '.join(valid)})",
                    str(composed.origin(key)),
                    f"did you mean '{hint}'?" if hint else "",
                )
            )
    return problems


def _sweep_param_problems(recipe: Recipe, composed: Composed) -> list[Problem]:
    """Every swept key must be a key the recipe has: a typo would otherwise sweep nothing."""
    if recipe.sweep is None:
        return []
    problems = []
    for key in recipe.sweep.params:
        parts = key.split(".")
        for i in range(1, len(parts) + 1):
            parent, leaf = ".".join(parts[: i - 1]), parts[i - 1]
            if model_at(parent) is None:  # under a free-form dict such as model.params: anything goes
                break
            if leaf not in keys_at(parent):
                hint = closest(leaf, keys_at(parent))
                problems.append(Problem(f"sweep.params.{key}", f"'{key}' is not a recipe key",
                                        str(composed.origin(f"sweep.params.{key}")),
                                        f"did you mean '{'.'.join([*parts[: i - 1], hint])}'?" if hint else ""))
                break
    return problems


# the task of a built-in data set is known before reading it: gates can be checked against its metrics
BUILTIN_TASKS = {"breast_cancer": "binary", "wine": "multiclass", "digits": "multiclass", "diabetes": "regression",
                 "fine_foods": "binary"}


def recipe_task(recipe: Recipe) -> str:
    if recipe.data.task != "auto":
        return recipe.data.task
    return BUILTIN_TASKS.get(recipe.data.dataset or "", "auto")


def gateable_metrics(recipe: Recipe, task: str | None = None) -> dict[str, str]:
    """Every metric name a gate may read for this recipe (and task, once known)."""
    ev = recipe.evaluate
    task = task or recipe_task(recipe)
    metrics = available(task, {n: c.direction for n, c in ev.custom_metrics.items()},
                        fairness=ev.fairness is not None and task != "regression",
                        robustness=ev.robustness.enabled, performance=ev.performance.enabled)
    if not ev.performance.torch:
        metrics = {k: v for k, v in metrics.items() if not k.startswith("perf/torch/")}
    if ev.robustness.enabled:  # the image, text, payload and attack checks, by their declared strengths
        metrics |= ev.robustness.metric_names()
    if ev.load_test.enabled:
        metrics |= {f"load/{name}": d for name, d in LOAD.items()}
    if ev.importance.enabled:
        metrics |= importance_metrics(importance_columns(recipe))
    return metrics


def importance_columns(recipe: Recipe) -> list[str] | None:
    """The input columns known before the data is read (data.features), or None: every column but the target,
    known only once the data is read."""
    d = recipe.data
    if d.features is None:
        return None
    return [c for c in d.features if c != d.target and c not in d.drop]


def gate_problems(recipe: Recipe, task: str | None = None, origin: Callable[[str], str] | None = None) -> list[Problem]:
    """A gate must read a metric that will be computed, in a way that can be decided: never a silent pass."""
    ev = recipe.evaluate
    task = task or recipe_task(recipe)
    where = origin or (lambda key: "recipe")
    valid = gateable_metrics(recipe, task)
    problems = []
    if ev.fairness is not None and task == "regression":
        problems.append(Problem("evaluate.fairness", "fairness metrics need a classifier; this recipe is a regression",
                                where("evaluate.fairness")))
    slice_columns = {s.column for s in ev.slices}
    # with the input columns unknown until the data is read, any importance/<name> passes here: the gate names
    # a column the model does not have when it runs
    any_importance = ev.importance.enabled and importance_columns(recipe) is None
    for i, gate in enumerate(ev.gates):
        key = f"evaluate.gates.{i}"
        family = gate.metric.partition("/")[0]
        if gate.metric not in valid and not (any_importance and is_importance_metric(gate.metric)):
            hint = closest(gate.metric, list(valid))
            reason = f"'{gate.metric}' is not a metric this recipe computes"
            if family == "fairness" and ev.fairness is None:
                reason += " (fairness needs evaluate.fairness.sensitive)"
            elif family in ("perf", "robustness"):
                reason += f" ({family} checks are off or the name is unknown)"
            elif family == "load" and not ev.load_test.enabled:
                reason += " (load/ metrics need evaluate.load_test.enabled: true)"
            elif family == "importance":
                reason += (" (not a column of data.features)" if ev.importance.enabled
                           else " (importance/ metrics need evaluate.importance.enabled: true)")
            problems.append(Problem(f"{key}.metric", reason, where(f"{key}.metric"),
                                    f"did you mean '{hint}'?" if hint else f"task {task}: see `mlops schema`"))
            continue
        if gate.vs is not None and family not in ("val", "test"):
            problems.append(Problem(f"{key}.vs", f"only val/ and test/ metrics can be compared with the champion, "
                                    f"not '{gate.metric}'", where(f"{key}.vs"), "use an absolute min/max instead"))
        if gate.vs is not None and gate.test == "mcnemar" and not gate.metric.endswith("/accuracy"):
            problems.append(Problem(f"{key}.test", f"mcnemar compares per-row correctness: it decides on accuracy, "
                                    f"not '{gate.metric}'", where(f"{key}.test"),
                                    "use paired_bootstrap or permutation"))
        if gate.slice is None:
            continue
        if gate.vs is not None:
            problems.append(Problem(f"{key}.slice", "a comparison with the champion runs on the whole split",
                                    where(f"{key}.slice"), "remove 'slice'"))
        elif family == "fairness":
            sensitive = ev.fairness.sensitive if ev.fairness else []
            if gate.slice not in sensitive:
                hint = closest(gate.slice, sensitive)
                problems.append(Problem(f"{key}.slice", f"'{gate.slice}' is not a sensitive column "
                                        f"(evaluate.fairness.sensitive: {', '.join(sensitive)})",
                                        where(f"{key}.slice"), f"did you mean '{hint}'?" if hint else ""))
        elif family in ("val", "test"):
            column, eq, _ = gate.slice.partition("=")
            if not eq or column not in slice_columns:
                hint = closest(column, sorted(slice_columns))
                problems.append(Problem(f"{key}.slice", f"'{gate.slice}' must be 'column=value' of a column in "
                                        f"evaluate.slices ({', '.join(sorted(slice_columns)) or 'none declared'})",
                                        where(f"{key}.slice"), f"did you mean '{hint}'?" if hint else ""))
        else:
            problems.append(Problem(f"{key}.slice", f"'{family}/' metrics are not computed per slice",
                                    where(f"{key}.slice"), "remove 'slice'"))
    return problems
