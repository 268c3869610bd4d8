"""Step results on disk, keyed by the step's cache key. A result directory appears whole or not at all.

A step in RESUMABLE (train) fills a stable working directory, `<step>/.work-<key>/`, instead of a fresh
temporary one: what it keeps there to resume (checkpoints, the MLflow run it streams to) survives a killed
process, and the next run of the same key picks it up. That directory is renamed to `<step>/<key>/` only once
the step returned, so the cache never publishes a half-trained model. A lock file held while the step runs
tells a live run's directory from a dead one's (the kernel drops the lock of a killed process).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mlops.core.atomic import publishing
from mlops.core.workspace import workspace
from mlops.engine.results import R, StepOutput

RESULT = "result.json"
RESUMABLE = frozenset({"train"})  # steps whose working directory outlives a killed run


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or workspace().cache

    def path(self, step: str, key: str) -> Path:
        return self.root / step / key

    def work_dir(self, step: str, key: str) -> Path:
        """Where a resumable step works on `key` until its result is published."""
        return self.root / step / f".work-{key}"

    def has(self, step: str, key: str) -> bool:
        return (self.path(step, key) / RESULT).is_file()

    def load(self, step: str, key: str, kind: type[R]) -> StepOutput[R]:
        out = self.path(step, key)
        # json.loads, not pydantic's parser: a metric may be NaN, written as `NaN` like json.dumps always has
        return StepOutput(kind.model_validate(json.loads((out / RESULT).read_text())), out)

    def resumable(self, step: str, key: str) -> Path | None:
        """The working directory a dead run left for `key`, to resume from; None when there is none, the result
        is already published, or a live run is working in it."""
        work = self.work_dir(step, key)
        if step not in RESUMABLE or self.has(step, key) or not work.is_dir():
            return None
        with _exclusive(work) as held:
            return work if held else None

    def compute(self, step: str, key: str, fn: Callable[[Path], R]) -> StepOutput[R]:
        """Run `fn(dir)` and publish the directory under the key by an atomic rename."""
        if step in RESUMABLE:
            with _exclusive(self.work_dir(step, key)) as held:
                if held:
                    return self._compute_resumable(step, key, fn)
            # another live run works on this key: work apart in a temporary directory, as other steps do
        # a concurrent run (a parallel sweep trial) may publish the same key first: theirs is kept
        with publishing(self.path(step, key), keep_existing=True) as tmp:
            result = fn(tmp)
            (tmp / RESULT).write_text(json.dumps(result.model_dump(mode="json"), indent=2))
        return self.load(step, key, type(result))

    def _compute_resumable(self, step: str, key: str, fn: Callable[[Path], R]) -> StepOutput[R]:
        """Called holding the work directory's lock. A failure leaves the directory for the next run."""
        work, dest = self.work_dir(step, key), self.path(step, key)
        work.mkdir(parents=True, exist_ok=True)
        result = fn(work)
        (work / RESULT).write_text(json.dumps(result.model_dump(mode="json"), indent=2))
        if dest.exists():  # a concurrent run that could not take the lock published first: theirs is kept
            shutil.rmtree(work)
        else:
            work.rename(dest)
        return self.load(step, key, type(result))


@contextmanager
def _exclusive(work: Path) -> Iterator[bool]:
    """Hold `work`'s lock file for the block if no live process holds it; yields whether it was taken."""
    lock = work.with_name(work.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
