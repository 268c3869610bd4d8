"""Hydra's command-line conventions on `mlops run`: `--cfg job|hydra|all` (with `--resolve`, `-p`), `--info`,
`-cp/-cn`, and `-sc install=bash` shell completion; and the guard on the one module that uses Hydra's
private API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlops.cli import main
from mlops.cli.completion import candidates

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = "recipes/quickstart.yaml"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    monkeypatch.delenv("MLOPS_CONFIG_PATH", raising=False)
    monkeypatch.chdir(REPO)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


# --- the private-API guard ------------------------------------------------------------------------------


def test_hydra_private_api_is_used_by_one_module_only() -> None:
    users = [str(p.relative_to(REPO)) for p in (REPO / "mlops").rglob("*.py")
             if "hydra._internal" in p.read_text() and p.name != "hydra_internals.py"]
    assert users == [], f"import hydra._internal only in mlops/recipe/hydra_internals.py, found it in {users}"


def test_the_private_api_we_use_still_behaves_as_we_read_it() -> None:
    """Fails on a Hydra upgrade that moves or changes BasicSweeper.split_arguments (multirun's expansion) or
    the defaults-list entries `hydra_view` reads: fix mlops/recipe/hydra_internals.py, then this test."""
    import hydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mlops.recipe.hydra_internals import TESTED_HYDRA, split_sweep

    assert hydra.__version__.startswith(TESTED_HYDRA + "."), (
        f"Hydra {hydra.__version__} is installed; mlops/recipe/hydra_internals.py was read from {TESTED_HYDRA}")
    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x,y", "c=3"])
    assert split_sweep(parsed) == [["a=1", "b=x", "c=3"], ["a=1", "b=y", "c=3"],
                                   ["a=2", "b=x", "c=3"], ["a=2", "b=y", "c=3"]]
    from hydra._internal.defaults_list import ResultDefault

    assert {"config_path", "package", "parent"} <= set(ResultDefault.__dataclass_fields__)


# --- --cfg ------------------------------------------------------------------------------------------------


def test_cfg_job_prints_what_the_job_gets_without_running(capsys: pytest.CaptureFixture[str]) -> None:
    job = yaml.safe_load(_run(capsys, "run", "--cfg", "job", QUICKSTART, "trainer.max_epochs=3", "model.lr=0.02"))

    assert job["trainer"]["max_epochs"] == 3 and job["model"]["lr"] == 0.02
    assert job["name"] == "quickstart" and job["seed"] is not None  # a default no file sets: the schema's
    assert "hydra" not in job


def test_cfg_all_adds_hydras_node_and_hydra_alone_has_only_it(capsys: pytest.CaptureFixture[str]) -> None:
    everything = yaml.safe_load(_run(capsys, "run", "--cfg", "all", QUICKSTART, "model=cnn", "trainer.max_epochs=2"))
    hydra_only = yaml.safe_load(_run(capsys, "run", "-c", "hydra", QUICKSTART, "model=cnn", "trainer.max_epochs=2"))

    assert list(hydra_only) == ["hydra"]
    assert everything["hydra"] == hydra_only["hydra"]
    assert everything["hydra"]["overrides"]["task"] == ["model=cnn", "++trainer.max_epochs=2"]
    assert everything["hydra"]["runtime"]["choices"]["model"] == "cnn"
    assert everything["model"]["_target_"] != yaml.safe_load(
        _run(capsys, "run", "--cfg", "job", QUICKSTART))["model"]["_target_"]


def test_cfg_keeps_interpolations_unless_resolve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "interp.yaml"
    recipe.write_text("defaults:\n  - base\n  - data: breast_cancer\n  - gates: classification\n  - _self_\n"
                      "name: interp\nseed: 7\ndata:\n  split:\n    seed: ${seed}\n")

    raw = yaml.safe_load(_run(capsys, "run", "--cfg", "job", str(recipe), "seed=11"))
    resolved = yaml.safe_load(_run(capsys, "run", "--cfg", "job", "--resolve", str(recipe), "seed=11"))

    assert raw["data"]["split"]["seed"] == "${seed}" and raw["seed"] == 11
    assert resolved["data"]["split"]["seed"] == 11


def test_cfg_package_and_multirun_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "run", "--json", "--cfg", "job", "-p", "trainer.max_epochs", "-m", QUICKSTART,
               "trainer.max_epochs=3,4")

    assert json.loads(out) == {"jobs": [{"trainer.max_epochs": 3}, {"trainer.max_epochs": 4}]}


def test_cfg_of_an_unknown_package_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--cfg", "job", "-p", "trainer.nope", QUICKSTART]) == 2
    assert "--package trainer.nope: no such key" in capsys.readouterr().err


def test_cfg_job_imports_nothing_heavy(tmp_path: Path) -> None:
    script = ("import json, sys; from mlops.cli import main; code = main(sys.argv[1:]); "
              "heavy = ('torch', 'lightning', 'mlflow', 'prefect', 'evidently', 'sklearn', 'onnxruntime'); "
              "print('RESULT', json.dumps([code, sorted(n for n in sys.modules if n.split('.')[0] in heavy)]))")
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_CONFIG_PATH"} | {"MLOPS_HOME": str(tmp_path)}
    for argv in (["run", "--cfg", "all", QUICKSTART], ["run", "--info", QUICKSTART]):
        proc = subprocess.run([sys.executable, "-c", script, *argv], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
        assert result == [0, []], proc.stderr


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path: Path) -> None:
    """`mlops run --info RECIPE | head -2`: the pipe closes before the output is written; no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_CONFIG_PATH"} | {"MLOPS_HOME": str(tmp_path)}
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        proc = subprocess.run([sys.executable, "-m", "mlops.cli", "run", "--info", QUICKSTART], cwd=REPO, env=env,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


# --- -cp / -cn ----------------------------------------------------------------------------------------------


def test_config_path_and_name_name_the_same_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    by_file = _run(capsys, "run", "--cfg", "job", QUICKSTART, "trainer.max_epochs=5")
    by_name = _run(capsys, "run", "--cfg", "job", "-cp", "recipes", "-cn", "quickstart", "trainer.max_epochs=5")
    long_form = _run(capsys, "run", "--cfg", "job", "--config-path=recipes", "--config-name=quickstart.yaml",
                     "trainer.max_epochs=5")

    assert by_file == by_name == long_form
    assert yaml.safe_load(by_name)["trainer"]["max_epochs"] == 5


def test_a_recipe_given_twice_or_not_at_all_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--cfg", "job", "-cn", "quickstart", QUICKSTART]) == 2
    assert "give the recipe once" in capsys.readouterr().err
    assert main(["run", "--cfg", "job", "trainer.max_epochs=3"]) == 2
    assert "give a RECIPE" in capsys.readouterr().err


# --- --info -----------------------------------------------------------------------------------------------


def test_info_lists_the_search_path_in_order_with_its_sources(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "proj"
    (project / "recipes").mkdir(parents=True)
    (project / "configs" / "model").mkdir(parents=True)
    (project / "configs" / "model" / "wide.yaml").write_text("hidden: [128, 128]\n")
    shutil.copy(REPO / QUICKSTART, project / "recipes" / "q.yaml")
    extra = tmp_path / "extra"
    extra.mkdir()
    monkeypatch.setenv("MLOPS_CONFIG_PATH", str(extra))

    info = json.loads(_run(capsys, "run", "--json", "--info", str(project / "recipes" / "q.yaml"), "model=wide"))

    sources = [(d["source"], Path(d["path"])) for d in info["searchpath"]]
    assert sources[0] == ("recipe", (project / "recipes").resolve())
    assert sources[1] == ("MLOPS_CONFIG_PATH", extra.resolve())
    assert ("project", (project / "configs").resolve()) in sources
    assert sources[-1][0] == "mlops"
    configs = [d["config"] for d in info["defaults"]]
    assert configs[-1] == "q" and configs.index("base") < configs.index("data/breast_cancer")
    wide = next(d for d in info["defaults"] if d["config"] == "model/wide")
    assert Path(wide["file"]).resolve() == (project / "configs" / "model" / "wide.yaml").resolve()
    assert info["config"]["model"]["hidden"] == [128, 128]


def test_info_kinds_print_only_their_part(capsys: pytest.CaptureFixture[str]) -> None:
    only_defaults = _run(capsys, "run", "--info", "defaults", QUICKSTART)
    assert "Defaults list" in only_defaults and "search path" not in only_defaults
    assert "gates/classification_load@evaluate" in only_defaults


# --- shell completion -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "expected", "absent"), [
    ("mlops ru", ["run", "runs"], ["serve"]),
    ("mlops run --all", ["--allow-failed-gates"], []),
    ("mlops run --cfg ", ["all", "hydra", "job"], []),
    (f"mlops run {QUICKSTART} model=", ["cnn", "mlp"], ["model=mlp"]),  # bash replaces only what follows '='
    (f"mlops run {QUICKSTART} trainer.max", ["trainer.max_epochs="], []),
    (f"mlops run {QUICKSTART} trai", ["trainer.", "trainer="], []),
    ("mlops ab ", ["report"], []),
])
def test_completion_candidates(line: str, expected: list[str], absent: list[str]) -> None:
    found = candidates(line)
    assert set(expected) <= set(found), found
    assert not set(absent) & set(found)


def test_installed_bash_script_completes_through_bash(capsys: pytest.CaptureFixture[str]) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash on this machine")
    script = _run(capsys, "-sc", "install=bash")
    line = f"mlops run {QUICKSTART} trainer.max"
    probe = (f'{script}\nCOMP_LINE="{line}"; COMP_POINT={len(line)}; _mlops_complete; printf "%s\\n" "${{COMPREPLY[@]}}"'
             "\ncomplete -p mlops")
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([bash, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "trainer.max_epochs="
    assert "-F _mlops_complete" in proc.stdout


def test_shell_completion_refuses_an_unknown_shell(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-sc", "install=fish"]) == 2
    assert "install=bash" in capsys.readouterr().err
