"""Cache keys: a change invalidates exactly the steps downstream of it."""

from __future__ import annotations

import ast
import shutil
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel

from mlops.engine.cache import Cache
from mlops.engine.plan import compile_plan
from mlops.engine.validate import load_validated
from tests.conftest import ROOT

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def keys(overrides: list[str], tmp_path: Path) -> dict[str, str]:
    plan = compile_plan(load_validated(QUICKSTART, overrides), Cache(tmp_path))
    return {s.name: s.key for s in plan.steps}


def test_same_recipe_same_keys(tmp_path: Path) -> None:
    assert keys([], tmp_path) == keys([], tmp_path)


def test_model_change_invalidates_train_and_after_only(tmp_path: Path) -> None:
    base, changed = keys([], tmp_path), keys(["model.lr=0.01"], tmp_path)
    same = [s for s in base if base[s] == changed[s]]
    assert same == ["load_data", "check_data", "split", "preprocess"]


def test_gate_change_keeps_every_computed_result(tmp_path: Path) -> None:
    """A stricter gate re-decides on the cached evaluation: nothing is retrained or re-measured."""
    base, changed = keys([], tmp_path), keys(["evaluate.gates.0.min=0.95"], tmp_path)
    assert [s for s in base if base[s] != changed[s]] == ["gate", "register"]


@pytest.mark.parametrize("override", ["monitor.alerts.consecutive=5", "deploy.rollout.steps=[5,100]",
                                      "improve.limits.max_per_day=1"])
def test_a_later_phase_setting_keeps_the_model(tmp_path: Path, override: str) -> None:
    """Deploy, monitor and improve settings act on a model once it exists: nothing is retrained or exported."""
    base, changed = keys([], tmp_path), keys([override], tmp_path)
    assert base == changed


def test_assessment_change_reruns_only_the_assessment(tmp_path: Path) -> None:
    base, changed = keys([], tmp_path), keys(["evaluate.robustness.epsilon=0.1"], tmp_path)
    assert [s for s in base if base[s] != changed[s]] == ["assess", "gate", "register"]
    expectations = keys(["++evaluate.expectations.min_rows=10"], tmp_path)
    assert [s for s in base if base[s] != expectations[s]] == ["check_data"]


def test_split_change_invalidates_split_and_after(tmp_path: Path) -> None:
    base, changed = keys([], tmp_path), keys(["data.split.seed=5"], tmp_path)
    assert base["load_data"] == changed["load_data"]
    assert all(base[s] != changed[s] for s in ("split", "preprocess", "train", "evaluate", "export", "register"))


def test_data_bytes_are_part_of_the_key(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\ndata:\n  path: {csv}\n  target: y\n  split: {{stratify: false}}\n")  # 4 rows
    first = compile_plan(load_validated(recipe), Cache(tmp_path / "c")).step("load_data").key
    csv.write_text("a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,9,1\n")
    assert compile_plan(load_validated(recipe), Cache(tmp_path / "c")).step("load_data").key != first


class Written(BaseModel):
    file: str


def test_cache_publishes_whole_results_only(tmp_path: Path) -> None:
    cache = Cache(tmp_path)

    def boom(out: Path) -> Written:
        (out / "partial.bin").write_bytes(b"x")
        raise RuntimeError("crash mid-step")

    with pytest.raises(RuntimeError):
        cache.compute("train", "k1", boom)
    assert not cache.has("train", "k1") and not cache.path("train", "k1").exists()
    assert cache.resumable("train", "k1") is not None  # a failed fit keeps its resume point
    result = cache.compute("train", "k1", lambda out: (out / "w.bin").write_bytes(b"ok") and Written(file="w.bin"))
    assert cache.has("train", "k1") and (result.dir / result.result.file).read_bytes() == b"ok"


# --- code versions: derived from what each step's code imports -------------------------------------------


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the mlops package that plans read their code from, free to edit."""
    from mlops.engine import plan as plan_mod

    copy = tmp_path / "pkg"
    shutil.copytree(plan_mod.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(plan_mod, "PACKAGE", copy)
    return copy


def module_file(package: Path, dotted: str) -> Path:
    """The source file of mlops module `dotted` inside the copy."""
    path = package.joinpath(*dotted.split(".")[1:])
    found = path / "__init__.py" if path.is_dir() else path.with_name(path.name + ".py")
    assert found.is_file(), f"{dotted} is not in the package any more: update this test"
    return found


def edit(path: Path) -> None:
    with open(path, "a") as f:
        f.write("\n# an edit\n")


def downstream(first: str, tmp_path: Path) -> set[str]:
    """`first` and every step that takes it as an input, directly or not."""
    steps = {first}
    for s in compile_plan(load_validated(QUICKSTART), Cache(tmp_path)).steps:  # in dependency order
        if steps & set(s.inputs):
            steps.add(s.name)
    return steps


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {s for s in before if before[s] != after[s]}


@pytest.mark.parametrize(("module", "first"), [
    ("mlops.engine.steps.common", "load_data"),  # shared by every step
    ("mlops.data.expectations", "check_data"),  # a leaf: nothing takes check_data as input
    ("mlops.recipe.metrics", "split"),  # the metric names (once evaluate/names.py), via the gate checks
    ("mlops.train.fit", "train"),
    ("mlops.train.worker", "train"),  # run as `python -m`, never imported by the parent: named by import
    ("mlops.train.models", "train"),  # the built-in model, reached only through `model._target_`
    ("mlops.train.datamodule", "train"),  # the built-in datamodule, likewise
    ("mlops.package.export", "evaluate"),  # evaluate scores through export's torch_outputs
    ("mlops.evaluate.stats", "assess"),  # transitive: assess -> evaluate.assess -> gates -> stats
    ("mlops.package.predictor", "evaluate"),  # evaluate feeds the bundle through the serving predictor
])
def test_editing_an_imported_module_reruns_its_step_and_downstream_only(
        package: Path, tmp_path: Path, module: str, first: str) -> None:
    before = keys([], tmp_path)
    edit(module_file(package, module))
    assert changed(before, keys([], tmp_path)) == downstream(first, tmp_path)


def test_editing_modules_no_step_imports_changes_no_key(package: Path, tmp_path: Path) -> None:
    no_load_test = ["gates=classification"]  # quickstart's load test starts the server: its code counts then
    before = keys(no_load_test, tmp_path)
    unrelated = [*package.glob("cli.py"), *(package / "cli").rglob("*.py"), *(package / "deploy").rglob("*.py"),
                 *(package / "monitor").rglob("*.py")]
    assert len(unrelated) > 10
    for path in unrelated:
        edit(path)
    assert keys(no_load_test, tmp_path) == before


def test_a_load_test_reruns_when_the_server_it_starts_changes(package: Path, tmp_path: Path) -> None:
    """The load test runs `python -m mlops.cli serve` in a process of its own: no step imports the server, yet
    its figures are the server's, so an edit to the serving code re-runs the assessment (and not training)."""
    before = keys([], tmp_path)
    without = keys(["gates=classification"], tmp_path)
    edit(module_file(package, "mlops.serve.app"))
    assert changed(before, keys([], tmp_path)) == downstream("assess", tmp_path)
    assert keys(["gates=classification"], tmp_path) == without


def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A package of the user's own, importable through sys.path. A fresh name per test: `find_spec` answers
    from sys.modules for a package some earlier test imported."""
    name = f"usercode_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "src" / name
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "layers.py").write_text("import numpy as np\n\n\nclass Block:\n    width = 8\n")
    (root / "net.py").write_text("from mlops.train.models import TabularMLP\n\nfrom .layers import Block\n\n\n"
                                 "class Net(TabularMLP):\n    block = Block\n")
    (root / "metrics.py").write_text("def cost(y_true, y_score):\n    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    return name, root


def test_editing_the_users_model_reruns_train_and_downstream(
        package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, root = user_package(tmp_path, monkeypatch)
    overrides = [f"model._target_={name}.net.Net"]
    base = keys(overrides, tmp_path)
    expected = downstream("train", tmp_path)
    edit(root / "net.py")
    after_model = keys(overrides, tmp_path)
    assert changed(base, after_model) == expected
    edit(root / "layers.py")  # imported by the model module: same package, followed
    after_layers = keys(overrides, tmp_path)
    assert changed(after_model, after_layers) == expected
    edit(module_file(package, "mlops.train.models"))  # the mlops class the user's model builds on
    after_mlops = keys(overrides, tmp_path)
    assert changed(after_layers, after_mlops) == expected
    edit(root / "metrics.py")  # in the package, but the model does not import it
    assert keys(overrides, tmp_path) == after_mlops


def test_editing_the_users_custom_metric_reruns_evaluate_and_downstream(
        package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, root = user_package(tmp_path, monkeypatch)
    overrides = [f"++evaluate.custom_metrics.cost._target_={name}.metrics.cost"]
    before = keys(overrides, tmp_path)
    edit(root / "metrics.py")
    assert changed(before, keys(overrides, tmp_path)) == downstream("evaluate", tmp_path)


def test_a_library_upgrade_reruns_the_steps_that_import_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlops.engine import codeversion

    real = codeversion.installed.version
    before = keys([], tmp_path)
    monkeypatch.setattr(codeversion.installed, "version", lambda d: "99.0" if d == "torch" else real(d))
    assert changed(before, keys([], tmp_path)) == downstream("train", tmp_path)


def test_library_versions_are_remembered_until_an_install_changes_sys_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan reads the result-shaping libraries' versions from the workspace's memo; a directory on sys.path
    that changed (an install, an upgrade) makes it read the metadata again."""
    import importlib.metadata

    from mlops.core import installed

    memo, real = tmp_path / "memo.json", importlib.metadata.version
    monkeypatch.setattr(installed, "_versions", {})
    monkeypatch.setattr(installed, "_read_under", None)
    with installed.remembered_versions(memo):
        assert installed.version("numpy") == real("numpy")
        assert installed.version("no-such-distribution-here") == installed.ABSENT
    monkeypatch.setattr(installed, "_versions", {})  # a new process
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "99.0")  # what a read would now find
    with installed.remembered_versions(memo):
        assert installed.version("numpy") == real("numpy")  # remembered, not read
    monkeypatch.setattr(installed, "_versions", {})
    monkeypatch.setattr(installed, "installed_stamp", lambda: [["/an/install", 1]])
    with installed.remembered_versions(memo):
        assert installed.version("numpy") == "99.0"


def test_a_long_lived_process_forgets_versions_read_before_an_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep or a notebook that planned before `pip install -U` must not write the old version under the new
    stamp, where every later plan would take it."""
    import json

    from mlops.core import installed

    memo = tmp_path / "memo.json"
    monkeypatch.setattr(installed, "_versions", {})
    monkeypatch.setattr(installed, "_read_under", None)
    monkeypatch.setattr(installed, "installed_stamp", lambda: [["/site", 1]])
    with installed.remembered_versions(memo):
        installed._versions["torch"] = "1.0.0"  # read before the upgrade
    monkeypatch.setattr(installed, "installed_stamp", lambda: [["/site", 2]])  # the upgrade
    with installed.remembered_versions(memo):
        installed.version("numpy")
    assert "torch" not in json.loads(memo.read_text())["versions"]
    assert json.loads(memo.read_text())["stamp"] == [["/site", 2]]


def test_only_directories_holding_distributions_stamp_what_is_installed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The working directory (sys.path's first entry under `python -m`) changes with every file written there:
    it must not throw the memo away."""
    import os
    import sys

    from mlops.core import installed

    site, work = tmp_path / "site", tmp_path / "work"
    (site / "numpy-2.0.dist-info").mkdir(parents=True)
    work.mkdir()
    monkeypatch.setattr(sys, "path", [str(work), str(site), str(tmp_path / "gone.zip")])
    os.utime(site, ns=(0, 0))  # so that an install moves its time whatever the file system's clock granularity
    before = installed.installed_stamp()
    assert [entry for entry, _ in before] == [str(site)]
    (work / "new-file").write_text("")
    assert installed.installed_stamp() == before
    (site / "torch-2.0.dist-info").mkdir()
    assert installed.installed_stamp() != before


def test_the_remembered_parses_keep_one_entry_a_module(tmp_path: Path) -> None:
    """An edited module is parsed again; its older parse is not written back, so the memo does not grow with
    every edit (nor keep a deleted module)."""
    import json
    import os

    from mlops.engine import codeversion

    memo, module, gone = tmp_path / "memo.json", tmp_path / "mod.py", tmp_path / "gone.py"
    module.write_text("import json\n")
    gone.write_text("import os\n")
    with codeversion.remembered_parses(memo):
        codeversion.parse(module, "mod", False)
        codeversion.parse(gone, "gone", False)
    module.write_text("import json, csv\n")
    os.utime(module, ns=(1, 10**18))  # another version whatever the file system's clock granularity
    gone.unlink()
    with codeversion.remembered_parses(memo):
        assert "csv" in codeversion.parse(module, "mod", False).imports
    saved = [entry for entry in json.loads(memo.read_text()) if entry[0] in (str(module), str(gone))]
    assert [(entry[0], entry[2]) for entry in saved] == [(str(module), 10**18)]


def test_every_planned_step_has_its_own_module(tmp_path: Path) -> None:
    from mlops.engine.execute import STEP_RESULTS, step_fn
    from mlops.engine.results import result_type

    assert list(STEP_RESULTS) == list(keys([], tmp_path))
    assert all(step_fn(name).__module__ == f"mlops.engine.steps.{name}" for name in STEP_RESULTS)
    # a cached step is parsed into the table's model: it must be the one its function returns
    assert {name: result_type(step_fn(name)) for name in STEP_RESULTS} == STEP_RESULTS


def test_no_step_names_an_mlops_module_only_in_a_string(tmp_path: Path) -> None:
    """`python -m mlops.x` or `import_module("mlops.x")` hides a module from the import closure: a step
    must import what it runs so that the module is part of its code version."""
    from mlops.engine.codeversion import Snapshot
    from mlops.engine.plan import PACKAGE

    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
               for p in PACKAGE.rglob("*.py")}
    snapshot, roots = Snapshot(), {"mlops": (PACKAGE,)}
    plan = compile_plan(load_validated(QUICKSTART, []), Cache(tmp_path))  # its load test starts `mlops serve`
    for planned in plan.steps:
        step = planned.name
        # what a step runs in a process of its own joins its code version as a target (the load test's server)
        targets = [t.rpartition(".")[0] for t in planned.targets if t.startswith("mlops.")]
        reached = dict(snapshot.closure([f"mlops.engine.steps.{step}", *targets], roots).modules)
        assert f"mlops.engine.steps.{step}" in reached
        for name in reached:
            tree = ast.parse(module_file(PACKAGE, name).read_bytes())
            named = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in modules}
            assert named <= reached.keys(), f"step {step}: {name} names {named - reached.keys()} in a string"


def test_the_text_encoders_shape_reruns_training_but_keeps_the_tokenizer(tmp_path: Path) -> None:
    before = keys([], tmp_path)
    assert changed(before, keys(["model.text.depth=3", "model.text.width=64"], tmp_path)) == \
        downstream("train", tmp_path)
    assert changed(before, keys(["model.text.vocab_size=500"], tmp_path)) == downstream("preprocess", tmp_path)
    assert changed(before, keys(["model.text.max_length=64"], tmp_path)) == downstream("preprocess", tmp_path)
