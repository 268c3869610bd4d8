"""Sweep trials forked from the warm worker (mlops/sweep/warm.py): they run as a new trial process would and
give the same results; `MLOPS_SWEEP_WARM=0` gives a new process per trial; a killed trial child fails only
its trial (and is retried); a dead worker leaves the sweep to new processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, last_json, run_cli
from tests.integration.test_sweep import (
    _descendants,
    _env,
    _kill,
    _parent,
    _recipe,
    _show,
    _states,
    _study,
    _zombie,
)

pytestmark = pytest.mark.integration

SWEEP = """\
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
      sampler: tpe
      seed: 3
      pruner: none
      retries: {retries}
      params:
        model.lr: {{type: float, low: 1.0e-3, high: 1.0e-1, log: true}}
    """


def _processes(study: Any) -> list[dict[str, Any]]:
    return [t.user_attrs["mlops.process"] for t in study.trials]


def _sweep_pid(study: Any) -> int:
    return int(study.trials[0].user_attrs["mlops.owner"].rpartition(":")[2])


def test_trials_fork_from_the_warm_worker_and_match_new_processes(tmp_path: Path,
                                                                   isolated_env: dict[str, str]) -> None:
    recipe = _recipe(tmp_path, "warmth", SWEEP.format(epochs=3, retries=0))
    warm = last_json(run_cli(["sweep", "--json", str(recipe)], _env(isolated_env)))
    fresh = last_json(run_cli(["sweep", "--json", str(recipe)],  # the same study again, in another home
                              _env(isolated_env, MLOPS_HOME=str(tmp_path / "fresh-home"), MLOPS_SWEEP_WARM="0")))

    warm_study, fresh_study = _study(warm), _study(fresh)
    shown = _show(warm_study) + "\n" + _show(fresh_study)
    forked, own = _processes(warm_study), _processes(fresh_study)
    # warm: every trial a child of the same worker process, which is neither the sweep nor a trial
    assert all(p["warm"] for p in forked), shown
    assert len({p["parent"] for p in forked}) == 1 and forked[0]["parent"] != _sweep_pid(warm_study), shown
    assert len({p["pid"] for p in forked}) == len(forked), "a process per trial"
    # MLOPS_SWEEP_WARM=0: every trial a new process of the sweep's own
    assert not any(p["warm"] for p in own) and {p["parent"] for p in own} == {_sweep_pid(fresh_study)}, shown

    # the same study, trial for trial: parameters, values, what each trial recorded
    assert warm["trials"] == fresh["trials"] and warm["trials"]["complete"] == 2
    for a, b in zip(warm_study.trials, fresh_study.trials, strict=True):
        assert a.state == b.state and a.params == b.params, shown
        assert a.value == pytest.approx(b.value, rel=1e-4), shown
        assert set(a.user_attrs) == set(b.user_attrs), shown
    assert warm["best"]["params"] == fresh["best"]["params"]


def _start_sweep(tmp_path: Path, recipe: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "sweep", "--json", str(recipe)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def _await_forked_trial(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, int]:
    """The warm worker's pid and that of the trial child it is running, once there is one."""
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, f"the sweep ended first:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no trial was forked in time:\n{log.read_text()[-4000:]}"
        warm = {pid for pid, cmd in _descendants(proc.pid).items() if "mlops.sweep.warm" in cmd and not _zombie(pid)}
        children = [pid for pid in warm if _parent(pid) in warm]
        if children:
            return _parent(children[0]), children[0]
        time.sleep(0.2)


def _finish(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            leftovers = _descendants(proc.pid)
            proc.kill()
            proc.wait()
            _kill(leftovers)
    return last_json(subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), log.read_text()))


def test_a_killed_trial_child_fails_only_its_trial_which_is_retried(tmp_path: Path,
                                                                     isolated_env: dict[str, str]) -> None:
    recipe = _recipe(tmp_path, "killchild", SWEEP.format(epochs=60, retries=1))
    proc, log = _start_sweep(tmp_path, recipe, _env(isolated_env))
    worker, child = _await_forked_trial(proc, log)
    time.sleep(1.0)  # into its training (60 epochs)
    os.kill(child, signal.SIGKILL)
    result = _finish(proc, log)

    study = _study(result)
    shown = _show(study)
    assert result["trials"]["complete"] == 2 and not _states(study).get("FAIL"), shown  # retried, and went on
    processes = _processes(study)
    assert child not in {p["pid"] for p in processes}, "the killed child's trial ran again in another process"
    assert {p["parent"] for p in processes} == {worker} and all(p["warm"] for p in processes), (
        "the worker outlived its killed child and ran the retry and the next trial")
    assert "warm trial worker" not in log.read_text()


def test_a_dead_worker_leaves_trials_to_new_processes(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    recipe = _recipe(tmp_path, "killworker", SWEEP.format(epochs=60, retries=0))
    proc, log = _start_sweep(tmp_path, recipe, _env(isolated_env))
    worker, child = _await_forked_trial(proc, log)
    os.kill(worker, signal.SIGKILL)
    result = _finish(proc, log)

    study = _study(result)
    shown = _show(study)
    # the trial the worker was running died with it and ran again in a new process: no failure, no retry spent
    assert result["trials"]["complete"] == 2 and not _states(study).get("FAIL"), shown
    assert not any(p["warm"] for p in _processes(study)), shown
    assert {p["parent"] for p in _processes(study)} == {proc.pid}, shown
    warnings = [line for line in log.read_text().splitlines() if "warm trial worker" in line]
    assert len(warnings) == 1 and f"pid {worker}" in warnings[0], warnings
    assert _zombie(child) or not Path(f"/proc/{child}").exists(), "the forked trial died with its worker"
