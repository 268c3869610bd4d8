"""The base of the project's data models that light commands import but may never use.

A pydantic class builds its validator when it is defined unless told to wait; `mlops validate` and `plan`
import the step results', the data schema's and the network inputs' models to name them, and a tabular recipe
uses none of them: built at definition they cost about 15 ms of every such command (issue 19's light paths).
Deferred, each builds on its first use, once per process.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class LazyModel(BaseModel):
    """A pydantic model whose validator is built when it is first used, not when its class is defined."""

    model_config = ConfigDict(defer_build=True)
