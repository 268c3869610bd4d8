"""`mlops sweep` end to end: an Optuna study driven by a Prefect flow, one subprocess per trial.

Every test writes a tiny recipe into its tmp_path (its config groups come from the package's
`mlops/configs/` through MLOPS_CONFIG_PATH), runs the real CLI in a subprocess and then reads the study
back with `optuna.load_study` (and the MLflow store where a trial's run matters).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, cli_env, last_json, run_cli

pytestmark = pytest.mark.integration

BASE = """\
defaults:
  - data: breast_cancer
  - model: mlp
  - trainer: {trainer}
  - _self_

name: {name}
seed: 7
"""


def _recipe(tmp_path: Path, name: str, body: str, trainer: str = "cpu") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(BASE.format(name=name, trainer=trainer) + textwrap.dedent(body))
    return path


def _env(isolated_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in isolated_env.items()
           if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return env | {"MLOPS_CONFIG_PATH": str(ROOT / "mlops" / "configs")} | extra


def _study(result: dict[str, Any]) -> Any:
    """The study a sweep reported, read back from its storage."""
    return _load(result["storage"], result["study_name"])


def _load(storage: str, name: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage)


def _storage(env: dict[str, str]) -> str:
    return f"sqlite:///{Path(env['MLOPS_HOME']) / 'optuna.db'}"


def _states(study: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.state.name, []).append(t)
    return out


def _show(study: Any) -> str:
    return "\n".join(f"  #{t.number} {t.state.name} {t.params} {t.user_attrs} {t.datetime_start}..{t.datetime_complete}"
                     for t in study.get_trials(deepcopy=False))


def _mlflow(env: dict[str, str]) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{Path(env['MLOPS_HOME']) / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


# --- processes (Linux /proc) ---------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _trial_processes(sweep: int) -> tuple[dict[int, str], bool]:
    """The sweep's trial processes, live (pid -> command line): each trial's own `mlops.sweep.trial` process, or
    the warm worker (`mlops.sweep.warm`) and the trial children it forked; and whether a trial is in flight.
    Found in the sweep's process tree, not by command line: a forked trial shows the worker's."""
    tree = _descendants(sweep)
    found = {pid: cmd for pid, cmd in tree.items()
             if ("mlops.sweep.trial" in cmd or "mlops.sweep.warm" in cmd) and not _zombie(pid)}
    in_flight = any("mlops.sweep.trial" in cmd or _parent(pid) in found for pid, cmd in found.items())
    return found, in_flight


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _alive(processes: dict[int, str]) -> dict[int, str]:
    """Those of `processes` still running as the same process."""
    return {pid: cmd for pid, cmd in processes.items() if _cmdline(pid) == cmd and not _zombie(pid)}


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _descendants(root: int) -> dict[int, str]:
    parents: dict[int, int] = {}
    for pid in _pids():
        try:
            parents[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = _cmdline(pid)
                frontier.append(pid)
    return found


def _kill(processes: dict[int, str]) -> None:
    """SIGKILL each process of `processes` (pid -> command line) that is still the same process."""
    for pid, cmdline in processes.items():
        if _cmdline(pid) == cmdline and not _zombie(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- 1. resume after kill -9 ---------------------------------------------------------------------------------


def test_sweep_resumes_after_kill_9(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    """kill -9 mid-trial: the trial process (and the warm worker it was forked from) dies with the sweep; the
    same command finishes the study, re-running only the trial in flight (same parameters), never a completed
    one. Under pytest-xdist too (`-p xdist -n 1`): trial processes are found in the sweep's process tree."""
    from optuna.trial import TrialState

    n_trials = 4
    recipe = _recipe(tmp_path, "resume", """\
        model:
          hidden: [16]
        trainer:
          max_epochs: 60  # a trial forked from the warm worker starts at once: it must still be training when killed
          early_stopping: null
        sweep:
          metric: val/loss
          direction: minimize
          n_trials: 4
          parallelism: 1
          sampler: tpe
          pruner: none
          retries: 0
          params:
            model.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
            model.dropout: {type: float, low: 0.0, high: 0.5}
        """)
    env = _env(isolated_env)
    cmd = [sys.executable, "-m", "mlops.cli", "sweep", "--json", str(recipe)]
    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        name = None
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, f"the sweep ended before it could be killed:\n{log.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"no trial completed in time:\n{log.read_text()[-5000:]}"
            if name is None:
                m = re.search(r"^mlops: study (\S+) \(", log.read_text(), re.M)
                name = m.group(1) if m else None
            if name is not None:
                try:
                    states = _states(_load(_storage(env), name))
                except Exception:  # the sweep holds a write lock for a moment
                    states = {}
                # kill once trial 0 is complete and the next trial's process is running
                if states.get("COMPLETE") and states.get("RUNNING") and _trial_processes(proc.pid)[1]:
                    break
            time.sleep(0.3)
        time.sleep(1.0)  # let the running trial get going (it must not be allowed to finish: 60 epochs)
        children = _descendants(proc.pid)
        trial_processes, in_flight = _trial_processes(proc.pid)
        assert in_flight, children
        killed_at = datetime.now()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:  # the wait above failed: leave nothing running
            leftovers = _descendants(proc.pid)
            proc.kill()
            proc.wait()
            _kill(leftovers)

    # every trial process dies with its parent (PR_SET_PDEATHSIG), the warm worker too: no orphan keeps training
    deadline = time.monotonic() + 5
    while _alive(trial_processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = _alive(trial_processes)
    _kill(children)  # the temporary Prefect server outlives a kill -9 (it is no trial): stop what we started
    assert not survivors, f"trial processes outlived the killed sweep: {survivors}"

    study = _load(_storage(env), name)
    at_kill = _states(study)
    assert len(at_kill.get("RUNNING", [])) == 1, _show(study)
    killed = at_kill["RUNNING"][0]
    complete_before = {t.number: t for t in at_kill.get("COMPLETE", [])}
    assert complete_before and len(complete_before) < n_trials, _show(study)
    assert killed.user_attrs["mlops.owner"].endswith(f":{proc.pid}")
    parent_before = study.user_attrs["mlflow_parent_run_id"]

    # the same command again resumes the study and completes it
    result = last_json(run_cli(["sweep", "--json", str(recipe)], env))
    assert result["study_name"] == name, "the same recipe must derive the same study name"
    assert result["requeued"] == [killed.number]
    assert result["parent_run_id"] == parent_before, "a resumed sweep continues under the same MLflow parent run"
    assert result["trials"]["complete"] == n_trials
    assert result["model_version"] is not None

    study = _study(result)
    states = _states(study)
    shown = _show(study)
    complete = states.get("COMPLETE", [])
    assert len(complete) == n_trials, shown
    assert set(states) <= {"COMPLETE", "FAIL"}, shown

    fail = states.get("FAIL", [])
    assert [t.number for t in fail] == [killed.number], shown
    assert "process died" in fail[0].user_attrs["mlops.error"], shown

    retries = [t for t in study.get_trials(deepcopy=False) if "mlops.retry_of" in t.user_attrs]
    assert len(retries) == 1, shown
    retry = retries[0]
    assert retry.user_attrs["mlops.retry_of"] == killed.number
    assert retry.params == killed.params
    assert retry.state == TrialState.COMPLETE

    # the trials completed before the kill were kept as they were, not run again
    assert sum(t.datetime_start < killed_at for t in complete) == len(complete_before), shown
    for t in complete:
        if t.number in complete_before:
            assert t.value == complete_before[t.number].value
            assert t.datetime_complete == complete_before[t.number].datetime_complete
    # completed trials + the killed one + the rest: nothing ran twice
    assert len(study.trials) == n_trials + 1, shown
    assert len({t.number for t in complete}) == n_trials
    keys = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(keys)) == n_trials, f"a resumed sweep sampled the same parameters again:\n{shown}"


# --- 2 and 3. a failing trial is isolated; trials run in parallel (one sweep, two tests) ---------------------


@pytest.fixture(scope="module")
def boom_sweep(tmp_path_factory: pytest.TempPathFactory, prefect_home: Path,
               prefect_api: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Two trials at once over a choice that crashes the trial (tests.fixtures.custom_modules.BoomMLP)."""
    tmp_path = tmp_path_factory.mktemp("boom")
    recipe = _recipe(tmp_path, "boom", """\
        model:
          _target_: tests.fixtures.custom_modules.BoomMLP
          params:
            hidden: [16]
            lr: 0.01
            boom: false
        trainer:
          max_epochs: 3
        sweep:
          metric: val/loss
          direction: minimize
          n_trials: 2
          parallelism: 2
          sampler: grid
          pruner: none
          retries: 0
          params:
            model.params.boom: {type: categorical, choices: [false, true]}
        """)
    env = _env(cli_env(tmp_path / ".mlops", prefect_home, prefect_api))  # what isolated_env gives, module-wide
    return env, last_json(run_cli(["sweep", "--json", str(recipe)], env))


def test_failing_trial_is_recorded_and_the_sweep_goes_on(boom_sweep: tuple[dict[str, str], dict[str, Any]]) -> None:
    env, result = boom_sweep  # the sweep exited 0 (last_json checks) although a trial crashed
    study = _study(result)
    states, shown = _states(study), _show(study)
    assert [t.params for t in states.get("FAIL", [])] == [{"model.params.boom": True}], shown
    assert [t.params for t in states.get("COMPLETE", [])] == [{"model.params.boom": False}], shown
    error = states["FAIL"][0].user_attrs["mlops.error"]
    assert "RuntimeError: BoomMLP was asked to explode" in error, error  # tests.fixtures.custom_modules.BoomMLP
    assert result["trials"]["failed"] == 1 and result["trials"]["complete"] == 1
    assert result["best"]["params"] == {"model.params.boom": False}
    assert result["model_name"] == "boom" and result["model_version"] is not None

    # the failed trial's own MLflow run says it failed
    client = _mlflow(env)
    runs = client.search_runs([client.get_experiment_by_name("boom").experiment_id],
                              filter_string=f"tags.`mlops.trial` = '{states['FAIL'][0].number}'")
    assert [r.info.status for r in runs] == ["FAILED"], runs


def test_parallel_trials_run_at_the_same_time(boom_sweep: tuple[dict[str, str], dict[str, Any]]) -> None:
    env, result = boom_sweep
    study = _study(result)
    trials = study.trials
    assert len(trials) == 2 and all(t.state.is_finished() for t in trials), _show(study)
    a, b = trials
    assert a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete, _show(study)
    # and the trial processes themselves overlapped: each one's MLflow run, opened inside its own subprocess,
    # started before the other trial's subprocess was done (the failing trial's run itself lasts under a second)
    client = _mlflow(env)
    exp = client.get_experiment_by_name("boom").experiment_id
    runs = [client.search_runs([exp], filter_string=f"tags.`mlops.trial` = '{t.number}'")[0].info for t in trials]
    done = [t.datetime_complete.timestamp() * 1000 for t in trials]
    assert runs[0].start_time < done[1] and runs[1].start_time < done[0], ([r.start_time for r in runs], done)


# --- 4. pruning ----------------------------------------------------------------------------------------------


def test_median_pruner_stops_a_hopeless_trial(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    epochs = 6
    recipe = _recipe(tmp_path, "prune", f"""\
        model:
          hidden: [16]
        trainer:
          max_epochs: {epochs}
          early_stopping: null
        sweep:
          metric: val/loss
          direction: minimize
          n_trials: 2
          parallelism: 1
          sampler: grid
          seed: 1  # this seed shuffles the grid so that lr 0.05 runs first
          pruner: median
          pruner_startup_trials: 1
          pruner_warmup_epochs: 0
          retries: 0
          params:
            model.lr: {{type: categorical, choices: [0.05, 1.0e-7]}}
        """)
    env = _env(isolated_env)
    result = last_json(run_cli(["sweep", "--json", str(recipe)], env))
    study = _study(result)
    shown = _show(study)
    first = study.trials[0]
    # the premise: the grid's seeded order runs the good learning rate first, so it sets the median
    assert first.params == {"model.lr": 0.05}, f"grid order changed: pick another sweep.seed\n{shown}"
    assert first.state.name == "COMPLETE", shown
    pruned = _states(study).get("PRUNED", [])
    assert [t.params for t in pruned] == [{"model.lr": 1e-7}], shown
    assert result["trials"]["pruned"] == 1

    client = _mlflow(env)
    run = client.get_run(pruned[0].user_attrs["mlflow_run_id"])
    assert run.data.tags.get("mlops.trial_state") == "pruned"
    assert run.info.status == "KILLED"
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert 1 <= len(history) < epochs, [(m.step, m.value) for m in history]
    full = client.get_metric_history(first.user_attrs["mlflow_run_id"], "val/loss")
    assert len(full) == epochs, "the good trial, never pruned, trains every epoch"
    assert result["best"]["number"] == first.number


# --- 5. DDP ranks agree --------------------------------------------------------------------------------------


def test_ddp_ranks_of_a_trial_train_the_same_sampled_parameters(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    records = tmp_path / "records"
    records.mkdir()
    recipe = _recipe(tmp_path, "ddpsweep", f"""\
        model:
          _target_: tests.fixtures.custom_modules.RankRecordingMLP
          params:
            hidden: [16]
            lr: 0.01
            record_dir: {records}
        trainer:
          max_epochs: 2
          early_stopping: null
        sweep:
          metric: val/loss
          direction: minimize
          n_trials: 2
          parallelism: 2  # both trials at once: 4 ranks in all, each trial must keep its own
          sampler: random
          retries: 0
          params:
            model.params.lr: {{type: float, low: 1.0e-4, high: 1.0e-1, log: true}}
            model.params.hidden: {{type: categorical, choices: [[16], [12, 8], [24]]}}
        """, trainer="ddp_cpu")
    env = _env(isolated_env)
    result = last_json(run_cli(["sweep", "--json", str(recipe)], env))
    assert result["world_size"] == 2

    study = _study(result)
    trials = _states(study).get("COMPLETE", [])
    assert len(trials) == 2, _show(study)
    rows = [json.loads(p.read_text()) for p in sorted(records.glob("rank*.json"))]
    assert rows, "no rank recorded anything"
    for t in trials:
        lr, hidden = t.params["model.params.lr"], json.loads(t.params["model.params.hidden"])
        mine = [r for r in rows if r["lr"] == lr]
        assert sorted(r["rank"] for r in mine) == [0, 1], (t.params, rows)
        assert len({r["pid"] for r in mine}) == 2, "two ranks are two processes"
        assert all(r["world_size"] == 2 and r["hidden"] == hidden for r in mine), (t.params, rows)
    # every record belongs to a trial: no rank trained anything the study did not sample
    assert len(rows) == 2 * len(trials), rows


# --- 6. sweep keys are validated -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sweep_lines", "bad_line", "key", "hint"),
    [
        (["  metric: val/aurocc", "  params:", "    model.lr: {type: float, low: 1.0e-4, high: 1.0e-1}"],
         0, "sweep.metric", "did you mean 'val/auroc'?"),
        (["  metric: val/auroc", "  direction: maximize", "  params:",
          "    model.lrr: {type: float, low: 1.0e-4, high: 1.0e-1}"],
         3, "sweep.params.model.lrr", "did you mean 'model.lr'?"),
    ],
    ids=["metric", "param-key"],
)
def test_validate_points_at_bad_sweep_keys(tmp_path: Path, isolated_env: dict[str, str], sweep_lines: list[str],
                                           bad_line: int, key: str, hint: str) -> None:
    recipe = _recipe(tmp_path, "typo", "sweep:\n" + "\n".join(sweep_lines) + "\n")
    lines = recipe.read_text().splitlines()
    line_no = lines.index("sweep:") + 2 + bad_line  # 1-based line of the offending key
    assert lines[line_no - 1] == sweep_lines[bad_line]

    proc = run_cli(["validate", str(recipe)], _env(isolated_env), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # file:line (the path as the CLI shows it: absolute here, since the recipe is outside the cwd)
    assert re.search(rf"\S*{re.escape(recipe.name)}:{line_no}: {re.escape(key)}:", proc.stderr), proc.stderr
    assert hint in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
