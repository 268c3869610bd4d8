"""`mlops --help`, `validate` and `plan` stay light: none of them imports the training or serving stack.

Each command runs in a fresh interpreter, so modules imported by other tests cannot hide or fake a leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# numpy and pandas too: a recipe on a built-in data set is checked and planned without reading a row, one on a CSV
# file reads it with the csv module (`mlops.data.columns.read_table`), and the two cost more CPU than everything
# else `validate` does (issue 19: at most 3x a bare hydra + pydantic start)
HEAVY = ("torch", "lightning", "mlflow", "prefect", "evidently", "onnxruntime", "sklearn", "numpy", "pandas",
         "pyarrow")

SCRIPT = """
import json, sys
from mlops.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exc:  # argparse exits after --help
    code = exc.code
heavy = json.loads(sys.argv[2])
loaded = sorted(n for n in sys.modules if n.split(".")[0] in heavy)
print("RESULT " + json.dumps({"code": code, "loaded": loaded}))
"""


@pytest.mark.parametrize(
    ("argv", "expected_stdout"),
    [
        (["--help"], "usage: mlops"),
        (["validate", "recipes/quickstart.yaml"], "ok: recipes/quickstart.yaml is a valid recipe 'quickstart'"),
        (["plan", "recipes/quickstart.yaml"], "plan for recipe 'quickstart'"),
        (["validate", "recipes/churn_csv.yaml"], "ok: recipes/churn_csv.yaml is a valid recipe 'churn'"),
        (["plan", "recipes/churn_csv.yaml"], "plan for recipe 'churn'"),
    ],
    ids=["help", "validate", "plan", "validate-csv", "plan-csv"],
)
def test_command_does_not_import_heavy_libraries(argv: list[str], expected_stdout: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MLOPS_CONFIG_PATH", "PYTHONSTARTUP")}
    env["MLOPS_HOME"] = str(tmp_path / ".mlops")

    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(argv), json.dumps(HEAVY)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    result_lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result_lines) == 1, proc.stdout + proc.stderr
    result = json.loads(result_lines[0].removeprefix("RESULT "))
    assert result["code"] == 0, proc.stdout + proc.stderr
    assert expected_stdout in proc.stdout
    assert result["loaded"] == [], f"mlops {' '.join(argv)} imported {result['loaded']}"


def test_the_check_itself_sees_a_heavy_import(tmp_path: Path) -> None:
    """Guard against a vacuous pass: the same probe reports a module that really was imported."""
    probe = ("json",)  # always importable; stands in for a heavy library

    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(["--version"]), json.dumps(probe)],
        cwd=REPO, env={**os.environ, "MLOPS_HOME": str(tmp_path / ".mlops")},
        capture_output=True, text=True, timeout=120,
    )

    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT ")).split(" ", 1)[1])
    assert result["code"] == 0 and "json" in result["loaded"]
