"""A user's mistake found while a run runs (inside a Prefect task) is one clean error on the terminal: Prefect's
tracebacks go to a log file in the workspace, whose path is printed with the error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.e2e


def test_a_user_error_inside_a_task_prints_one_error_and_where_its_trace_is(isolated_env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    rows = (ROOT / "examples" / "churn.csv").read_text().splitlines()
    # far down the file, so only the check_data step (a Prefect task) sees it
    rows.insert(len(rows) - 5, "16.4,25.61,1.0,gold,south,no")
    data = tmp_path / "churn_gold.csv"
    data.write_text("\n".join(rows) + "\n")

    proc = run_cli(["run", "recipes/churn_csv.yaml", f"data.path={data}", "trainer.max_epochs=1"], isolated_env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Task run failed" not in proc.stderr, proc.stderr
    assert proc.stderr.count("'gold'") == 1, proc.stderr  # the error once, from the CLI
    assert "error: data " in proc.stderr and "breaks 1 expectation" in proc.stderr
    found = re.search(r"\(the full trace is in (.+)\)", proc.stderr)
    assert found, proc.stderr
    trace = Path(found[1])
    assert trace.parent == Path(isolated_env["MLOPS_HOME"]) / "logs"
    text = trace.read_text()
    assert "Traceback (most recent call last)" in text and "mlops.core.errors.ExpectationError" in text


def test_a_prefect_home_that_cannot_be_written_is_one_error_before_anything_runs(tmp_path: Path) -> None:
    """Prefect's own answer is a warning, a temporary server that cannot open its database, thousands of lines
    of traceback and a wait for that server: the CLI refuses the home instead, naming it."""
    from tests.conftest import cli_env

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    env = cli_env(tmp_path / ".mlops", blocker / "prefect", None)  # the temporary server, as a user gets it
    proc = run_cli(["run", "recipes/quickstart.yaml", "trainer.max_epochs=1"], env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: the Prefect home {blocker / 'prefect'} (PREFECT_HOME, else ~/.prefect) cannot be written" \
        in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / ".mlops" / "mlflow.db").exists()  # refused before any tracking or training
