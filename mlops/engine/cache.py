"""Step results on disk, keyed by the step's cache key. A result directory appears whole or not at all."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mlops.core.atomic import publishing
from mlops.core.workspace import workspace
from mlops.engine.results import R, StepOutput

RESULT = "result.json"


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or workspace().cache

    def path(self, step: str, key: str) -> Path:
        return self.root / step / key

    def has(self, step: str, key: str) -> bool:
        return (self.path(step, key) / RESULT).is_file()

    def load(self, step: str, key: str, kind: type[R]) -> StepOutput[R]:
        out = self.path(step, key)
        # json.loads, not pydantic's parser: a metric may be NaN, written as `NaN` like json.dumps always has
        return StepOutput(kind.model_validate(json.loads((out / RESULT).read_text())), out)

    def compute(self, step: str, key: str, fn: Callable[[Path], R]) -> StepOutput[R]:
        """Run `fn(tmp_dir)` and publish its directory under the key by an atomic rename."""
        # a concurrent run (a parallel sweep trial) may publish the same key first: theirs is kept
        with publishing(self.path(step, key), keep_existing=True) as tmp:
            result = fn(tmp)
            (tmp / RESULT).write_text(json.dumps(result.model_dump(mode="json"), indent=2))
        return self.load(step, key, type(result))
