"""A run's fixed costs: `mlops run recipes/quickstart.yaml` with the local Prefect server kept across commands vs
Prefect's temporary server per command (MLOPS_PREFECT_SERVER=ephemeral), in one run, on one fresh Prefect home.

    .venv/bin/python benchmarks/run_overhead.py [OVERRIDES...]

Runs, in order: local cold (no server yet: it starts one, and migrates the fresh database), local warm (the
server runs; an empty step cache, so every step runs), local rerun (the same workspace again: every step up to
the gate reused; the gate runs, since there is a champion now, the warm run's model), local cached (once more:
the champion is unchanged, so every step but register is reused), then ephemeral warm, rerun and cached the same
way, then the same three with warm runs (MLOPS_WARM_RUNS=1, the local server: each command forked from a worker
that has imported Prefect, MLflow and the steps; a first command, in a workspace of its own, starts the worker).
Goals (issue 19.6): a warm run's orchestration at most 25% of its wall time, a cached run at most 3 s. For each: the wall time of the command, the
engine's own time (the summary's `seconds`: the steps and their MLflow bookkeeping, from the run's JSON), and
orchestration = wall - engine (process start, imports, Prefect's server and flow run). Stops the server at the
end. The machine's load average is printed beside the table: the figures move with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mlops(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"mlops {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    overrides = sys.argv[1:]
    rows: list[tuple[str, float, float]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        # as a user's shell runs it: compiled modules cached (see benchmarks/light.py), no MLflow or Prefect set
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("MLFLOW_", "MLOPS_", "PREFECT_API_URL", "PYTHONDONTWRITEBYTECODE"))}
        base |= {"PREFECT_HOME": f"{tmp}/prefect", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "240",
                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        try:
            for mode in ("local", "ephemeral", "local+warm-runs"):
                env = base | {"MLOPS_PREFECT_SERVER": mode.partition("+")[0]}
                runs = [("warm", "b"), ("rerun", "b"), ("cached", "b")]
                if mode == "local":
                    runs = [("cold", "a"), *runs]
                elif mode == "ephemeral":
                    runs = [(label, "c") for label, _ in runs]
                else:
                    env |= {"MLOPS_WARM_RUNS": "1", "MLOPS_WARM_DIR": f"{tmp}/w"}
                    # its first command starts the worker (in a workspace of its own, so "warm" still trains)
                    runs = [("first", "e"), *((label, "d") for label, _ in runs)]
                for label, workspace in runs:
                    wall, summary = mlops(["run", "--json", "recipes/quickstart.yaml", *overrides],
                                          env | {"MLOPS_HOME": f"{tmp}/{workspace}"})
                    reused = sum(v == "reused" for v in summary["cache"].values())
                    rows.append((f"{mode} {label} ({reused}/{len(summary['cache'])} steps reused)", wall,
                                 float(summary["seconds"])))
                    print(f"{rows[-1][0]}: {wall:.1f} s", file=sys.stderr)
        finally:
            subprocess.run([sys.executable, "-m", "mlops.cli", "server", "stop"], cwd=ROOT,
                           env=base | {"MLOPS_WARM_DIR": f"{tmp}/w"}, capture_output=True)
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {os.cpu_count()} CPUs")
    print(f"{'run':52} {'wall s':>8} {'engine s':>9} {'orchestration s':>16} {'orch. % of wall':>16}")
    for name, wall, engine in rows:
        orch = wall - engine
        goal = ("  goal <= 25%: " + ("met" if orch <= 0.25 * wall else "NOT met")) if " warm " in name else \
            ("  goal <= 3 s: " + ("met" if wall <= 3 else "NOT met")) if " cached " in name else ""
        print(f"{name:52} {wall:8.1f} {engine:9.1f} {orch:16.1f} {100 * orch / wall:15.0f}%{goal}")


if __name__ == "__main__":
    main()
