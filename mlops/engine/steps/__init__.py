"""The steps of a run as plain functions: `step(ctx, out_dir) -> result`, one module per step.

Each writes its files into `out_dir` (the cache publishes the directory atomically) and returns a
JSON-able result whose paths are relative to that directory. None of them knows about Prefect;
`mlops.engine.runner` wraps them. Only `register` talks to MLflow.

Step `name` is the function `name` in module `mlops.engine.steps.<name>`, and that module's import
closure is the step's code version (`mlops.engine.plan`). So this package imports nothing: whatever it
imported would be part of every step's version. `mlops.engine.execute.STEP_RESULTS` lists them.
"""
