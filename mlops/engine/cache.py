"""Step results on disk, keyed by the step's cache key. A result directory appears whole or not at all."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlops.tracking.store import mlops_home

RESULT = "result.json"


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or mlops_home() / "cache"

    def path(self, step: str, key: str) -> Path:
        return self.root / step / key

    def has(self, step: str, key: str) -> bool:
        return (self.path(step, key) / RESULT).is_file()

    def load(self, step: str, key: str) -> dict[str, Any]:
        out = self.path(step, key)
        return json.loads((out / RESULT).read_text()) | {"dir": str(out)}

    def compute(self, step: str, key: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run `fn(tmp_dir)` and publish its directory under the key by an atomic rename."""
        final = self.path(step, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        try:
            result = fn(tmp)
            (tmp / RESULT).write_text(json.dumps(result, indent=2, default=str))
            try:
                tmp.rename(final)
            except OSError:  # a concurrent run (a parallel sweep trial) published it first: keep theirs
                if not (final / RESULT).is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.load(step, key)
