"""Malformed recipes: every error names the file, the 1-based line of the bad key and the dotted key.

Each case writes a small project into tmp_path (a copy of configs/, recipes/bad.yaml and a CSV) and
marks the line that must be reported with a `# <-- error` comment, so the expected line number is
computed from the text the test wrote rather than copied from the implementation.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlops.cli import main
from mlops.core.errors import MlopsError, RecipeError
from mlops.engine.validate import load_validated

REPO = Path(__file__).resolve().parents[2]
MARK = "# <-- error"
CSV = "customer_id,age,income,plan,region,churned\n1,34,52000,basic,north,0\n2,51,61000,pro,south,1\n"

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


CASES = [
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
]


def _marked_line(text: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if MARK in line]
    assert len(lines) == 1, f"test bug: exactly one '{MARK}' expected, found {len(lines)}"
    return lines[0]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway project: configs/ copied from the repo, an empty recipes/ and a small CSV."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
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


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_recipe_names_file_line_and_key(project: Path, case: Case) -> None:
    recipe, where = _write_case(project, case)

    with pytest.raises(MlopsError) as info:
        load_validated(recipe, list(case.overrides))

    message = str(info.value)
    assert message.startswith("recipe recipes/bad.yaml is invalid"), message
    expected = f"{where}: {case.key}:" if case.key else f"{where}:"
    assert expected in message, f"expected {expected!r} in:\n{message}"
    for fragment in case.fragments:
        assert fragment in message, f"expected {fragment!r} in:\n{message}"
    assert "Traceback" not in message
    if isinstance(info.value, RecipeError):  # it also keeps each problem's key and location as data
        assert info.value.recipe == "recipes/bad.yaml"
        assert [(p.key, p.where) for p in info.value.problems] == [(case.key, where)]


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


CLI_CASES = [c for c in CASES if c.id in {"typo-in-config-group-file", "target-column-not-in-data",
                                           "override-unknown-key"}]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_validate_fails_cleanly_and_writes_nothing(
    project: Path, case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, where = _write_case(project, case)
    before = sorted(p.relative_to(project) for p in project.rglob("*"))

    code = main(["validate", str(recipe), *case.overrides])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("error: recipe recipes/bad.yaml is invalid")
    assert f"{where}: {case.key}:" in err
    assert "Traceback" not in err
    assert not (project / ".mlops").exists()
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


def test_cli_validate_ok_path_exits_zero(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The counterpart of the failures above: a fixed recipe passes and still writes nothing."""
    recipe = project / "recipes" / "good.yaml"
    recipe.write_text("name: good\n" + CSV_DATA)

    code = main(["validate", str(recipe), "trainer.max_epochs=3"])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"ok: {recipe} is a valid recipe 'good'")
    assert not (project / ".mlops").exists()
