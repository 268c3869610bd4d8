"""Optuna studies for a recipe's `sweep:` section: durable storage, samplers, pruners, parameters as
Hydra overrides, and resuming after a crash.

A dead trial is found two ways. On this host, its owner's pid is gone. On another host, its owner stopped
beating: every process that opens a study stamps Optuna's heartbeat of the RUNNING trials it owns every
HEARTBEAT_S seconds, and a trial whose stamp is older than STALE_S is failed by Optuna's `fail_stale_trials`
and queued again with the same parameters (the same bookkeeping as a local orphan: `mlops.retry_of`, and
the failure does not use up the budget), so any live worker takes it over.

A trial's parameters are sampled once, here, in the coordinating process, and handed to the trial
process as overrides: every DDP rank of that trial reads the same job file, so all ranks train the
same configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import warnings
import weakref
from typing import Any

import optuna
from optuna.trial import TrialState

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.workspace import workspace
from mlops.recipe import LoadedRecipe
from mlops.recipe.schema import CategoricalParam, FloatParam, IntParam, SweepConfig
from mlops.train.pruning import make_pruner

OWNER = "mlops.owner"  # host:pid of the process running a trial, to tell a dead trial from a live one
ERROR = "mlops.error"
RETRY_OF = "mlops.retry_of"
DIED = "its process died before it finished"
SURPLUS = "mlops.surplus"  # asked for when another process had just taken the budget's last trial: never run
ORPHAN_GRACE_S = 60
# Optuna's heartbeat: a live worker stamps its running trials every HEARTBEAT_S; one not stamped for STALE_S
# is dead (a worker killed, a host lost). Whole seconds (Optuna's RDBStorage takes ints); tests lower them.
HEARTBEAT_S = 10
STALE_S = 60


def sweep_config(loaded: LoadedRecipe) -> SweepConfig:
    if loaded.recipe.sweep is None:
        raise MlopsError(f"{loaded.path} has no 'sweep:' section (add one, e.g. '- sweep: mlp_small' to its defaults)")
    return loaded.recipe.sweep


def storage_url(cfg: SweepConfig) -> str:
    if cfg.storage:
        return cfg.storage
    db = workspace().optuna_db
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def study_name(loaded: LoadedRecipe) -> str:
    """Derived from the recipe: the same recipe (and overrides) resumes the same study."""
    cfg = sweep_config(loaded)
    if cfg.study_name:
        return cfg.study_name
    resolved = loaded.resolved()
    resolved["sweep"] = {k: v for k, v in resolved["sweep"].items() if k not in ("parallelism", "n_trials", "retries")}
    resolved.pop("evaluate", None)  # gates decide on the best model; they do not change what trials train
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:10]
    return f"{loaded.recipe.name}-{digest}"


def sampler(cfg: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if cfg.sampler == "grid":
        return _GridSampler(grid_space(cfg), seed=seed)
    # constant_liar keeps parallel trials from all sampling the same point
    return optuna.samplers.TPESampler(seed=seed, constant_liar=cfg.parallelism > 1)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler calls `study.stop()` when a trial ends and the grid is done, which raises
    RuntimeError outside `study.optimize` (optuna#4121, #5141): `study.tell` of the last grid point
    failed the sweep. The sweep's loop counts its own trials, so there is nothing to stop."""

    def after_trial(self, study: optuna.Study, trial: Any, state: TrialState, values: Any) -> None:
        pass


def pruner(cfg: SweepConfig) -> optuna.pruners.BasePruner:
    return make_pruner(cfg.pruner, cfg.pruner_startup_trials, cfg.pruner_warmup_epochs)


def grid_space(cfg: SweepConfig) -> dict[str, list[Any]]:
    space: dict[str, list[Any]] = {}
    for key, p in cfg.params.items():
        if isinstance(p, CategoricalParam):
            space[key] = [_encode(c) for c in p.choices]
        elif isinstance(p, IntParam):
            space[key] = list(range(p.low, p.high + 1, p.step))
        else:
            assert p.step is not None
            n = int(round((p.high - p.low) / p.step))
            space[key] = [round(p.low + i * p.step, 12) for i in range(n + 1)]
    return space


def open_study(loaded: LoadedRecipe, *, create: bool = True) -> optuna.Study:
    cfg = sweep_config(loaded)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, url = study_name(loaded), storage_url(cfg)
    seed = cfg.seed if cfg.seed is not None else loaded.recipe.seed
    try:
        storage = rdb_storage(url)
        if not create:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler(cfg, seed),
                                      pruner=pruner(cfg))
        else:
            study = optuna.create_study(study_name=name, storage=storage, direction=cfg.direction,
                                        sampler=sampler(cfg, seed), pruner=pruner(cfg), load_if_exists=True)
        start_heartbeat(study)
        existing = len(study.get_trials(deepcopy=False))
        if existing and cfg.sampler != "grid":
            # A sampler seeded as in the first session would draw the same points again (a resumed TPE
            # study re-ran trial 0's parameters): offset the seed by the trials already in the study.
            # The grid sampler keeps its seed: it maps grid ids to points by a seeded shuffle.
            study.sampler = sampler(cfg, seed + existing)
        return study
    except KeyError:
        raise MlopsError(f"no study '{name}' in {url}: start it with `mlops sweep` before adding workers") from None
    except Exception as exc:  # a storage URL that cannot be reached or used
        if isinstance(exc, MlopsError):
            raise
        raise MlopsError(f"cannot open Optuna storage {url}: {exc}") from None


class _RequeueStale:
    """Optuna's heartbeat-stale callback: the trial it just failed is queued again with its parameters and
    `mlops.retry_of`, as `recover_orphans` does for this host's dead trials (Optuna's own
    RetryHeartbeatStaleTrialCallback copies the dead owner and names the retry in system attributes only)."""

    def __init__(self) -> None:
        self.requeued: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
        say(f"trial {trial.number} of {trial.user_attrs.get(OWNER, 'an unknown worker')} stopped beating: "
            "failed, and queued again")
        with self.lock:
            self.requeued.append(trial.number)


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's database with Optuna's heartbeat on (the URL as `sweep.storage` gives it)."""
    with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.9: a warning per open
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=STALE_S,
                                          heartbeat_stale_trial_callback=_RequeueStale())


# Optuna warns at every `ask()` on a heartbeat storage outside `optimize()`: the sweep asks and tells itself
# (trials are processes it launches) and beats for them in `start_heartbeat`.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize",
                        category=UserWarning)


def start_heartbeat(study: optuna.Study) -> threading.Thread | None:
    """A daemon thread that stamps the heartbeat of the RUNNING trials this process owns, every HEARTBEAT_S,
    while the study object lives. It stops with the process: that is the point."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if not is_heartbeat_enabled(study._storage):
        return None
    ref = weakref.ref(study)
    storage, study_id = study._storage, study._study_id

    def beat() -> None:
        failing = False
        while ref() is not None:
            me = owner()
            try:
                for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                    if t.user_attrs.get(OWNER) == me:
                        storage.record_heartbeat(t._trial_id)
                failing = False
            except Exception as exc:  # a database blip must not end the beat; a long one makes trials stale
                if not failing:
                    say(f"cannot record the trials' heartbeat ({exc}); trying again every {HEARTBEAT_S} s")
                failing = True
            time.sleep(HEARTBEAT_S)

    thread = threading.Thread(target=beat, name=f"mlops-heartbeat-{study.study_name}", daemon=True)
    thread.start()
    return thread


def _encode(choice: Any) -> Any:
    """Optuna's categorical choices must be scalars: lists and dicts travel as JSON text."""
    return json.dumps(choice, separators=(",", ":")) if isinstance(choice, list | dict) else choice


def suggest(trial: optuna.Trial, cfg: SweepConfig) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, p in cfg.params.items():
        if isinstance(p, FloatParam):
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            values[key] = trial.suggest_int(key, p.low, p.high, log=p.log, step=p.step)
        else:
            values[key] = trial.suggest_categorical(key, [_encode(c) for c in p.choices])
    return values


def as_overrides(params: dict[str, Any]) -> list[str]:
    """Sampled values as Hydra overrides: `model.lr=0.0031`, `model.hidden=[128,64]`."""
    out = []
    for key, value in params.items():
        if isinstance(value, str) and not value.startswith(("[", "{")):
            value = json.dumps(value)  # quoted, so Hydra keeps it a string
        out.append(f"{key}={value}")
    return out


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner_id: str, started: Any) -> bool:
    if not owner_id:
        # asked but its owner never recorded: the asking process died between the two calls, unless the
        # trial is only moments old (another worker may be about to record itself)
        import datetime

        return started is None or (datetime.datetime.now() - started).total_seconds() < ORPHAN_GRACE_S
    host, _, pid = owner_id.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's trial: its worker decides
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def recover_orphans(study: optuna.Study) -> list[int]:
    """Trials whose worker is gone are marked failed and queued again with the same parameters, so only
    the trials in flight are re-run: on this host, a RUNNING trial whose owner's pid is gone (kill -9, power
    loss); on any host, one whose heartbeat stopped for STALE_S (a worker killed or a machine lost)."""
    requeued = _fail_stale(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive(str(t.user_attrs.get(OWNER, "")), t.datetime_start):
            continue
        study._storage.set_trial_user_attr(t._trial_id, ERROR, DIED)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number})
        requeued.append(t.number)
    return requeued


def _fail_stale(study: optuna.Study) -> list[int]:
    """Fail the trials whose heartbeat stopped, as Optuna's `fail_stale_trials` does, each with its reason first
    (a failed trial takes no attributes), from ONE reading of which trials are stale: reading it twice (once for
    the reasons, once in Optuna's call) let a trial turn stale in between and be failed without its reason.
    The storage's callback (`_RequeueStale`) queues each one again."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return []
    callback = storage.get_heartbeat_stale_trial_callback()
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            storage.set_trial_user_attr(trial_id, ERROR, f"{DIED} (no heartbeat for {STALE_S} s)")
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            pass
    if not isinstance(callback, _RequeueStale):
        return []
    for trial_id in failed:
        callback(study, storage.get_trial(trial_id))
    with callback.lock:
        done, callback.requeued[:] = list(callback.requeued), []
    return done


def _tally(trials: list[optuna.trial.FrozenTrial], before: int | None = None) -> dict[str, int]:
    """`counts` of the trials, or of those numbered before `before`."""
    retried = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    if before is not None:
        trials = [t for t in trials if t.number < before]
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        # failures we recorded with an error count toward the budget; a dead process's trial (queued again)
        # and a surplus one (never run, see `surplus`) do not
        "failed": sum(t.state == TrialState.FAIL and not str(t.user_attrs.get(ERROR, "")).startswith(DIED)
                      and t.number not in retried and not t.user_attrs.get(SURPLUS) for t in trials),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "waiting": sum(t.state == TrialState.WAITING for t in trials),
    }


def counts(study: optuna.Study) -> dict[str, int]:
    return _tally(study.get_trials(deepcopy=False))


def surplus(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    """Whether the trials numbered before `trial`, just asked for, already take the whole budget (finished,
    running, or queued to run again). Processes sharing a study (a coordinator and its `--worker`s) each check
    that the budget has room and then ask: two that check at the same moment both ask, one trial too many. The
    storage numbers trials in the order they were created, so the later one is the surplus and steps aside."""
    return sum(_tally(study.get_trials(deepcopy=False), before=trial.number).values()) >= budget


def step_aside(study: optuna.Study, trial: optuna.Trial) -> None:
    """Close a surplus trial without running it: failed, marked so that no count takes it (see `surplus`)."""
    trial.set_user_attr(SURPLUS, True)
    study.tell(trial, state=TrialState.FAIL)


def finished(study: optuna.Study) -> int:
    return _done(counts(study))


def has_room(c: dict[str, int], budget: int) -> bool:
    """Whether `counts` `c` leave room in the budget for another trial: the finished and running ones take less."""
    return _done(c) + c["running"] < budget


def _done(c: dict[str, int]) -> int:
    return c["complete"] + c["pruned"] + c["failed"]
