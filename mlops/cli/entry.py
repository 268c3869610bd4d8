"""The `mlops` command's process entry (the console script, `python -m mlops.cli`).

A `run` under `MLOPS_WARM_RUNS=1` is forked from the warm worker (mlops.cli.warm); every other command, and a
run no worker can take, is `mlops.cli.main` in this process. Kept out of mlops/cli/__init__.py: a step that
starts a CLI command in a process of its own (the load test's `mlops serve`) has that package in its code
version, and the worker is no code of any step.
"""

from __future__ import annotations

import os
import sys

from mlops.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), None)
    if command == "run" and os.environ.get("MLOPS_WARM_RUNS"):
        # imported only then: its socket and hashing modules would cost every command (`--help`) 20 ms
        from mlops.cli import warm

        if warm.wanted(command):
            code = warm.run_in_worker(args)
            if code is not None:
                return code
    return cli_main(args)
