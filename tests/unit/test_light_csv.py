"""The light CSV reader (`mlops.data.columns.read_table`, no pandas) against `pd.read_csv`: the same columns,
types, values and kinds on tricky files, Unsure (and so pandas) where it cannot vouch for the same answer, and
`mlops validate` giving the same problems and warnings whichever of the two read the file."""

from __future__ import annotations

import io
import math
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlops.core.errors import RecipeError
from mlops.data import checks, columns, sources
from mlops.data.columns import NA_VALUES, Column, Unsure, csv_header, inferred_kind, read_table
from mlops.engine import validate
from mlops.engine.validate import load_validated
from mlops.recipe import load_recipe
from mlops.recipe.compose import SHIPPED_CONFIGS

TRICKY = {
    "quoted commas": 'name,city,n\n"Smith, J",north,1\n"Doe, A","south, east",2\n',
    "empty fields": "a,b,c\n1,,x\n,2.5,\n3,4,y\n",
    "nan spellings": "a,b,c\nNA,1,None\nnan,2,null\nN/A,3,x\n#N/A,NaN,<NA>\n",
    "numbers as categories": "zip,code,y\n94110,007,a\n10001,010,b\n60601,+5,a\n",
    "floats": "x,y,z\n1.5,1e3,.5\n-2,2E-2,3.\n0,-0.0,1\n",
    "booleans": "flag,maybe,y\nTrue,true,1\nFALSE,,0\nfalse,False,1\n",
    "all missing": "a,b\n,1\n,2\n",
    "image paths": "img,label\na/x.png,cat\nb/y.JPG,dog\n,cat\n",
    "mixed strings": "a,b\n1,x\nfoo,2\n3.5,\n",
    "bom": "\ufeffid,label\n1,a\n2,b\n",
    "crlf": "id,label,v\r\n1,a,1.5\r\n2,b,\r\n",
    "blank lines": "id,label\n1,a\n\n2,b\n\n",
    "spaces in text": "id,label\n1, a\n2,b \n3, c d \n",
    "quoted numbers": 'id,v\n1,"2.5"\n2,"3"\n',
}

UNSURE = {
    "inf": "a,b\n1,inf\n2,3\n",
    "underscore": "a,b\n1,1_000\n2,3\n",
    "spaced number": "a,b\n1, 7\n2,3\n",
    "escaped quote": 'a,b\n1,"say ""hi"""\n2,x\n',
    "line break in a field": 'a,b\n1,"two\nlines"\n2,x\n',
    "latin-1": "a,b\n1,caf\xe9\n".encode("latin-1"),
    "duplicate header": "a,a\n1,2\n",
    "blank header": "a,\n1,2\n",
    "huge integer": "a,b\n1,99999999999999999999\n2,3\n",
    "bools and numbers": "a,b\n1,True\n2,1\n",
    "lone CR": "a,b\r1,2\r3,4\r",
}

PANDAS_DTYPES = {"int": "int64", "float": "float64", "bool": "bool", "object": "object"}


def _raw(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("text", TRICKY.values(), ids=TRICKY.keys())
def test_light_table_reads_as_pandas_does(text: str) -> None:
    raw = _raw(text)
    frame = pd.read_csv(io.BytesIO(raw))

    table = read_table(raw, exact=[str(c) for c in frame.columns])

    assert table.columns == [str(c) for c in frame.columns]
    assert len(table) == len(frame)
    assert csv_header(raw) == table.columns
    for name in table.columns:
        light, series = table[name], frame[name]
        assert PANDAS_DTYPES[light.dtype] == str(series.dtype), name
        expected = series.tolist()
        got = light.tolist()
        assert len(got) == len(expected)
        assert light.exact is not False
        assert all(_same(g, e) for g, e in zip(got, expected, strict=True)), (name, got, expected)
        assert inferred_kind(light) == inferred_kind(series), name


def test_numbers_said_exact_are_the_doubles_pandas_reads() -> None:
    rng = random.Random(19)
    texts = [f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 9)}f}" for _ in range(3000)]
    texts += [f"{rng.randint(1, 999999)}e{rng.randint(-30, 30)}" for _ in range(1000)]
    texts += [repr(rng.random()) for _ in range(1000)] + ["0.14285714285714285", "12345678901234567", "1e-25"]
    raw = ("v\n" + "\n".join(texts) + "\n").encode()
    expected = pd.read_csv(io.BytesIO(raw))["v"].tolist()

    exact = [columns._exact(t) for t in texts]
    light = read_table(raw)["v"]

    assert any(exact) and not all(exact)  # both kinds occur: the check is not vacuous
    assert all(g == e for g, e, ok in zip(light.values, expected, exact, strict=True) if ok)
    assert light.exact is None  # not asked for
    assert read_table(raw.replace(b"1e-25\n", b"")[: raw.index(b"\n", 2000)], exact=["v"])["v"].exact
    with pytest.raises(Unsure):
        read_table(raw, exact=["v"])


@pytest.mark.parametrize("text", UNSURE.values(), ids=UNSURE.keys())
def test_the_light_reader_gives_way_where_pandas_might_differ(text: str | bytes) -> None:
    with pytest.raises(Unsure):
        read_table(_raw(text))


def test_the_missing_spellings_are_pandas_own() -> None:
    from pandas._libs.parsers import STR_NA_VALUES

    assert set(STR_NA_VALUES) == NA_VALUES


def test_the_slice_constants_are_the_evaluations() -> None:
    from mlops.evaluate import slices

    assert (validate.MAX_VALUES, validate.MISSING) == (slices.MAX_VALUES, slices.MISSING)


@pytest.mark.parametrize("text", ["v\n2\n10\n\n1\n", "v\n1.0\n2.5\n\n", "v\nb\na\nNA\n", "v\nTrue\nfalse\n"],
                         ids=["ints", "floats", "strings", "booleans"])
def test_value_slices_are_listed_as_the_evaluation_lists_them(text: str) -> None:
    from mlops.evaluate.slices import slice_labels

    frame = pd.read_csv(io.StringIO(text))

    assert validate.value_slices(read_table(text.encode())["v"]) == slice_labels(frame["v"], None, column="v")[1]


@pytest.mark.parametrize("text", ["y\nb\na\nb\n", "y\n1\n0\n", "y\n1.5\n0.0\n2.0\n", "y\nTrue\nFalse\nTrue\n",
                                  "y\n" + "".join(f"{i / 8}\n" for i in range(60))],
                         ids=["strings", "ints", "floats", "booleans", "regression"])
def test_task_and_labels_as_for_the_pandas_column(text: str) -> None:
    from mlops.data.schema import infer_task, label_names

    series = pd.read_csv(io.StringIO(text))["y"]
    light = read_table(text.encode())["y"]

    assert checks.target_task(light, "auto") == infer_task(series.dropna(), "auto")
    assert checks.target_labels(light) == label_names(series)


# --- validate on a CSV recipe: the same answer whichever reader read the file ---------------------------------

HEADER = "id,age,plan,region,churned\n"
ROWS = "".join(f"{i},{20 + i},{['basic', 'plus'][i % 2]},{['north', 'south'][i % 2]},{i // 2 % 2}\n"
               for i in range(40))
RECIPE = """\
name: q
data:
  path: ../data/d.csv
  target: churned
evaluate:
  slices:
    - column: plan
  fairness:
    sensitive: [region]
    positive_label: "1"
  gates:
    - metric: test/auroc
      slice: plan=basic
      min: 0.5
"""

CASES = {
    "valid": HEADER + ROWS,
    "ragged": HEADER + ROWS + "41,3,basic\n" + "42,1,plus,north,0,extra\n",
    "missing target": HEADER + ROWS.replace(",0\n", ",\n", 3),
    "single class": HEADER + "".join(f"{i},{i},basic,north,1\n" for i in range(30)),
    "not a slice value": (HEADER + ROWS).replace("basic", "basik"),
    "positive label absent": HEADER + ROWS.replace(",1\n", ",2\n"),
    "too few for the split": HEADER + "1,3,basic,north,0\n2,4,plus,south,1\n3,5,plus,south,1\n",
    "a single row of a class": HEADER + ROWS + "99,9,plus,north,2\n",
    "long decimals in the target": HEADER + ROWS.replace(",1\n", ",0.14285714285714285\n"),
    "empty column and spaces": (HEADER + ROWS).replace("north", " north").replace(",2", ",NA", 3),
    "quoted, CRLF, BOM": "\ufeff" + (HEADER + ROWS).replace("\n", "\r\n").replace("plus", '"plus"'),
    "header only": HEADER,
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(SHIPPED_CONFIGS, tmp_path / "configs")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "recipes" / "q.yaml").write_text(RECIPE)
    monkeypatch.delenv("MLOPS_CONFIG_PATH", raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _outcome(project: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[tuple[str, str, str, str]], str]:
    try:
        load_validated(project / "recipes" / "q.yaml", [])
        problems = []
    except RecipeError as exc:
        problems = [(p.key, p.message, p.where, p.hint) for p in exc.problems]
    return problems, capsys.readouterr().err


@pytest.mark.parametrize("text", CASES.values(), ids=CASES.keys())
def test_validate_says_the_same_with_either_reader(text: str, project: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "data" / "d.csv").write_bytes(text.encode())
    read = []

    def spy(*args: object, **kwargs: object) -> columns.Table:
        read.append(table := columns.read_table(*args, **kwargs))  # type: ignore[arg-type]
        return table

    monkeypatch.setattr(checks, "read_light_table", spy)
    light = _outcome(project, capsys)
    # the light reader did read it (a ragged file or a bare header are refused before any rows are read; long
    # decimals in the target go to pandas)
    assert bool(read) == (text not in (CASES["ragged"], CASES["header only"], CASES["long decimals in the target"]))

    def unsure(*_: object, **__: object) -> None:
        raise Unsure("forced")

    monkeypatch.setattr(checks, "read_light_table", unsure)
    monkeypatch.setattr(columns, "csv_header", unsure)
    monkeypatch.setattr(sources, "csv_header", unsure)
    heavy = _outcome(project, capsys)

    assert light == heavy
    if text not in (CASES["valid"], CASES["quoted, CRLF, BOM"], CASES["long decimals in the target"]):
        assert light[0] or light[1], "the case should find something"


def test_the_fallback_reads_a_file_the_light_reader_refuses(project: Path) -> None:
    (project / "data" / "d.csv").write_text(HEADER + ROWS.replace("north", '"no ""rth"""'))
    recipe = load_validated(project / "recipes" / "q.yaml", []).recipe
    composed = load_validated(project / "recipes" / "q.yaml", []).composed

    rows = checks.read_rows(recipe, composed)

    assert isinstance(rows.frame, pd.DataFrame) and len(rows.frame) == 40


def test_the_light_identity_is_the_files_bytes(project: Path) -> None:
    (project / "data" / "d.csv").write_text(HEADER + ROWS)
    recipe = load_validated(project / "recipes" / "q.yaml", []).recipe

    light = sources.load_rows(recipe.data, project / "recipes" / "q.yaml", keep_images=False)

    assert isinstance(light.frame, columns.Table)
    assert sources.source_identity(recipe.data, project / "recipes" / "q.yaml") == (project / "data" / "d.csv").read_bytes()


def test_a_light_column_is_typed_once_for_the_whole_file() -> None:
    column = read_table(b"a\n1\n2\nx\n")["a"]

    assert column == Column("a", ["1", "2", "x"], "object")


def test_the_identity_of_rows_naming_image_files_is_the_same_either_way(project: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name, content in (("a.png", b"\x89PNG one"), ("b.png", b"\x89PNG two")):
        (project / "data" / name).write_bytes(content)
    (project / "data" / "d.csv").write_text("photo,n,churned\na.png,1,0\nb.png,2,1\n,3,0\nb.png,4,1\n")
    recipe = project / "recipes" / "q.yaml"
    recipe.write_text("name: q\ndata:\n  path: ../data/d.csv\n  target: churned\n")
    data = load_recipe(recipe, []).recipe.data  # not validated: the "images" are not images
    light = sources.source_identity(data, recipe)

    def unsure(*_: object, **__: object) -> None:
        raise Unsure("forced")

    monkeypatch.setattr(sources, "read_light_table", unsure)
    heavy = sources.source_identity(data, recipe)

    assert light == heavy
    assert sources.MANIFEST in light and b"photo\t3\tb.png\t" in light


def test_a_file_beyond_the_light_bound_is_read_by_pandas(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "data" / "d.csv").write_text(HEADER + ROWS)
    loaded = load_validated(project / "recipes" / "q.yaml", [])
    assert isinstance(checks.read_rows(loaded.recipe, loaded.composed).frame, columns.Table)

    monkeypatch.setattr(checks, "LIGHT_BYTES", len(HEADER + ROWS) - 1)

    assert isinstance(checks.read_rows(loaded.recipe, loaded.composed).frame, pd.DataFrame)
