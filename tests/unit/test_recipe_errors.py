"""Malformed recipes: every error names the file, the 1-based line of the bad key and the dotted key.

Each case writes a small project into tmp_path (a copy of configs/, recipes/bad.yaml, a CSV and the case's
own data files) and marks the line that must be reported with a `# <-- error` comment, so the expected line
number is computed from the text the test wrote rather than copied from the implementation. Every case runs
through `mlops validate` as a user runs it: exit 2, the file:line (or the override) and key on stderr, no
traceback, nothing written. (The untrusted-recipe kinds are in test_recipe_untrusted.py.)
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlops.cli import main
from mlops.core.errors import MlopsError, RecipeError
from mlops.data import checks
from mlops.engine.validate import load_validated
from mlops.recipe.compose import SHIPPED_CONFIGS

REPO = Path(__file__).resolve().parents[2]
MARK = "# <-- error"
PLANS, REGIONS = ("basic", "pro"), ("north", "south", "east", "west")
# rows enough for the default 0.7/0.15/0.15 stratified split: validate refuses fewer
CSV = "customer_id,age,income,plan,region,churned\n" + "".join(
    f"{i},{30 + i},{50000 + 1000 * i},{PLANS[i % 2]},{REGIONS[i % 4]},{i // 2 % 2}\n" for i in range(1, 21)
)
HEADER = "customer_id,age,income,plan,region,churned\n"


def _csv(n: int = 20, target: Callable[[int], object] = lambda i: i // 2 % 2,
         line: dict[int, str] | None = None) -> str:
    """A customers CSV of `n` rows, the target of row i being `target(i)`; `line` replaces whole data lines
    (numbered as an editor numbers them: the header is line 1)."""
    rows = [f"{i},{30 + i},{50000 + 1000 * i},{PLANS[i % 2]},{REGIONS[i % 4]},{target(i)}" for i in range(n)]
    for number, text in (line or {}).items():
        rows[number - 2] = text
    return HEADER + "".join(r + "\n" for r in rows)


def _empty_parquet() -> bytes:
    import pandas as pd

    out = io.BytesIO()
    pd.DataFrame({"age": pd.Series([], dtype="int64"), "churned": pd.Series([], dtype="int64")}).to_parquet(out)
    return out.getvalue()


DEFAULTS = """\
defaults:
  - data: breast_cancer
  - model: mlp
  - trainer: cpu
  - _self_

"""
# A CSV-backed recipe: semantic checks (columns, files, metrics) run without scikit-learn's data sets.
CSV_DATA = """\
data:
  path: ../data/customers.csv
  target: churned
  task: binary
"""


@dataclass(frozen=True)
class Case:
    id: str
    recipe: str  # the text of recipes/bad.yaml
    key: str  # the dotted key the message must name
    fragments: tuple[str, ...] = ()  # more text the message must contain (did-you-mean, the reason)
    overrides: tuple[str, ...] = ()
    config_edit: tuple[str, str, str] | None = None  # (file under configs/, old text, new text)
    files: tuple[tuple[str, str | bytes], ...] = ()  # more files of the project: (path under it, content)


CASES = [
    Case(
        "typo-under-a-column-of-a-mapping",
        "name: q\n" + CSV_DATA + "evaluate:\n  expectations:\n    columns:\n      income: {maxx: 9}  " + MARK + "\n",
        "evaluate.expectations.columns.income.maxx",
        ("did you mean 'max'?",),
    ),
    Case(
        "unknown-top-level-key",
        DEFAULTS + "name: q\ncolour: blue  " + MARK + "\n",
        "colour",
        ("unknown key", "valid keys: name, description, seed, data"),
    ),
    Case(
        "typo-trainer-max_epoch",
        DEFAULTS + "name: q\ntrainer:\n  max_epoch: 3  " + MARK + "\n",
        "trainer.max_epoch",
        ("unknown key", "did you mean 'max_epochs'?"),
    ),
    Case(
        "wrong-type-max_epochs",
        DEFAULTS + "name: q\ntrainer:\n  max_epochs: abc  " + MARK + "\n",
        "trainer.max_epochs",
        ("valid integer", "got 'abc'"),
    ),
    Case(
        "negative-lr",
        DEFAULTS + "name: q\nmodel:\n  lr: -0.01  " + MARK + "\n",
        "model.lr",
        ("greater than 0", "got -0.01"),
    ),
    Case(
        "literal-typo-accelerator",
        DEFAULTS + "name: q\ntrainer:\n  accelerator: gpuu  " + MARK + "\n",
        "trainer.accelerator",
        ("got 'gpuu'", "did you mean 'gpu'?"),
    ),
    Case(
        "optimizer-not-allowed",
        DEFAULTS + "name: q\nmodel:\n  optimizer: rmsprop  " + MARK + "\n",
        "model.optimizer",
        ("'adam', 'adamw' or 'sgd'", "got 'rmsprop'"),
    ),
    Case(
        "split-ratios-do-not-sum-to-one",
        DEFAULTS + "name: q\ndata:\n  split:  " + MARK + "\n    train: 0.5\n",
        "data.split",
        ("train + val + test must be 1.0, got 0.8",),
    ),
    Case(
        "both-dataset-and-path",
        "name: q\ndata:  " + MARK + "\n  dataset: wine\n  path: ../data/customers.csv\n  target: churned\n",
        "data",
        ("exactly one of 'dataset'", "or 'path'"),
    ),
    Case(
        "neither-dataset-nor-path",
        "name: q\nseed: 1\ndata:  " + MARK + "\n  target: churned\n",
        "data",
        ("exactly one of 'dataset'",),
    ),
    Case(
        "unknown-dataset-name",
        "name: q\ndata:\n  dataset: iris  " + MARK + "\n  target: target\n",
        "data.dataset",
        ("got 'iris'", "'breast_cancer', 'wine', 'digits', 'diabetes' or 'fine_foods'"),
    ),
    Case(
        "missing-data-file",
        "name: q\ndata:\n  path: nothing.csv  " + MARK + "\n  target: churned\n",
        "data.path",
        ("file not found", "nothing.csv"),
    ),
    Case(
        "target-column-not-in-data",
        "name: q\ndata:\n  path: ../data/customers.csv\n  target: churn  " + MARK + "\n",
        "data.target",
        ("column 'churn' is not in the data", "did you mean 'churned'?"),
    ),
    Case(
        "feature-column-not-in-data",
        "name: q\n" + CSV_DATA + "  features: [age, incom]  " + MARK + "\n",
        "data.features",
        ("column 'incom' is not in the data", "did you mean 'income'?"),
    ),
    Case(
        "drop-column-not-in-data",
        "name: q\n" + CSV_DATA + "  drop:  " + MARK + "\n    - customerid\n",  # the key's line, not the item's
        "data.drop",
        ("column 'customerid' is not in the data", "did you mean 'customer_id'?"),
    ),
    Case(
        "model-target-module-missing",
        "name: q\n" + CSV_DATA + "model:\n  _target_: nosuch_pkg.models.Net  " + MARK + "\n",
        "model._target_",
        ("cannot import 'nosuch_pkg.models.Net'", "no module named 'nosuch_pkg.models'"),
    ),
    Case(
        "model-target-class-missing",
        "name: q\n" + CSV_DATA + "model:\n  _target_: mlops.train.models.TabularMLQ  " + MARK + "\n",
        "model._target_",
        ("module 'mlops.train.models' has no 'TabularMLQ'", "did you mean 'TabularMLP'?"),
    ),
    Case(
        "early-stopping-monitor-not-logged",
        "name: q\n" + CSV_DATA + "trainer:\n  early_stopping:\n    monitor: val/acc  " + MARK + "\n",
        "trainer.early_stopping.monitor",
        ("'val/acc' is not a metric logged each epoch", "did you mean 'val/accuracy'?"),
    ),
    Case(
        "bad-name-pattern",
        "seed: 1\nname: 1st run  " + MARK + "\n" + CSV_DATA,
        "name",
        ("should match pattern", "got '1st run'"),
    ),
    Case(
        "nested-list-item-not-positive",
        DEFAULTS + "name: q\nmodel:\n  hidden: [64, -1]  " + MARK + "\n",
        "model.hidden.1",
        ("greater than 0", "got -1"),
    ),
    Case(
        "union-field-wrong-type",
        DEFAULTS + "name: q\ntrainer:\n  devices: many  " + MARK + "\n",
        "trainer.devices",
        ("got 'many'",),
    ),
    Case(
        "flow-mapping-typo",
        DEFAULTS + "name: q\ntrainer: {max_epochs: 3, patience: 2}  " + MARK + "\n",
        "trainer.patience",
        ("unknown key", "valid keys: accelerator"),
    ),
    Case(
        "defaults-list-unknown-option",
        "defaults:\n  - data: breast_cancer\n  - model: mlp\n  - trainer: cpuu  " + MARK + "\n  - _self_\n\nname: q\n",
        "trainer",
        ("no config 'cpuu' in group 'trainer'", "did you mean 'cpu'?"),
    ),
    Case(
        "typo-in-config-group-file",
        DEFAULTS.replace("trainer: cpu", "trainer: ddp_cpu") + "name: q\n",
        "trainer.max_epoch",
        ("unknown key", "did you mean 'max_epochs'?"),
        config_edit=("trainer/ddp_cpu.yaml", "devices: 2", "max_epoch: 20  " + MARK + "\ndevices: 2"),
    ),
    Case(
        "bad-value-in-config-group-file",
        DEFAULTS + "name: q\n",
        "data.task",
        ("got 'binery'", "did you mean 'binary'?"),
        config_edit=("data/breast_cancer.yaml", "task: binary", "task: binery  " + MARK),
    ),
    Case(
        "override-unknown-key",
        DEFAULTS + "name: q\n",
        "trainer.max_epoch",
        ("unknown key", "did you mean 'trainer.max_epochs'?"),
        overrides=("trainer.max_epoch=3",),
    ),
    Case(  # the typo is the middle segment: named there, not at the leaf below a section that does not exist
        "override-unknown-middle-key",
        DEFAULTS + "name: q\n",
        "trainer.early_stoping",
        ("unknown key", "did you mean 'trainer.early_stopping'?"),
        overrides=("trainer.early_stoping.patience=3",),
    ),
    Case(  # a list set on the command line: its items' errors point at the override, not at the file's list
        "override-list-item",
        DEFAULTS.replace("  - _self_", "  - deploy: default\n  - _self_") + "name: q\n",
        "deploy.rollout.steps.0",
        ("greater than or equal to 1",),
        overrides=("deploy.rollout.steps=[0,100]",),
    ),
    Case(
        "override-wrong-type",
        DEFAULTS + "name: q\n",
        "trainer.max_epochs",
        ("valid integer", "got 'abc'"),
        overrides=("trainer.max_epochs=abc",),
    ),
    Case(
        "override-unknown-group-option",
        DEFAULTS + "name: q\n",
        "model",
        ("no config 'mlpp' in group 'model'", "did you mean 'mlp'?"),
        overrides=("model=mlpp",),
    ),
    Case(
        "override-column-not-in-data",
        "name: q\n" + CSV_DATA,
        "data.target",
        ("column 'plann' is not in the data", "did you mean 'plan'?"),
        overrides=("data.target=plann",),
    ),
    Case(
        "override-parse-error",
        DEFAULTS + "name: q\n",
        "",
        ("[1,",),
        overrides=("trainer.max_epochs=[1,",),
    ),
    # evaluate: a gate on a metric that is never computed is refused here, never silently passed at the end
    Case(
        "gate-unknown-metric",
        DEFAULTS + "name: q\nevaluate:\n  gates:\n    - metric: test/aurocc  " + MARK + "\n      min: 0.9\n",
        "evaluate.gates.0.metric",
        ("'test/aurocc' is not a metric this recipe computes", "did you mean 'test/auroc'?"),
    ),
    Case(
        "gate-regression-metric-on-a-classifier",
        DEFAULTS + "name: q\nevaluate:\n  gates:\n    - metric: test/auroc\n      min: 0.9\n"
        "    - metric: test/r2  " + MARK + "\n      min: 0.5\n",
        "evaluate.gates.1.metric",
        ("'test/r2' is not a metric this recipe computes",),
    ),
    Case(
        "gate-fairness-without-sensitive-columns",
        DEFAULTS + "name: q\nevaluate:\n  gates:\n    - metric: fairness/demographic_parity_diff  " + MARK
        + "\n      max: 0.1\n",
        "evaluate.gates.0.metric",
        ("fairness needs evaluate.fairness.sensitive",),
    ),
    Case(
        "gate-champion-on-a-latency",
        DEFAULTS + "name: q\nevaluate:\n  gates:\n    - metric: perf/latency_p99_ms\n      vs: champion  " + MARK
        + "\n",
        "evaluate.gates.0.vs",
        ("only val/ and test/ metrics can be compared with the champion",),
    ),
    Case(
        "gate-mcnemar-needs-accuracy",
        DEFAULTS + "name: q\nevaluate:\n  gates:\n    - metric: test/auroc\n      vs: champion\n"
        "      test: mcnemar  " + MARK + "\n",
        "evaluate.gates.0.test",
        ("decides on accuracy", "use paired_bootstrap or permutation"),
    ),
    Case(
        "gate-bound-and-champion",
        DEFAULTS + "name: q\nevaluate:\n  gates:\n    - metric: test/auroc  " + MARK + "\n      min: 0.9\n"
        "      vs: champion\n",
        "evaluate.gates.0",
        ("either an absolute bound (min and/or max) or 'vs: champion', not both",),
    ),
    Case(
        "gate-typo-in-the-gates-group-file",
        DEFAULTS.replace("  - _self_", "  - gates: classification\n  - _self_") + "name: q\n",
        "evaluate.gates.3.metric",
        ("'perf/latency_p99' is not a metric", "did you mean 'perf/latency_p99_ms'?"),
        config_edit=("gates/classification.yaml", "metric: perf/latency_p99_ms",
                     "metric: perf/latency_p99  " + MARK),
    ),
    Case(
        "gate-slice-not-declared",
        "name: q\n" + CSV_DATA + "evaluate:\n  slices:\n    - column: plan\n  gates:\n    - metric: test/auroc\n"
        "      min: 0.5\n      slice: regon=north  " + MARK + "\n",
        "evaluate.gates.0.slice",
        ("must be 'column=value' of a column in evaluate.slices (plan)",),
    ),
    Case(
        "slice-column-not-in-data",
        "name: q\n" + CSV_DATA + "evaluate:\n  slices:\n    - column: plann  " + MARK + "\n",
        "evaluate.slices.0.column",
        ("column 'plann' is not in the data", "did you mean 'plan'?"),
    ),
    Case(
        "expectation-column-not-in-data",
        "name: q\n" + CSV_DATA + "evaluate:\n  expectations:\n    columns:\n      incme: {min: 0}  " + MARK + "\n",
        "evaluate.expectations.columns.incme",
        ("column 'incme' is not in the data", "did you mean 'income'?"),
    ),
    Case(
        "custom-metric-not-importable",
        DEFAULTS + "name: q\nevaluate:\n  custom_metrics:\n    cost:\n      _target_: sklearn.metrics.no_such_fn  "
        + MARK + "\n",
        "evaluate.custom_metrics.cost._target_",
        ("cannot import 'sklearn.metrics.no_such_fn'",),
    ),
    # --- what the rows say: validate reads the data (item 4); each of these used to pass and fail in the run
    Case(
        "fairness-positive-label-not-a-class",
        "name: q\n" + CSV_DATA + "evaluate:\n  fairness:\n    sensitive: [region]\n    positive_label: 'yes'  " + MARK
        + "\n",
        "evaluate.fairness.positive_label",
        ("'yes' is not a class of the target 'churned' (2 classes)",),
    ),
    Case(
        "fairness-positive-label-not-a-class-of-a-built-in-data-set",
        DEFAULTS + "name: q\nevaluate:\n  fairness:\n    sensitive: [mean_radius]\n    positive_label: malignant  "
        + MARK + "\n",
        "evaluate.fairness.positive_label",
        ("'malignant' is not a class of the target 'target' (2 classes)",),
    ),
    Case(
        "gate-slice-value-not-in-the-data",
        "name: q\n" + CSV_DATA + "evaluate:\n  slices:\n    - column: plan\n  gates:\n    - metric: test/auroc\n"
        "      min: 0.5\n      slice: plan=premium  " + MARK + "\n",
        "evaluate.gates.0.slice",
        ("no row has plan = 'premium' (2 slices)",),
    ),
    Case(
        "gate-slice-bin-not-among-the-edges",
        "name: q\n" + CSV_DATA + "evaluate:\n  slices:\n    - column: age\n      bins: [0, 40, 100]\n  gates:\n"
        "    - metric: test/auroc\n      min: 0.5\n      slice: age=[0, 30)  " + MARK + "\n",
        "evaluate.gates.0.slice",
        ("no row has age = '[0, 30)' (2 slices)", "did you mean 'age=[0, 40)'?"),
    ),
    Case(
        "csv-line-with-too-many-fields",
        "name: q\ndata:\n  path: ../data/ragged.csv  " + MARK + "\n  target: churned\n",
        "data.path",
        ("ragged.csv: the header has 6 fields but line 4 has 7",),
        files=(("data/ragged.csv", _csv(line={4: "2,32,52000,basic,east,0,extra"})),),
    ),
    Case(
        "csv-line-with-too-few-fields",
        "name: q\ndata:\n  path: ../data/ragged.csv  " + MARK + "\n  target: churned\n",
        "data.path",
        ("the header has 6 fields but line 7 has 5",),
        files=(("data/ragged.csv", _csv(line={7: "5,35,55000,pro,north"})),),
    ),
    Case(
        "target-with-a-single-class",
        "name: q\ndata:\n  path: ../data/one.csv\n  target: churned  " + MARK + "\n",
        "data.target",
        ("the target 'churned' has a single class in 20 rows",),
        files=(("data/one.csv", _csv(target=lambda i: 0)),),
    ),
    Case(
        "target-with-missing-values",
        "name: q\ndata:\n  path: ../data/holes.csv\n  target: churned  " + MARK + "\n",
        "data.target",
        ("the target 'churned' is missing in 1 of 20 rows (rows 3, counted from 0)",),
        files=(("data/holes.csv", _csv(line={5: "3,33,53000,pro,west,"})),),
    ),
    Case(
        "too-few-rows-for-the-split",
        "name: q\ndata:\n  path: ../data/few.csv  " + MARK + "\n  target: churned\n",
        "data.path",
        ("4 rows cannot be split 0.7/0.15/0.15: the val split would get 1",),
        files=(("data/few.csv", _csv(4)),),
    ),
    Case(
        "stratified-class-with-a-single-row",
        "name: q\ndata:\n  path: ../data/rare.csv  " + MARK + "\n  target: churned\n",
        "data.path",
        ("with stratification: 1 class(es) have a single row",),
        files=(("data/rare.csv", _csv(target=lambda i: 2 if i == 7 else i % 2)),),
    ),
    Case(
        "csv-header-without-rows",
        "name: q\ndata:\n  path: ../data/header.csv  " + MARK + "\n  target: churned\n",
        "data.path",
        ("header.csv has a header but no rows",),
        files=(("data/header.csv", HEADER),),
    ),
    Case(
        "parquet-without-rows",
        "name: q\ndata:\n  path: ../data/empty.parquet  " + MARK + "\n  target: churned\n",
        "data.path",
        ("empty.parquet has columns but no rows",),
        files=(("data/empty.parquet", _empty_parquet()),),
    ),
    Case(
        "empty-data-file",
        "name: q\ndata:\n  path: ../data/nothing.csv  " + MARK + "\n  target: churned\n",
        "data.path",
        ("cannot read", "nothing.csv as csv"),
        files=(("data/nothing.csv", ""),),
    ),
    Case(
        "binary-task-with-three-classes",
        "name: q\ndata:\n  path: ../data/three.csv\n  target: churned\n  task: binary  " + MARK + "\n",
        "data.task",
        ("task is binary but the target 'churned' has 3 classes", "set data.task: multiclass"),
        files=(("data/three.csv", _csv(30, target=lambda i: i % 3)),),
    ),
    Case(
        "fairness-on-many-classes-without-a-positive-label",
        "name: q\ndata:\n  path: ../data/three.csv\n  target: churned\nevaluate:\n  fairness:  " + MARK
        + "\n    sensitive: [region]\n",
        "evaluate.fairness",
        ("fairness on a multiclass target needs the favourable class (3 classes)",),
        files=(("data/three.csv", _csv(30, target=lambda i: i % 3)),),
    ),
    Case(  # an 'auto' task is known once the rows are read: here a regression, which has no AUROC
        "gate-on-a-metric-the-inferred-task-lacks",
        "name: q\ndata:\n  path: ../data/prices.csv\n  target: churned\nevaluate:\n  gates:\n"
        "    - metric: test/auroc  " + MARK + "\n      min: 0.5\n",
        "evaluate.gates.0.metric",
        ("'test/auroc' is not a metric this recipe computes",),
        files=(("data/prices.csv", _csv(60, target=lambda i: f"{i * 1.37:.2f}")),),
    ),
    Case(
        "data-file-that-is-not-parquet",
        "name: q\ndata:\n  path: ../data/fake.parquet  " + MARK + "\n  target: churned\n",
        "data.path",
        ("cannot read", "fake.parquet as parquet"),
        files=(("data/fake.parquet", CSV),),
    ),
    Case(
        "data-file-of-unknown-format",
        "name: q\ndata:\n  path: ../data/customers.txt  " + MARK + "\n  target: churned\n",
        "data.path",
        ("cannot tell the format of 'customers.txt'", "set data.format"),
        files=(("data/customers.txt", CSV),),
    ),
    Case(
        "data-format-not-allowed",
        "name: q\n" + CSV_DATA + "  format: xlsx  " + MARK + "\n",
        "data.format",
        ("got 'xlsx'",),
    ),
    # --- keys and types at every depth
    Case(
        "typo-at-depth-three",
        "name: q\n" + CSV_DATA + "  split:\n    tran: 0.7  " + MARK + "\n",
        "data.split.tran",
        ("unknown key", "did you mean 'train'?"),
    ),
    Case(
        "typo-at-depth-four",
        "name: q\n" + CSV_DATA + "evaluate:\n  robustness:\n    text:\n      typo: [0.1]  " + MARK + "\n",
        "evaluate.robustness.text.typo",
        ("unknown key", "did you mean 'typos'?"),
    ),
    Case(
        "typo-in-a-list-item",
        "name: q\n" + CSV_DATA + "evaluate:\n  gates:\n    - metric: test/auroc\n      minimum: 0.5  " + MARK + "\n",
        "evaluate.gates.0.minimum",
        ("unknown key",),
    ),
    Case(
        "bool-that-is-not-a-bool",
        "name: q\n" + CSV_DATA + "  split:\n    stratify: maybe  " + MARK + "\n",
        "data.split.stratify",
        ("valid boolean", "got 'maybe'"),
    ),
    Case(
        "section-given-a-list",
        "name: q\n" + CSV_DATA + "trainer: [1, 2]  " + MARK + "\n",
        "trainer",
        ("Input should be a valid dictionary",),
    ),
    Case(
        "list-given-a-mapping",
        "name: q\n" + CSV_DATA + "  features: {age: 1}  " + MARK + "\n",
        "data.features",
        ("valid list",),
    ),
    Case(
        "required-key-missing",
        "name: q\ndata:  " + MARK + "\n  path: ../data/customers.csv\n",
        "data.target",
        ("required",),
    ),
    Case(
        "number-out-of-range-in-a-list-item",
        "name: q\n" + CSV_DATA + "evaluate:\n  gates:\n    - metric: test/auroc\n      vs: champion\n"
        "      alpha: 0.7  " + MARK + "\n",
        "evaluate.gates.0.alpha",
        ("less than 0.5", "got 0.7"),
    ),
    Case(
        "slice-bin-edges-not-increasing",
        "name: q\n" + CSV_DATA + "evaluate:\n  slices:\n    - column: age\n      bins: [40, 30]  " + MARK + "\n",
        "evaluate.slices.0.bins",
        ("bin edges must be at least two increasing numbers",),
    ),
    # --- what the recipe names: columns, files, metrics
    Case(
        "declared-column-not-in-data",
        "name: q\n" + CSV_DATA + "  columns:\n    incme: {kind: numeric}  " + MARK + "\n",
        "data.columns.incme",
        ("column 'incme' is not in the data", "did you mean 'income'?"),
    ),
    Case(
        "column-declared-two-ways",
        "name: q\n" + CSV_DATA + "  categorical: [plan]\n  columns:\n    plan: {kind: numeric}  " + MARK + "\n",
        "data.columns.plan",
        ("declared numeric here and categorical in data.categorical",),
    ),
    Case(
        "target-listed-as-a-feature",
        "name: q\n" + CSV_DATA + "  features: [age, churned]  " + MARK + "\n",
        "data.features",
        ("the target column cannot be a feature",),
    ),
    Case(
        "fairness-sensitive-column-not-in-data",
        "name: q\n" + CSV_DATA + "evaluate:\n  fairness:\n    sensitive: [regon]  " + MARK + "\n",
        "evaluate.fairness.sensitive.0",
        ("column 'regon' is not in the data", "did you mean 'region'?"),
    ),
    Case(
        "fairness-on-a-regression",
        "name: q\ndata:\n  path: ../data/customers.csv\n  target: income\n  task: regression\nevaluate:\n"
        "  fairness:  " + MARK + "\n    sensitive: [region]\n",
        "evaluate.fairness",
        ("fairness metrics need a classifier",),
    ),
    Case(
        "mlp-given-a-text-column",
        "name: q\n" + CSV_DATA + "  columns:\n    plan: {kind: text}\nmodel:  " + MARK + "\n  lr: 0.01\n",
        "model._target_",
        ("the built-in MLP takes scalar columns only, and plan is image or text",),
    ),
    Case(
        "model-weights-file-missing",
        "name: q\n" + CSV_DATA + "model:\n  weights: nope.pt  " + MARK + "\n",
        "model.weights",
        ("no weights file at", "nope.pt"),
    ),
    Case(
        "checkpoint-monitor-of-the-other-task",
        "name: q\n" + CSV_DATA + "trainer:\n  checkpoint:\n    monitor: val/rmse  " + MARK + "\n",
        "trainer.checkpoint.monitor",
        ("'val/rmse' is not a metric logged each epoch",),
    ),
    Case(
        "gate-slice-on-a-column-not-sensitive",
        "name: q\n" + CSV_DATA + "evaluate:\n  fairness:\n    sensitive: [region]\n  gates:\n"
        "    - metric: fairness/demographic_parity_diff\n      max: 0.5\n      slice: plan  " + MARK + "\n",
        "evaluate.gates.0.slice",
        ("'plan' is not a sensitive column (evaluate.fairness.sensitive: region)",),
    ),
    Case(
        "gate-slice-on-a-latency",
        "name: q\n" + CSV_DATA + "evaluate:\n  gates:\n    - metric: perf/latency_p99_ms\n      max: 50\n"
        "      slice: plan=basic  " + MARK + "\n",
        "evaluate.gates.0.slice",
        ("'perf/' metrics are not computed per slice",),
    ),
    Case(
        "gate-slice-with-the-champion",
        "name: q\n" + CSV_DATA + "evaluate:\n  slices:\n    - column: plan\n  gates:\n    - metric: test/auroc\n"
        "      vs: champion\n      slice: plan=basic  " + MARK + "\n",
        "evaluate.gates.0.slice",
        ("a comparison with the champion runs on the whole split",),
    ),
    # --- sweeps
    Case(
        "sweep-metric-not-logged",
        "name: q\n" + CSV_DATA + "sweep:\n  metric: val/acc  " + MARK + "\n",
        "sweep.metric",
        ("'val/acc' is not a metric logged each epoch", "did you mean 'val/accuracy'?"),
    ),
    Case(
        "sweep-param-not-a-recipe-key",
        "name: q\n" + CSV_DATA + "sweep:\n  params:\n    model.lrr: {type: float, low: 0.001, high: 0.1}  " + MARK + "\n",
        "sweep.params.model.lrr",
        ("'model.lrr' is not a recipe key", "did you mean 'model.lr'?"),
    ),
    Case(
        "sweep-range-upside-down",
        "name: q\n" + CSV_DATA + "sweep:\n  params:\n    model.lr: {type: float, low: 0.1, high: 0.001}  " + MARK + "\n",
        "sweep.params.model.lr",
        ("low (0.1) must be below high (0.001)",),
    ),
    Case(
        "sweep-param-of-unknown-type",
        "name: q\n" + CSV_DATA + "sweep:\n  params:\n    model.lr: {type: floatt, low: 0.1, high: 1}  " + MARK + "\n",
        "sweep.params.model.lr",
        ("floatt",),
    ),
    # --- overrides
    Case(
        "override-data-path-missing",
        "name: q\n" + CSV_DATA,
        "data.path",
        ("file not found", "nothing.csv"),
        overrides=("data.path=../data/nothing.csv",),
    ),
    Case(
        "override-appends-an-unknown-key",
        "name: q\n" + CSV_DATA,
        "colour",
        ("unknown key",),
        overrides=("+colour=blue",),
    ),
    Case(
        "override-bad-enum-value",
        "name: q\n" + CSV_DATA,
        "trainer.precision",
        ("Input should be '32-true'", "got 15"),
        overrides=("trainer.precision=15",),
    ),
    Case(
        "override-positive-label-not-a-class",
        "name: q\n" + CSV_DATA + "evaluate:\n  fairness:\n    sensitive: [region]\n",
        "evaluate.fairness.positive_label",
        ("'churn' is not a class of the target 'churned'",),
        overrides=("evaluate.fairness.positive_label=churn",),
    ),
    Case(
        "interpolation-of-an-unknown-key",
        DEFAULTS + "name: q\ntrainer:\n  max_epochs: ${oops}  " + MARK + "\n",
        "trainer.max_epochs",
        ("'${oops}': unknown interpolation key 'oops'",),
    ),
    Case(
        "override-interpolation-of-a-misspelt-key",
        DEFAULTS + "name: q\n",
        "seed",
        ("unknown interpolation key 'trainer.max_epoch'", "did you mean '${trainer.max_epochs}'?"),
        overrides=("seed=${trainer.max_epoch}",),
    ),
    Case(  # OmegaConf names `name`, whose value it was resolving: the unknown key is written at description
        "interpolation-through-another-key",
        DEFAULTS + "name: q-${description}\ndescription: ${oops}  " + MARK + "\n",
        "description",
        ("unknown interpolation key 'oops'",),
    ),
    Case(
        "interpolation-of-an-unset-environment-variable",
        DEFAULTS + "name: q\ntrainer:\n  max_epochs: ${oc.env:MLOPS_TEST_NEVER_SET}  " + MARK + "\n",
        "trainer.max_epochs",
        ("environment variable MLOPS_TEST_NEVER_SET is not set", "${oc.env:MLOPS_TEST_NEVER_SET,default}"),
    ),
    Case(
        "interpolation-with-an-unknown-resolver",
        DEFAULTS + "name: q\ntrainer:\n  max_epochs: ${oc.envv:EPOCHS}  " + MARK + "\n",
        "trainer.max_epochs",
        ("unknown resolver 'oc.envv'", "did you mean 'oc.env'?"),
    ),
    Case(
        "interpolation-loop",
        DEFAULTS + "name: q\ntrainer:\n  max_epochs: ${trainer.max_epochs}  " + MARK + "\n",
        "trainer.max_epochs",
        ("refers back to itself", "a loop"),
    ),
    Case(
        "misspelt-group-in-the-defaults-list",
        DEFAULTS.replace("  - _self_", "  - gate: classification  " + MARK + "\n  - _self_") + "name: q\n",
        "gate",
        ("no config group 'gate'", "did you mean 'gates'?"),
    ),
    Case(
        "override-of-a-misspelt-group",
        DEFAULTS + "name: q\n",
        "gate",
        ("unknown key", "did you mean 'gates'?"),
        overrides=("gate=classification",),
    ),
    Case(  # with `+` Hydra adds the key, so the schema refuses it: the nearest group is suggested all the same
        "override-adding-a-misspelt-group",
        DEFAULTS + "name: q\n",
        "gate",
        ("unknown key", "did you mean 'gates'?"),
        overrides=("+gate=classification",),
    ),
    Case(
        "override-of-a-number-to-infinity",
        DEFAULTS + "name: q\n",
        "model.lr",
        ("finite number", "got inf"),
        overrides=("model.lr=1e400",),
    ),
]


def _marked_line(text: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if MARK in line]
    assert len(lines) == 1, f"test bug: exactly one '{MARK}' expected, found {len(lines)}"
    return lines[0]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway project: the shipped configs/ copied, an empty recipes/ and a small CSV."""
    shutil.copytree(SHIPPED_CONFIGS, tmp_path / "configs")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "customers.csv").write_text(CSV)
    monkeypatch.delenv("MLOPS_CONFIG_PATH", raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    monkeypatch.chdir(tmp_path)  # file names in messages are shown relative to the working directory
    return tmp_path


def _write_case(project: Path, case: Case) -> tuple[Path, str]:
    """Write the case's files; return the recipe path and where the message must point."""
    recipe = project / "recipes" / "bad.yaml"
    recipe.write_text(case.recipe)
    for rel, content in case.files:
        (project / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
    if case.overrides:
        assert MARK not in case.recipe
        return recipe, f"command-line override '{case.overrides[0]}'"
    if case.config_edit is not None:
        rel, old, new = case.config_edit
        cfg = project / "configs" / rel
        original = cfg.read_text()
        assert original.count(old) == 1, f"test bug: '{old}' not found once in configs/{rel}"
        cfg.write_text(original.replace(old, new))
        return recipe, f"configs/{rel}:{_marked_line(cfg.read_text())}"
    return recipe, f"recipes/bad.yaml:{_marked_line(case.recipe)}"


def _files(project: Path) -> list[Path]:
    return sorted(p.relative_to(project) for p in project.rglob("*"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_recipe_fails_validate_at_its_file_line(
    project: Path, case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, where = _write_case(project, case)
    before = _files(project)

    code = main(["validate", str(recipe), *case.overrides])

    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert err.startswith("error: recipe recipes/bad.yaml is invalid"), err  # no warning, no note before it
    expected = f"  {where}: {case.key}:" if case.key else f"  {where}:"
    assert expected in err, f"expected {expected!r} in:\n{err}"
    for fragment in case.fragments:
        assert fragment in err, f"expected {fragment!r} in:\n{err}"
    assert len(err.splitlines()) == 2, f"one problem expected:\n{err}"
    assert "Traceback" not in err
    assert _files(project) == before  # nothing written: no .mlops/, no cache, no run
    assert not (project / ".mlops").exists()


def test_many_problems_are_reported_at_once(project: Path) -> None:
    text = (
        DEFAULTS
        + "name: q\n"
        + "colour: blue  # <-- 1\n"
        + "model:\n"
        + "  lr: 0  # <-- 2\n"
        + "  optimiser: adam  # <-- 3\n"
        + "trainer:\n"
        + "  accelerator: gpuu  # <-- 4\n"
    )
    recipe = project / "recipes" / "bad.yaml"
    recipe.write_text(text)
    line = {n: i for i, row in enumerate(text.splitlines(), 1) for n in "1234" if f"# <-- {n}" in row}

    with pytest.raises(RecipeError) as info:
        load_validated(recipe, [])

    err = info.value
    assert "(4 problems)" in str(err)
    found = {p.key: p.where for p in err.problems}
    assert found == {
        "colour": f"recipes/bad.yaml:{line['1']}",
        "model.lr": f"recipes/bad.yaml:{line['2']}",
        "model.optimiser": f"recipes/bad.yaml:{line['3']}",
        "trainer.accelerator": f"recipes/bad.yaml:{line['4']}",
    }
    assert "did you mean 'optimizer'?" in str(err)
    assert "did you mean 'gpu'?" in str(err)
    # one rendered line per problem, each starting with its location
    body = str(err).splitlines()[1:]
    assert len(body) == 4 and all(row.startswith("  recipes/bad.yaml:") for row in body)


def test_many_semantic_problems_are_reported_at_once(project: Path) -> None:
    text = (
        "name: q\n"
        "data:\n"
        "  path: ../data/customers.csv\n"
        "  target: churn  # <-- 1\n"
        "  features: [age, incomee]  # <-- 2\n"
        "trainer:\n"
        "  checkpoint:\n"
        "    monitor: val/rmsee  # <-- 3\n"
    )
    recipe = project / "recipes" / "bad.yaml"
    recipe.write_text(text)

    with pytest.raises(RecipeError) as info:
        load_validated(recipe, [])

    found = {p.key: p.where for p in info.value.problems}
    assert found == {
        "data.target": "recipes/bad.yaml:4",
        "data.features": "recipes/bad.yaml:5",
        "trainer.checkpoint.monitor": "recipes/bad.yaml:8",
    }
    assert "did you mean 'val/rmse'?" in str(info.value)


def test_group_file_typo_is_not_blamed_on_the_recipe(project: Path) -> None:
    """A typo in configs/trainer/cpu.yaml reached through trainer=ddp_cpu still points at cpu.yaml."""
    cfg = project / "configs" / "trainer" / "cpu.yaml"  # the schema's trainer: it sets no key of its own
    cfg.write_text("# a project's own trainer settings\nearly_stopping:\n  patiense: 5\n")
    line = next(i for i, row in enumerate(cfg.read_text().splitlines(), 1) if "patiense" in row)
    recipe = project / "recipes" / "bad.yaml"
    recipe.write_text(DEFAULTS + "name: q\n")

    with pytest.raises(RecipeError) as info:
        load_validated(recipe, ["trainer=ddp_cpu"])

    [problem] = info.value.problems
    assert problem.key == "trainer.early_stopping.patiense"
    assert problem.where == f"configs/trainer/cpu.yaml:{line}"
    assert problem.hint == "did you mean 'patience'?"


def test_missing_recipe_file_is_a_user_error(project: Path) -> None:
    with pytest.raises(MlopsError, match=r"recipe file not found: .*nope\.yaml"):
        load_validated(project / "recipes" / "nope.yaml")


SUBPROCESS_CASES = [c for c in CASES if c.id in {"typo-in-config-group-file", "csv-line-with-too-many-fields",
                                                  "override-positive-label-not-a-class", "parquet-without-rows"}]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_no_traceback_reaches_the_terminal(project: Path, case: Case) -> None:
    """In a fresh interpreter, as a user runs it: what reaches the terminal is the one-line error."""
    recipe, where = _write_case(project, case)
    before = _files(project)
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_CONFIG_PATH"}

    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "validate", str(recipe), *case.overrides],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: recipe recipes/bad.yaml is invalid"), proc.stderr
    assert f"  {where}: {case.key}:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _files(project) == before


def test_a_large_file_is_read_in_part_and_said_so(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past READ_BYTES validate reads the first rows only: a note says so, a ragged line among them is still an
    error, and what only every row can tell (here a class that is not in the rows read) is a warning."""
    monkeypatch.setattr(checks, "READ_BYTES", 400)
    (project / "data" / "big.csv").write_text(_csv(200))
    recipe = project / "recipes" / "big.yaml"
    recipe.write_text("name: big\ndata:\n  path: ../data/big.csv\n  target: churned\nevaluate:\n  fairness:\n"
                      "    sensitive: [region]\n    positive_label: '2'\n")

    code = main(["validate", str(recipe)])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("ok: ")
    assert "note: validate read the first " in err and " of big.csv" in err
    assert ("warning: recipes/big.yaml:8: evaluate.fairness.positive_label: '2' is not a class of the target "
            "'churned'") in err
    assert "(in the rows read: validate read the first" in err

    (project / "data" / "big.csv").write_text(_csv(200, line={5: "3,33,53000,pro,west,1,extra"}))
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "recipes/big.yaml:3: data.path: big.csv: the header has 6 fields but line 5 has 7" in err


def test_a_ragged_line_after_the_part_read_is_left_to_the_run(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bound is real: a line past READ_BYTES is not read (the run's full read finds it)."""
    monkeypatch.setattr(checks, "READ_BYTES", 400)
    (project / "data" / "big.csv").write_text(_csv(200, line={150: "148,33,53000,pro,west,1,extra"}))
    recipe = project / "recipes" / "big.yaml"
    recipe.write_text("name: big\ndata:\n  path: ../data/big.csv\n  target: churned\n")

    assert main(["validate", str(recipe)]) == 0
    assert "note: validate read the first " in capsys.readouterr().err


def test_an_empty_column_is_a_warning(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _csv().splitlines()
    (project / "data" / "notes.csv").write_text("\n".join([rows[0] + ",notes"] + [r + "," for r in rows[1:]]) + "\n")
    recipe = project / "recipes" / "notes.yaml"
    recipe.write_text("name: notes\ndata:\n  path: ../data/notes.csv\n  target: churned\n")

    code = main(["validate", str(recipe)])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("ok: ")
    assert err == ("warning: recipes/notes.yaml:3: data.path: column 'notes' is empty: all its 20 values are missing "
                   "(drop it (data.drop) or fill it in)\n")


def test_cli_validate_ok_path_exits_zero(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The counterpart of the failures above: a fixed recipe passes and still writes nothing."""
    recipe = project / "recipes" / "good.yaml"
    recipe.write_text("name: good\n" + CSV_DATA)

    code = main(["validate", str(recipe), "trainer.max_epochs=3"])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"ok: {recipe} is a valid recipe 'good'")
    assert not (project / ".mlops").exists()
