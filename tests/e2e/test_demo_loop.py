"""`make demo-loop` as an e2e test: a real server, real Prefect flows, real MLflow, and no human in the loop.

The champion is trained and served; production traffic with ground truth drifts; the monitor fires; the retrain
answers that alert on refreshed data, passes its gates against the champion, its shadow window and the canary
steps on the live server, and becomes champion; the same server process then answers with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.postgres import throwaway_url

pytestmark = pytest.mark.e2e

# a shorter training and no inference benchmark: the loop's logic is the same at 15 epochs
FAST = ["trainer.max_epochs=6", "evaluate.performance.iterations=30", "evaluate.performance.torch=false",
        "evaluate.robustness.rows=50"]


# the loop trains, assesses and serves several models in one test: pytest-timeout's 600 s default (per test) is the
# budget of a single run; 433 s was measured for the image loop in a fresh-clone CI run on 2 cores
@pytest.mark.timeout(1500)
def test_the_loop_closes_with_no_human_in_it(isolated_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "examples/demo_loop.py", "--home", str(tmp_path / "loop"), "--json",
                           *FAST], cwd=ROOT, env=isolated_env, capture_output=True, text=True, timeout=1500)
    tail = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["champion_before"] == "1"
    assert summary["alerts_after_drift"], tail  # the monitor fired on the drifted traffic ...
    assert {"drift", "accuracy_drop"} & set(summary["alerts_after_drift"]), tail
    retrain = summary["retrain"]
    assert retrain["outcome"] == "promoted" and retrain["exit"] == 0, tail  # ... the retrain answered it ...
    assert retrain["trigger"] in ("drift", "accuracy_drop") and retrain["version"] == "2"
    assert summary["served_version"] == "2" and summary["server_pid_unchanged"]  # ... live, with no restart
    assert summary["traffic_errors"] == {}, tail  # and production never saw an error on the way


# two replicas train nothing more but share the 2 cores with the loop's other processes: more room than one
@pytest.mark.timeout(1800)
def test_the_loop_closes_on_a_shared_postgres_log_with_two_replicas(isolated_env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    """`make demo-loop ARGS="--log postgresql://... --replicas 2"`: two servers write one prediction log in
    PostgreSQL; production's predictions and their ground truth reach them in turn; the monitor and the retrain read
    that one log; both servers end up answering with the new champion, neither restarted."""
    with throwaway_url("mlops_loop") as log:
        proc = subprocess.run([sys.executable, "examples/demo_loop.py", "--home", str(tmp_path / "loop"), "--json",
                               "--log", log, "--replicas", "2", *FAST], cwd=ROOT, env=isolated_env,
                              capture_output=True, text=True, timeout=1800)
        tail = proc.stdout[-6000:] + proc.stderr[-3000:]
        assert proc.returncode == 0, tail
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        import psycopg2  # here, not at the top: throwaway_database has skipped the test when it is missing

        with psycopg2.connect(log, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM predictions WHERE variant <> 'shadow'")
            answered_rows = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM feedback")
            feedback_rows = cur.fetchone()[0]
    assert summary["replicas"] == 2 and summary["log"] == log
    # what the single-replica loop asserts ...
    assert summary["champion_before"] == "1"
    assert {"drift", "accuracy_drop"} & set(summary["alerts_after_drift"]), tail
    retrain = summary["retrain"]
    assert retrain["outcome"] == "promoted" and retrain["exit"] == 0, tail
    assert retrain["trigger"] in ("drift", "accuracy_drop") and retrain["version"] == "2"
    assert summary["served_versions"] == ["2", "2"] and summary["server_pid_unchanged"], tail  # both, no restart
    assert summary["traffic_errors"] == {}, tail  # no prediction failed, no ground truth was lost
    # ... and both replicas served rows that the monitor read: each monitor run read exactly what the two answered
    # since the last one, which neither answered alone
    reads = summary["monitor_reads"]
    assert [r["rows"] for r in reads] == [1000, 1500], reads
    for read in reads:
        assert len(read["served_by_replica"]) == 2 and min(read["served_by_replica"]) > 0, read
        assert sum(read["served_by_replica"]) == read["rows"], read
    served = summary["served_by_replica"]
    assert min(served) > 0 and answered_rows >= sum(served), (served, answered_rows)  # every answer is in the log
    assert feedback_rows >= sum(served)  # each with its ground truth, mostly sent to the other replica


def test_more_replicas_than_one_need_a_shared_log(isolated_env: dict[str, str], tmp_path: Path) -> None:
    for extra in ([], ["--log", str(tmp_path / "predictions.sqlite")]):
        proc = subprocess.run([sys.executable, "examples/demo_loop.py", "--home", str(tmp_path / "loop"),
                               "--replicas", "2", *extra], cwd=ROOT, env=isolated_env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "--log postgresql://" in proc.stderr
        assert not (tmp_path / "loop").exists()  # refused before anything ran


@pytest.mark.timeout(1800)
def test_the_image_loop_fires_on_embeddings_and_descriptors_and_closes(isolated_env: dict[str, str],
                                                                       tmp_path: Path) -> None:
    """`make demo-loop-images`: production's scanner turns brighter and noisier; the monitor sees it in the
    images' embedding and descriptors; the retrain learns from the production images the log kept."""
    proc = subprocess.run([sys.executable, "examples/demo_loop.py", "--images", "--home", str(tmp_path / "loop"),
                           "--json", "evaluate.performance.iterations=30",
                           "evaluate.performance.torch=false",
                           "evaluate.importance.samples=0"],  # no Captum attributions: the loop does not read them
                          cwd=ROOT, env=isolated_env, capture_output=True, text=True, timeout=1800)
    tail = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["alerts_before_drift"] == [], tail  # quiet while production looks like training
    assert "drift" in summary["alerts_after_drift"], tail
    drifted = set(summary["drifted_features"])
    assert "embedding" in drifted and {"image.brightness", "image.sharpness"} & drifted, drifted
    evidently = summary["evidently_embedding"]
    assert evidently and evidently["drift"] and evidently["agrees_with_fast_path"], evidently
    page = Path(summary["dashboard"]).read_text()
    assert "Embeddings" in page and "data:image/png;base64," in page  # drift over time and the drifted inputs
    retrain = summary["retrain"]
    assert retrain["outcome"] == "promoted" and retrain["exit"] == 0, tail
    assert summary["served_version"] == "2" and summary["server_pid_unchanged"]
    assert summary["traffic_errors"] == {}, tail
