"""`mlops batch` on the local engine: every row out, bad rows reported, chunking invisible, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mlops.score.batch as batch
from mlops.cli import main
from mlops.core.errors import DataError, MlopsError
from mlops.score.batch import parts_dir, score_local
from mlops.score.source import check_unique_ids, open_input
from mlops.score.spark import score_spark
from tests.serve_fixtures import build_bundle, training_frame


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("score-batch") / "bundle")


def scored_csv(path: Path, n: int = 40) -> Path:
    frame = training_frame(n, seed=4).drop(columns="y").astype(object)
    frame.insert(0, "customer", [f"c{i:03d}" for i in range(n)])
    frame.loc[3, "age"] = "forty"
    frame.loc[8, "income"] = ""            # missing: imputed, not an error
    frame.loc[13, "city"] = "NA"           # missing too, as read_csv reads it
    frame.loc[21, "income"] = "inf"
    frame.loc[22, "customer"] = ""         # no id
    frame.loc[30, "city"] = 'north, "old" town'  # quoted in the file
    frame.to_csv(path, index=False)
    return path


def test_every_row_is_scored_or_reported_with_its_column(bundle: Path, tmp_path: Path) -> None:
    inp = open_input(scored_csv(tmp_path / "in.csv"))

    result = score_local(inp, bundle, "4", tmp_path / "out.parquet", chunk_rows=16, id_column="customer",
                         progress=False)
    out = pd.read_parquet(tmp_path / "out.parquet")

    assert len(out) == 40 and out["row"].tolist() == list(range(40))
    assert out["id"][0] == "c000" and out["id"][22] == "in.csv:22"
    failed = out[out["error"].notna()]
    assert failed["row"].tolist() == [3, 21, 22]
    assert failed["error"].tolist() == ["age: expected a number for 'age', got str (value 'forty')",
                                        "income: non-finite number inf (send null for a missing value)",
                                        "customer: missing id"]
    assert failed["label"].isna().all() and failed["probabilities"].isna().all()
    ok = out[out["error"].isna()]
    assert set(ok["label"]) <= {"yes", "no"} and ok["label"].notna().all()
    assert (out["model"] == "toy").all() and (out["version"] == "4").all()
    assert (result.rows, result.scored, result.failed, result.chunks) == (40, 37, 3, 3)
    assert result.errors_by_column == {"age": 1, "customer": 1, "income": 1}
    assert [e["row"] for e in result.examples] == [3, 21, 22]
    assert not parts_dir(tmp_path / "out.parquet").exists()


def test_chunk_size_does_not_change_a_single_prediction(bundle: Path, tmp_path: Path) -> None:
    inp = open_input(scored_csv(tmp_path / "in.csv"))

    score_local(inp, bundle, None, tmp_path / "a.parquet", chunk_rows=3, progress=False)
    score_local(inp, bundle, None, tmp_path / "b.parquet", chunk_rows=1000, progress=False)
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")

    pd.testing.assert_frame_equal(a.drop(columns="probabilities"), b.drop(columns="probabilities"))
    ok = a["error"].isna()
    np.testing.assert_allclose(np.stack(a["probabilities"][ok]), np.stack(b["probabilities"][ok]), atol=1e-6)


def test_parquet_input_keeps_its_types(bundle: Path, tmp_path: Path) -> None:
    frame = pd.DataFrame({"age": [30.0, np.nan, np.inf, 2.0], "income": pd.array([10, None, 3, 2**25], dtype="Int64"),
                          "city": ["a", None, "b", "c"], "key": pd.array([101, 102, None, 104], dtype="Int64")})
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in.parquet", row_group_size=3)

    score_local(open_input(tmp_path / "in.parquet"), bundle, None, tmp_path / "out.parquet", chunk_rows=2,
                progress=False)
    score_local(open_input(tmp_path / "in.parquet"), bundle, None, tmp_path / "keyed.parquet", chunk_rows=2,
                id_column="key", progress=False)
    out, keyed = pd.read_parquet(tmp_path / "out.parquet"), pd.read_parquet(tmp_path / "keyed.parquet")

    assert out["id"].tolist() == [f"in.parquet:{i}" for i in range(4)]
    assert out["error"].tolist() == [None, None, "age: non-finite number inf (send null for a missing value)",
                                     "income: integer 33554432 cannot be cast to FP32 without loss"]
    assert keyed["id"].tolist() == ["101", "102", "in.parquet:2", "104"]  # integers, not "101.0"
    assert keyed["error"][2] == "key: missing id; age: non-finite number inf (send null for a missing value)"


def test_a_rerun_after_a_crash_skips_finished_chunks_and_writes_the_same_file(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    inp = open_input(scored_csv(tmp_path / "in.csv"))
    score_local(inp, bundle, "1", tmp_path / "clean.parquet", chunk_rows=6, id_column="customer", progress=False)
    real_write, written = batch.write_part, []

    def crash_on_the_fourth(path: Path, table: pa.Table) -> None:
        if len(written) == 3:
            raise OSError("disk on fire")
        written.append(path.name)
        real_write(path, table)

    monkeypatch.setattr(batch, "write_part", crash_on_the_fourth)
    with pytest.raises(OSError):
        score_local(inp, bundle, "1", tmp_path / "out.parquet", chunk_rows=6, id_column="customer", progress=False)
    monkeypatch.setattr(batch, "write_part", real_write)
    assert not (tmp_path / "out.parquet").exists()
    assert sorted(p.name for p in parts_dir(tmp_path / "out.parquet").glob("part-*")) == written

    result = score_local(inp, bundle, "1", tmp_path / "out.parquet", chunk_rows=6, id_column="customer",
                         progress=False)

    assert result.resumed_chunks == 3 and result.chunks == 7
    assert (result.rows, result.failed) == (40, 3)  # counts of resumed chunks come from the manifest
    assert (tmp_path / "out.parquet").read_bytes() == (tmp_path / "clean.parquet").read_bytes()

    # another chunk size (or model, or input) makes the parts useless: discarded, not mixed in
    monkeypatch.setattr(batch, "write_part", crash_on_the_fourth)
    written.clear()
    with pytest.raises(OSError):
        score_local(inp, bundle, "1", tmp_path / "again.parquet", chunk_rows=6, progress=False)
    monkeypatch.setattr(batch, "write_part", real_write)
    result = score_local(inp, bundle, "1", tmp_path / "again.parquet", chunk_rows=9, progress=False)
    assert result.resumed_chunks == 0 and result.rows == 40
    assert "discarded, starting over" in capsys.readouterr().err


def test_a_header_only_file_gives_an_empty_output(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("age,income,city\n")

    result = score_local(open_input(tmp_path / "in.csv"), bundle, None, tmp_path / "out.parquet", progress=False)

    table = pq.read_table(tmp_path / "out.parquet")
    assert result.rows == 0 and table.num_rows == 0
    assert table.schema.names == ["id", "row", "model", "version", "label", "probabilities", "error"]


def test_whole_file_problems_stop_before_scoring(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("age,income,town\n1,2,a\n")
    (tmp_path / "in.txt").write_text("age\n")

    with pytest.raises(DataError, match="lacks the model's input column city .*it has: age, income, town"):
        score_local(open_input(tmp_path / "in.csv"), bundle, None, tmp_path / "o.parquet", progress=False)
    with pytest.raises(DataError, match="--id-column 'key' is not a column"):
        score_local(open_input(scored_csv(tmp_path / "ok.csv")), bundle, None, tmp_path / "o.parquet",
                    id_column="key", progress=False)
    with pytest.raises(DataError, match="pass --format csv or --format parquet"):
        open_input(tmp_path / "in.txt")
    with pytest.raises(DataError, match="input file not found"):
        open_input(tmp_path / "nope.csv")
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(MlopsError, match="is a directory"):
        score_local(open_input(scored_csv(tmp_path / "ok.csv")), bundle, None, tmp_path / "dir.parquet")
    with pytest.raises(MlopsError, match="--chunk-rows 0"):
        score_local(open_input(scored_csv(tmp_path / "ok.csv")), bundle, None, tmp_path / "o.parquet", chunk_rows=0)
    assert not (tmp_path / "o.parquet").exists()


def test_duplicate_ids_are_refused_before_scoring(bundle: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """An id keys its row's prediction: two rows under one id would make a join on it ambiguous. The refusal
    names each duplicated id with its rows, and the count; empty ids are each row's own error, no duplicate."""
    frame = pd.read_csv(scored_csv(tmp_path / "in.csv"), dtype=str, keep_default_na=False)
    frame.loc[[9, 17, 33], "customer"] = "c001"
    frame.loc[25, "customer"] = "c024"
    frame.loc[23, "customer"] = ""  # a second missing id (row 22 has one)
    frame.to_csv(tmp_path / "dup.csv", index=False)

    with pytest.raises(DataError) as refused:
        score_local(open_input(tmp_path / "dup.csv"), bundle, None, tmp_path / "o.parquet", chunk_rows=16,
                    id_column="customer", progress=False)
    message = str(refused.value)
    assert "--id-column 'customer' of " in message and "2 ids appear on more than one row (6 rows in all): " \
        "'c001' at rows 1, 9, 17 and 33; 'c024' at rows 24 and 25 (rows counted from 0" in message, message
    assert "leave out --id-column" in message
    assert not (tmp_path / "o.parquet").exists() and not parts_dir(tmp_path / "o.parquet").exists()
    with pytest.raises(DataError, match="2 ids appear on more than one row"):  # before a Spark session starts
        score_spark(open_input(tmp_path / "dup.csv"), bundle, None, str(tmp_path / "o"), id_column="customer")

    # Parquet, its id column typed (an integer cast to text, as the scoring reads it), many duplicates
    keys = list(range(40))
    for i in range(7):
        keys[30 + i] = i
    table = pa.Table.from_pandas(frame.assign(key=keys).drop(columns="customer"), preserve_index=False)
    pq.write_table(table, tmp_path / "dup.parquet")
    code = main(["batch", str(write_recipe(tmp_path)), "--model", str(bundle), "--input", str(tmp_path / "dup.parquet"),
                 "--output", str(tmp_path / "o.parquet"), "--id-column", "key", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --id-column 'key' of ") and "Traceback" not in err, err
    assert "7 ids appear on more than one row (14 rows in all): '0' at rows 0 and 30; '1' at rows 1 and 31;" in err
    assert "'4' at rows 4 and 34; and 2 more (rows counted" in err


def test_the_duplicate_check_tells_a_hash_collision_from_a_duplicate(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The first pass keeps a hash per row, not the ids; rows whose hashes agree are looked at again by their ids.
    With every hash made equal, unique ids still pass and a real duplicate is still named with its rows."""
    import mlops.score.source as source

    monkeypatch.setattr(source, "_id_hashes", lambda ids, keep_missing=False: np.zeros(
        len(ids) if keep_missing else sum(i is not None for i in ids), dtype=np.uint64))
    monkeypatch.setattr(source, "ID_CHUNK_ROWS", 3)  # ids over several chunks
    pd.DataFrame({"id": ["a", "b", "", "c", "d", "e", "f"]}).to_csv(tmp_path / "u.csv", index=False)
    check_unique_ids(open_input(tmp_path / "u.csv"), "id", as_text=True)
    pd.DataFrame({"id": ["a", "b", "", "c", "b", "e", "a"]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match="2 ids appear on more than one row \\(4 rows in all\\): 'b' at rows 1 and 4; "
                                        "'a' at rows 0 and 6"):
        check_unique_ids(open_input(tmp_path / "d.csv"), "id", as_text=True)


def write_recipe(directory: Path, data: str = "in.csv") -> Path:
    recipe = directory / "recipe.yaml"
    recipe.write_text(f"name: toy\nregistry:\n  model_name: churny\ndata:\n  path: {data}\n  target: y\n")
    return recipe


def test_the_command_scores_the_recipes_data_by_default(bundle: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    scored_csv(tmp_path / "in.csv")
    recipe = write_recipe(tmp_path)

    code = main(["batch", str(recipe), "--model", str(bundle), "--output", str(tmp_path / "o.parquet"),
                 "--no-progress", "--json"])

    captured = capsys.readouterr()
    assert code == 0
    assert "scored 38 of 40 rows" in captured.err and "row 3 (id in.csv:3): age: expected a number" in captured.err
    assert json.loads(captured.out)["scored"] == 38  # --json: stdout holds the summary alone
    assert pd.read_parquet(tmp_path / "o.parquet")["id"][5] == "in.csv:5"


@pytest.mark.parametrize(("extra", "message"), [
    (["--spark-master", "local[2]"], "--spark-master and --spark-conf need --engine spark"),
    (["--engine", "spark", "--spark-conf", "executor.memory=4g"], "expected KEY=VALUE with a spark.* key"),
    (["--chunk-rows", "-5"], "--chunk-rows -5: expected a positive number"),
    (["--input", "missing.csv"], "input file not found"),
    (["--output", "scores.csv"], "--output scores.csv: the scores are written as Parquet, not CSV: name it "
                                 "scores.parquet"),  # Parquet bytes under a .csv name
])
def test_bad_flags_exit_2_with_what_to_do(extra: list[str], message: str, bundle: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    scored_csv(tmp_path / "in.csv")

    code = main(["batch", str(write_recipe(tmp_path)), "--model", str(bundle), "--output",
                 str(tmp_path / "o.parquet"), *extra])

    assert code == 2 and message in capsys.readouterr().err


def test_a_recipe_on_a_builtin_dataset_needs_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: bc\ndata:\n  dataset: breast_cancer\n  target: target\n")

    code = main(["batch", str(recipe), "--output", str(tmp_path / "o.parquet")])

    assert code == 2 and "give the rows to score with --input FILE" in capsys.readouterr().err


def test_the_default_model_is_the_recipes_champion(tmp_path: Path) -> None:
    from mlops.cli.score import model_ref
    from mlops.recipe import load_recipe

    loaded = load_recipe(write_recipe(tmp_path))

    assert model_ref(None, loaded) == "churny@champion"
    assert model_ref("churny/3", loaded) == "churny/3"
