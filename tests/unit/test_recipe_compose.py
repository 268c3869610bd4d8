"""Composition: defaults lists, overrides, group choices, origins, the recipe hash, the JSON Schema, multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops.cli import main
from mlops.core.errors import MlopsError, RecipeError
from mlops.engine.multirun import expand
from mlops.engine.validate import load_validated
from mlops.recipe import load_recipe
from mlops.recipe.compose import SHIPPED_CONFIGS, Origin, compose
from tests.shipped import RECIPES, ensure_example_data, required_overrides

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = "recipes/quickstart.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)  # origins are shown relative to the working directory
    monkeypatch.delenv("MLOPS_CONFIG_PATH", raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))


def line_of(path: str, text: str, after: str | None = None) -> int:
    """The 1-based line of `path` whose stripped text starts with `text` (the first one after `after`)."""
    rows = (REPO / path).read_text().splitlines()
    start = 0 if after is None else next(i for i, r in enumerate(rows) if r.strip().startswith(after)) + 1
    hits = [i + 1 for i in range(start, len(rows)) if rows[i].strip().startswith(text)]
    assert hits, f"test bug: no line starting with {text!r} in {path}"
    return hits[0]


def test_quickstart_composes_from_its_groups() -> None:
    loaded = load_validated(QUICKSTART)  # with the data checks: the columns of breast_cancer are read

    r = loaded.recipe
    assert r.name == "quickstart"
    assert r.data.dataset == "breast_cancer" and r.data.path is None
    assert r.data.target == "target" and r.data.task == "binary"
    assert r.model.hidden == [64, 32] and r.model.optimizer == "adam"
    assert r.trainer.accelerator == "cpu" and r.trainer.devices == 1
    assert r.trainer.max_epochs == 15  # the recipe (merged after _self_) beats trainer/cpu.yaml's 20
    assert not r.trainer.multiprocess
    resolved = loaded.resolved()
    assert resolved["model"]["_target_"] == "mlops.train.models.TabularMLP"  # by alias, as users write it
    assert resolved["export"]["opset"] == 18 and resolved["trainer"]["num_nodes"] == 1  # defaults filled in
    assert loaded.path == (REPO / QUICKSTART).resolve()
    assert loaded.overrides == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.max_epochs=3", "model.hidden=[64,32]"], {"trainer.max_epochs": 3, "model.hidden": [64, 32]}),
        (["model.hidden=[128,16,8]", "model.lr=0.05"], {"model.hidden": [128, 16, 8], "model.lr": 0.05}),
        (["model.optimizer=sgd", "seed=7"], {"model.optimizer": "sgd", "seed": 7, "split_seed": 7}),
        (["trainer.early_stopping=null"], {"trainer.early_stopping": None}),
        (["data.split.seed=5", "seed=7"], {"split_seed": 5, "seed": 7}),
    ],
    ids=["max_epochs-and-hidden", "hidden-and-lr", "optimizer-and-seed", "disable-early-stopping",
         "split-seed-beats-seed"],
)
def test_overrides_change_values(overrides: list[str], expected: dict[str, object]) -> None:
    loaded = load_recipe(QUICKSTART, overrides)

    for dotted, value in expected.items():
        node: object = loaded.recipe
        for part in dotted.split("."):
            node = getattr(node, part)
        assert node == value, dotted
    assert loaded.overrides == overrides
    for o in overrides:
        key = o.partition("=")[0]
        assert str(loaded.composed.origin(key)) == f"command-line override '{o}'"


def test_group_override_swaps_the_trainer_config() -> None:
    loaded = load_recipe(QUICKSTART, ["trainer=ddp_cpu"])

    t = loaded.recipe.trainer
    assert (t.devices, t.strategy) == (2, "ddp")
    assert t.accelerator == "cpu" and t.precision == "32-true"  # inherited from trainer/cpu.yaml
    assert t.max_epochs == 15  # the recipe's own value still wins over the group's
    assert t.multiprocess


def test_group_override_and_value_override_combine() -> None:
    loaded = load_recipe(QUICKSTART, ["trainer=ddp_cpu", "trainer.devices=3", "data=wine"])

    assert loaded.recipe.trainer.devices == 3 and loaded.recipe.trainer.strategy == "ddp"
    assert loaded.recipe.data.dataset == "wine" and loaded.recipe.data.split.train == 0.6


@pytest.mark.parametrize("override", ["+trainer.foo=1", "+colour=red", "+model.params_=1"])
def test_append_of_unknown_key_is_refused(override: str) -> None:
    key = override[1:].partition("=")[0]

    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, [override])

    [problem] = info.value.problems
    assert problem.key == key
    assert problem.message == "unknown key"
    assert problem.where == f"command-line override '{override}'"


def test_append_of_existing_key_is_refused_naming_the_override() -> None:
    with pytest.raises(MlopsError, match=r"command-line override '\+trainer\.max_epochs=3'.*already"):
        load_recipe(QUICKSTART, ["+trainer.max_epochs=3"])


def test_origins_point_at_the_file_and_line_that_set_each_key() -> None:
    composed = compose(QUICKSTART)

    o = composed.origins
    assert o["name"] == Origin(QUICKSTART, line_of(QUICKSTART, "name:"))
    assert o["trainer.max_epochs"] == Origin(QUICKSTART, line_of(QUICKSTART, "max_epochs:"))
    bc = "mlops/configs/data/breast_cancer.yaml"
    assert o["data.dataset"] == Origin(bc, line_of(bc, "dataset:"))
    assert o["data.task"] == Origin(bc, line_of(bc, "task:"))
    gates = "mlops/configs/gates/classification_load.yaml"
    assert o["evaluate.gates.1.vs"] == Origin(gates, line_of(gates, "vs:"))
    deploy = "mlops/configs/deploy/default.yaml"  # reached through mlops/configs/base.yaml's defaults list
    assert o["deploy.prefect.flows.train.cron"] == Origin(deploy, line_of(deploy, "train:"))
    assert "defaults" not in o and not any(k.startswith("defaults.") for k in o)
    # the schema's defaults are set by no file
    assert not any(k.startswith(("trainer.accelerator", "model.", "monitor.", "improve.")) for k in o)
    # a key below one that was set falls back to its nearest ancestor; an unset key to the recipe itself
    assert composed.origin("evaluate.gates.1.alpha") == o["evaluate.gates.1"]
    assert str(composed.origin("export.opset")) == f"{QUICKSTART}:1"


def test_origins_follow_a_group_override_and_command_line_values() -> None:
    composed = compose(QUICKSTART, ["trainer=ddp_cpu", "deploy=triton_gpu", "model.lr=0.5", "monitor.window.size=9"])

    ddp = "mlops/configs/trainer/ddp_cpu.yaml"
    assert composed.origin("trainer.devices") == Origin(ddp, line_of(ddp, "devices:"))
    assert composed.origin("trainer.strategy") == Origin(ddp, line_of(ddp, "strategy:"))
    gpu, triton = "mlops/configs/deploy/triton_gpu.yaml", "mlops/configs/deploy/triton.yaml"  # triton_gpu extends triton
    assert composed.origin("deploy.resources.gpus") == Origin(gpu, line_of(gpu, "gpus:"))
    assert composed.origin("deploy.runtime") == Origin(triton, line_of(triton, "runtime:"))
    assert str(composed.origin("model.lr")) == "command-line override 'model.lr=0.5'"
    assert composed.config["model"]["lr"] == 0.5
    # a section no file sets (a rule of its own broke) points at what set a key below it
    assert str(composed.origin("monitor.window")) == "command-line override 'monitor.window.size=9'"


def test_recipe_hash_is_stable_and_tracks_values(monkeypatch: pytest.MonkeyPatch) -> None:
    base = load_recipe(QUICKSTART)
    again = load_recipe(QUICKSTART)
    same_value = load_recipe(QUICKSTART, ["trainer.max_epochs=15"])  # what the recipe says
    changed = load_recipe(QUICKSTART, ["trainer.max_epochs=16"])
    grouped = load_recipe(QUICKSTART, ["trainer=ddp_cpu"])
    monkeypatch.chdir(REPO / "recipes")
    elsewhere = load_recipe("quickstart.yaml")

    assert len(base.hash) == 64 and int(base.hash, 16) >= 0
    assert base.hash == again.hash == same_value.hash == elsewhere.hash
    assert changed.hash != base.hash
    assert grouped.hash not in (base.hash, changed.hash)


def test_recipe_hash_ignores_how_a_value_was_written(tmp_path: Path) -> None:
    """The hash is of the resolved recipe: writing a default explicitly, or in another form, changes nothing."""
    (tmp_path / "recipes").mkdir()  # no configs/: the groups come from the package
    head = "defaults:\n  - data: breast_cancer\n  - model: mlp\n  - trainer: cpu\n  - _self_\nname: q\n"
    plain = tmp_path / "recipes" / "a.yaml"
    plain.write_text(head + "trainer:\n  max_epochs: 15\n")
    explicit = tmp_path / "recipes" / "b.yaml"
    explicit.write_text(head + "trainer: {max_epochs: 15, num_nodes: 1}\nexport: {opset: 18}\nmodel:\n  lr: 0.001\n")
    other = tmp_path / "recipes" / "c.yaml"
    other.write_text(head + "trainer:\n  max_epochs: 15\nexport: {opset: 17}\n")

    base = load_recipe(plain).hash
    assert load_recipe(explicit).hash == base
    assert load_recipe(other).hash != base


def _schema_from_cli(capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["schema"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return json.loads(out)


def test_schema_command_prints_a_json_schema(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    schema = _schema_from_cli(capsys)

    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert {"name", "data"} <= set(schema["required"])
    assert "trainer" in schema["properties"]
    trainer = schema["$defs"]["TrainerConfig"]
    assert trainer["additionalProperties"] is False  # typos are errors in editors too
    assert trainer["properties"]["max_epochs"]["type"] == "integer"
    assert "_target_" in schema["$defs"]["ModelConfig"]["properties"]  # the alias users write, not `target`

    out = tmp_path / "schema.json"
    assert main(["schema", "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text()) == schema


def test_composed_quickstart_validates_against_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    schema = _schema_from_cli(capsys)
    resolved = load_recipe(QUICKSTART).resolved()
    typo = json.loads(json.dumps(resolved))
    typo["trainer"]["max_epoch"] = 3
    wrong_type = json.loads(json.dumps(resolved))
    wrong_type["trainer"]["max_epochs"] = "abc"

    try:
        import jsonschema
    except ImportError:  # structural checks only
        assert set(resolved) <= set(schema["properties"])
        assert set(resolved["trainer"]) <= set(schema["$defs"]["TrainerConfig"]["properties"])
        assert "max_epoch" not in schema["$defs"]["TrainerConfig"]["properties"]
        return
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    assert list(validator.iter_errors(resolved)) == []
    assert [list(e.absolute_path) for e in validator.iter_errors(typo)] == [["trainer"]]
    assert [list(e.absolute_path) for e in validator.iter_errors(wrong_type)] == [["trainer", "max_epochs"]]


def test_multirun_expands_to_the_cartesian_product() -> None:
    jobs = expand(["a=1,2", "b=x,y"])

    assert len(jobs) == 4
    assert sorted(map(tuple, jobs)) == [("a=1", "b=x"), ("a=1", "b=y"), ("a=2", "b=x"), ("a=2", "b=y")]
    assert expand(["a=1", "b=x"]) == [["a=1", "b=x"]]
    assert len(expand(["a=1,2,3", "b=x,y", "c=z"])) == 6


def test_multirun_jobs_compose_into_distinct_recipes() -> None:
    jobs = expand(["trainer.max_epochs=1,2", "model.lr=0.1"])
    loaded = [load_recipe(QUICKSTART, job) for job in jobs]

    assert sorted(r.recipe.trainer.max_epochs for r in loaded) == [1, 2]
    assert {r.recipe.model.lr for r in loaded} == {0.1}
    assert len({r.hash for r in loaded}) == 2


def test_multirun_rejects_an_unparsable_override() -> None:
    with pytest.raises(MlopsError, match="cannot parse overrides"):
        expand(["a=[1,"])


@pytest.mark.parametrize("recipe", [p.name for p in RECIPES])
def test_every_shipped_recipe_validates(recipe: str, tmp_path: Path) -> None:
    ensure_example_data()
    path = REPO / "recipes" / recipe
    loaded = load_validated(path, required_overrides(path, tmp_path))
    assert loaded.recipe.name and loaded.recipe.data.target


def test_threads_composing_at_once_each_get_their_own_recipe() -> None:
    # Hydra's loader is a process-wide singleton: two retrains triggered together once cleared each other's
    from concurrent.futures import ThreadPoolExecutor

    epochs = list(range(1, 9))
    with ThreadPoolExecutor(max_workers=8) as pool:
        composed = list(pool.map(lambda e: compose(QUICKSTART, [f"trainer.max_epochs={e}"]), epochs))
    assert [c.config["trainer"]["max_epochs"] for c in composed] == epochs


def user_project(root: Path) -> Path:
    """A project as `mlops init` lays it out: `configs/` holds only its own data group, the rest is shipped."""
    (root / "configs" / "data").mkdir(parents=True)
    (root / "configs" / "data" / "mine.yaml").write_text("dataset: wine\ntarget: target\n")
    (root / "recipes" / "experiments").mkdir(parents=True)
    return root


PROJECT_RECIPE = "defaults:\n  - base\n  - data: mine\n  - gates: multiclass\n  - _self_\nname: mine\n"


def test_a_project_recipe_finds_the_shipped_groups_from_any_folder(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = user_project(tmp_path)
    monkeypatch.chdir(root)
    top = root / "recipes" / "mine.yaml"
    top.write_text(PROJECT_RECIPE)
    deep = root / "recipes" / "experiments" / "deep.yaml"  # beside neither configs/ nor recipes/
    deep.write_text(PROJECT_RECIPE + "trainer:\n  max_epochs: 2\n")

    for recipe in (top, deep):
        loaded = load_validated(recipe)
        assert loaded.recipe.data.dataset == "wine"
        assert loaded.composed.origin("data.dataset") == Origin("configs/data/mine.yaml", 1)
        shipped = SHIPPED_CONFIGS / "deploy" / "default.yaml"  # through the shipped base.yaml
        assert loaded.composed.origin("deploy.prefect.flows.train.cron").file == str(shipped)
    assert load_recipe(deep).recipe.trainer.max_epochs == 2


def test_a_project_file_overrides_the_shipped_one_of_the_same_name(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = user_project(tmp_path)
    monkeypatch.chdir(root)
    (root / "configs" / "trainer").mkdir()
    (root / "configs" / "trainer" / "cpu.yaml").write_text("max_epochs: 3\n")
    (root / "recipes" / "mine.yaml").write_text(PROJECT_RECIPE)

    composed = compose("recipes/mine.yaml")

    assert composed.config["trainer"]["max_epochs"] == 3
    assert composed.origin("trainer.max_epochs") == Origin("configs/trainer/cpu.yaml", 1)


def test_a_missing_group_option_lists_the_folders_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = user_project(tmp_path)
    monkeypatch.chdir(root)
    (root / "recipes" / "mine.yaml").write_text(PROJECT_RECIPE)

    assert main(["validate", "recipes/mine.yaml", "improve=nightly"]) == 2

    looked = f"recipes/improve/, configs/improve/, {SHIPPED_CONFIGS / 'improve'}/"
    assert (f"no config 'nightly' in group 'improve' (options: default; looked in {looked})"
            in capsys.readouterr().err)


@pytest.mark.parametrize(("text", "line", "message"), [
    ("- name: mine\n- data: mine\n", 1,
     "the file is a YAML list; a recipe or config file is a mapping of keys (`defaults:`, `name:`, `data:`, ...): "
     "remove the leading '- '"),
    ("defaults:\n  - base\n  - mine\n  - _self_\nname: mine\n", 3,
     "defaults: 'mine' is this file itself: a config cannot extend itself (remove the line)"),
    ("name: mine\ndefault:\n  - base\n  - data: mine\n  - _self_\n", 2,
     "default: unknown key; did you mean 'defaults' (the list of configs this file extends)?"),
    ("shared: &d\n  - base\n  - mine\ndefaults: *d\nname: mine\n", 4,  # no item's own line: the key's
     "defaults: 'mine' is this file itself: a config cannot extend itself (remove the line)"),
    ("name: mine\nmodel:\n  lr: 0.1\x01\n", 3,
     "not valid YAML: character #x0001: control characters are not allowed"),
    ("defaults:\n  - base\n  - data: mine\n  - self\nname: mine\n", 4,
     "defaults: no config 'self' (did you mean '_self_', where this file's own values merge?)"),
], ids=["a-list", "includes-itself", "default-for-defaults", "includes-itself-through-an-alias",
        "a-control-character", "self-for-_self_"])
def test_a_malformed_recipe_is_worded_at_its_line(text: str, line: int, message: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = user_project(tmp_path)
    monkeypatch.chdir(root)
    (root / "recipes" / "mine.yaml").write_text(text)

    assert main(["validate", "recipes/mine.yaml"]) == 2
    assert capsys.readouterr().err == f"error: recipes/mine.yaml:{line}: {message}\n"


@pytest.mark.parametrize(("text", "err"), [
    ("defaults:\n  - base\n  - data: mine\n  - self\nname: mine\n",
     "error: recipes/mine.yaml:4: defaults: no config 'self' (did you mean '_self_', where this file's own values"
     " merge?)\n"),
    ("defaults:\n  - base\n  - data: mine\nname: mine\n", ""),  # merged last all the same
], ids=["misspelt", "left-out"])
def test_no_hydra_warning_about_self_reaches_the_terminal(text: str, err: str, tmp_path: Path) -> None:
    """In a fresh interpreter, as a user runs it (pytest would catch the warning): Hydra warns from its
    site-packages that `_self_` is missing, which says nothing of a misspelt one."""
    root = user_project(tmp_path)
    (root / "recipes" / "mine.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_CONFIG_PATH"} | {"MLOPS_HOME": str(tmp_path / ".h")}

    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "run", "--cfg", "job", "recipes/mine.yaml"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)

    assert proc.stderr == err
    assert proc.returncode == (2 if err else 0)


def test_defaults_lists_that_include_each_other_are_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = user_project(tmp_path)
    monkeypatch.chdir(root)
    (root / "configs" / "data" / "a.yaml").write_text("defaults:\n  - b\n  - _self_\ntarget: target\n")
    (root / "configs" / "data" / "b.yaml").write_text("defaults:\n  - a\n  - _self_\ndataset: wine\n")
    (root / "recipes" / "mine.yaml").write_text(PROJECT_RECIPE.replace("data: mine", "data: a"))

    assert main(["validate", "recipes/mine.yaml"]) == 2
    assert capsys.readouterr().err == ("error: configs/data/b.yaml:2: defaults: 'data/a' closes a cycle of defaults "
                                       "lists: configs/data/a.yaml -> configs/data/b.yaml -> configs/data/a.yaml\n")
