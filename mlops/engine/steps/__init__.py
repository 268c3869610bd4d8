"""The steps of a run as plain functions: `step(ctx, out_dir) -> result`, one module per step.

Each writes its files into `out_dir` (the cache publishes the directory atomically) and returns a
JSON-able result whose paths are relative to that directory. None of them knows about Prefect;
`mlops.engine.runner` wraps them. Only `register` talks to MLflow.

Step `name` is the function `name` in module `mlops.engine.steps.<name>`, and that module's import
closure is the step's code version (`mlops.engine.plan`). So this package stays small and imports no
step module: everything it imports is part of every step's version. `STEPS` imports a step's module
on first use, which also keeps a step's libraries (torch, onnxruntime, mlflow) unloaded until it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlops.engine.steps.common import RunContext, frames

__all__ = ["STEPS", "STEP_NAMES", "RunContext", "StepFn", "frames"]

StepFn = Callable[[RunContext, Path], dict[str, Any]]

STEP_NAMES = ("load_data", "check_data", "split", "preprocess", "train", "evaluate", "export", "assess", "gate",
              "register")


class StepRegistry(Mapping[str, StepFn]):
    """name -> step function, its module imported when first looked up."""

    def __getitem__(self, name: str) -> StepFn:
        if name not in STEP_NAMES:
            raise KeyError(name)
        return getattr(importlib.import_module(f"{__name__}.{name}"), name)

    def __iter__(self) -> Iterator[str]:
        return iter(STEP_NAMES)

    def __len__(self) -> int:
        return len(STEP_NAMES)


STEPS: Mapping[str, StepFn] = StepRegistry()
