"""The CLI's light paths: CPU time of `mlops --help`, `validate` and `plan` against a Python start that imports
hydra, omegaconf and pydantic (the floor any composed, typed recipe check pays), all in one run.

    .venv/bin/python benchmarks/light.py [--repeats 7]

Each command runs in a fresh interpreter; the figure is its user + system CPU time (not wall time, so a busy
machine inflates it less), the median of the repeats, taken in interleaved rounds. Goal (issue 19): every command at most 3x the floor.
`plan` runs once before timing: its code versions are remembered in the workspace, as they are for a user's
second plan.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 3.0


def cpu_seconds(args: list[str], env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    mlops = [sys.executable, "-m", "mlops.cli"]
    cases = {
        "floor: import hydra, omegaconf, pydantic": [sys.executable, "-c", "import hydra, omegaconf, pydantic"],
        "mlops --help": [*mlops, "--help"],
        "mlops validate recipes/quickstart.yaml": [*mlops, "validate", "recipes/quickstart.yaml"],
        "mlops plan recipes/quickstart.yaml": [*mlops, "plan", "recipes/quickstart.yaml"],
        "mlops validate recipes/churn_csv.yaml": [*mlops, "validate", "recipes/churn_csv.yaml"],
        "mlops plan recipes/churn_csv.yaml": [*mlops, "plan", "recipes/churn_csv.yaml"],
    }
    with tempfile.TemporaryDirectory(prefix="bench-light-") as tmp:
        # as a user's shell runs them: Python caches compiled modules (a sandbox or CI image may set
        # PYTHONDONTWRITEBYTECODE, and then mlops' own modules, installed editable, compile on every start
        # while the floor's libraries load the bytecode their installer wrote)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"MLOPS_HOME": f"{tmp}/.mlops"}
        for case in cases.values():  # warm: the OS's file cache, .pyc files, the remembered code versions
            cpu_seconds(case, env)
        # interleaved rounds (every command once a round), so a machine whose speed drifts while the benchmark
        # runs (shared cores, frequency) moves the floor and the commands alike
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, case in cases.items():
                samples[name].append(cpu_seconds(case, env))
        times = {name: statistics.median(values) for name, values in samples.items()}
    floor = next(iter(times.values()))
    print(f"{'command':<44} {'CPU s':>7} {'x floor':>8}  goal <= {GOAL:g}x")
    for name, seconds in times.items():
        ratio = seconds / floor
        verdict = "" if name.startswith("floor") else ("met" if ratio <= GOAL else "NOT met")
        print(f"{name:<44} {seconds:7.3f} {ratio:8.2f}  {verdict}")


if __name__ == "__main__":
    main()
