"""`mlops batch` SIGKILLed mid-run and run again: finished chunks are skipped and the output is the same file
an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlops.score.batch import parts_dir, score_local
from mlops.score.source import open_input
from tests.conftest import ROOT
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration

ROWS = 30_000
CHUNK = 250


def test_a_killed_batch_resumes_where_it_stopped(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "bundle")
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(ROWS)], "age": rng.normal(40, 10, ROWS).round(2).astype(object),
                          "income": rng.normal(50, 15, ROWS).round(2), "city": rng.choice(["a", "b", "c"], ROWS)})
    frame.loc[rng.choice(ROWS, 50, replace=False), "age"] = "n/k"  # bad rows in many chunks
    frame.to_csv(tmp_path / "rows.csv", index=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: toy\ndata:\n  path: rows.csv\n  target: y\n")
    output = tmp_path / "scores.parquet"
    manifest = parts_dir(output) / "manifest.json"
    command = [sys.executable, "-m", "mlops.cli", "batch", str(recipe), "--model", str(bundle), "--output",
               str(output), "--chunk-rows", str(CHUNK), "--id-column", "id", "--no-progress", "--json"]

    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and _done(manifest) < 3:
            assert proc.poll() is None, f"finished before it could be killed:\n{proc.stdout.read()}"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_at_kill = _done(manifest)
    assert 3 <= done_at_kill < ROWS // CHUNK and not output.exists()

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)

    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["resumed_chunks"] >= done_at_kill  # the chunk in flight may have landed after the count
    assert summary["chunks"] == ROWS // CHUNK and summary["rows"] == ROWS and summary["failed"] == 50
    assert not parts_dir(output).exists()
    clean = score_local(open_input(tmp_path / "rows.csv"), bundle, None, tmp_path / "clean.parquet",
                        chunk_rows=CHUNK, id_column="id", progress=False)
    assert clean.failed == 50
    assert pq.read_table(output).equals(pq.read_table(tmp_path / "clean.parquet"))


def _done(manifest: Path) -> int:
    try:
        return len(json.loads(manifest.read_text())["done"])
    except (OSError, ValueError):  # not written yet
        return 0
