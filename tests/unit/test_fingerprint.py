"""Data versioning: content fingerprints and DVC revisions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mlops.data.fingerprint import dvc_revision, file_source_fingerprint, fingerprint_bytes, fingerprint_frame
from mlops.recipe.schema import DataConfig


def test_fingerprint_changes_with_one_byte() -> None:
    assert fingerprint_bytes(b"a,b\n1,2\n") != fingerprint_bytes(b"a,b\n1,3\n")
    assert fingerprint_bytes(b"x") == fingerprint_bytes(b"x")


def test_frame_fingerprint_sees_values_and_column_names() -> None:
    base = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    assert fingerprint_frame(base) == fingerprint_frame(base.copy())
    assert fingerprint_frame(base) != fingerprint_frame(base.assign(a=[1.0, 2.5]))
    assert fingerprint_frame(base) != fingerprint_frame(base.rename(columns={"b": "c"}))


def test_dvc_revision_from_dot_dvc_file(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("a\n1\n")
    assert dvc_revision(data) is None
    (tmp_path / "train.csv.dvc").write_text("outs:\n- md5: 3f2a9c\n  size: 4\n  path: train.csv\n")
    assert dvc_revision(data) == {"file": str(tmp_path / "train.csv.dvc"), "md5": "3f2a9c", "size": 4}


def test_dvc_revision_from_dvc_lock(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "rows.parquet"
    data.write_bytes(b"PAR1")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: python prep.py\n    outs:\n"
        "    - path: data/rows.parquet\n      md5: beef01\n      size: 4\n")
    assert dvc_revision(data)["md5"] == "beef01"


def test_a_plain_files_source_fingerprint_is_its_bytes(tmp_path: Path) -> None:
    """Tables without image files keep the fingerprint (and so the cache keys) they always had."""
    (tmp_path / "d.csv").write_text("a,y\n1,0\n2,1\n")
    data = DataConfig(path="d.csv", target="y")
    assert file_source_fingerprint(data, tmp_path / "r.yaml") == fingerprint_bytes((tmp_path / "d.csv").read_bytes())
