"""A bundle whose bundle.json was cut short, emptied, edited by hand or written in a format this mlops does not
read is refused naming the file and each key at fault, by everything that reads a bundle (serve, batch,
evaluate...), never with pydantic's or json's traceback, and never as "not a model bundle" while both files are
there."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlops.cli import main
from mlops.core.errors import MlopsError
from mlops.core.refs import fetch
from mlops.package.bundle import FORMAT, read_bundle
from tests.serve_fixtures import build_bundle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


def edited(built: Path, dest: Path, change: Callable[[dict[str, Any]], object]) -> Path:
    shutil.copytree(built, dest)
    meta = json.loads((dest / "bundle.json").read_text())
    change(meta)
    (dest / "bundle.json").write_text(json.dumps(meta, indent=2))
    return dest


def drop(key: str) -> Callable[[dict[str, Any]], object]:
    return lambda meta: meta.pop(key)


def put(key: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda meta: meta.__setitem__(key, value)


@pytest.mark.parametrize("change, problems", [
    (drop("inputs"), ["inputs: required key missing"]),
    (drop("labels"), ["labels: required key missing"]),
    (drop("outputs"), ["outputs: required key missing"]),
    (drop("onnx_sha256"), ["onnx_sha256: required key missing"]),
    (put("log_limits", "x"), ['log_limits: expected an object, got "x"']),
    (put("packed", 5), ["packed: expected an object, got 5"]),
    (put("payloads", None), ["payloads: expected an object, got null"]),
    (lambda meta: meta["inputs"].__setitem__(0, {}), ["inputs[0].name: required key missing",
                                                      "inputs[0].kind: required key missing",
                                                      "inputs[0].dtype: required key missing"]),
    (lambda meta: (meta.pop("inputs"), meta.pop("task")), ["task: required key missing",
                                                          "inputs: required key missing"]),
])
def test_a_hand_edited_bundle_json_names_each_key_at_fault(built: Path, tmp_path: Path,
                                                            change: Callable[[dict[str, Any]], object],
                                                            problems: list[str]) -> None:
    bundle = edited(built, tmp_path / "b", change)
    with pytest.raises(MlopsError) as caught:
        read_bundle(bundle)
    lines = str(caught.value).splitlines()
    assert lines[:-1] == [f"{bundle}/bundle.json: {p}" for p in problems]
    assert "altered" in lines[-1]


def test_an_unknown_format_is_refused_saying_what_this_version_reads(built: Path, tmp_path: Path) -> None:
    bundle = edited(built, tmp_path / "b", put("format", "mlops-bundle/9"))
    with pytest.raises(MlopsError, match=re.escape(f"{bundle}/bundle.json: format 'mlops-bundle/9' is not one "
                                                   f"this mlops") + f".* reads {FORMAT!r}"):
        read_bundle(bundle)
    unversioned = edited(built, tmp_path / "old", drop("format"))  # the format was always written; its default
    assert read_bundle(unversioned).format == FORMAT


@pytest.mark.parametrize("text, message", [
    ("", "bundle.json is empty"),
    ("  \n", "bundle.json is empty"),
    ('{"format": "mlops-bun', "bundle.json is not valid JSON (Unterminated string"),
    ("[1, 2]", "bundle.json: expected a JSON object, got list"),
])
def test_a_damaged_bundle_json_is_not_called_a_missing_bundle(built: Path, tmp_path: Path, text: str,
                                                              message: str, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    bundle = tmp_path / "b"
    shutil.copytree(built, bundle)
    (bundle / "bundle.json").write_text(text)
    for read in (read_bundle, lambda path: fetch(str(path))):
        with pytest.raises(MlopsError, match=re.escape(f"{bundle}/{message}")):
            read(bundle)
    (tmp_path / "in.csv").write_text("age,income,city\n1,2,a\n")
    assert main(["batch", str(ROOT / "recipes" / "quickstart.yaml"), "--model", str(bundle), "--input",
                 str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.parquet"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {bundle}/{message}" in err and "not a model bundle" not in err and "Traceback" not in err


def test_the_cli_shows_every_problem_without_a_traceback(built: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    bundle = edited(built, tmp_path / "b", lambda meta: (meta.pop("labels"), meta.__setitem__("packed", 5)))
    (tmp_path / "in.csv").write_text("age,income,city\n1,2,a\n")
    assert main(["batch", str(ROOT / "recipes" / "quickstart.yaml"), "--model", str(bundle), "--input",
                 str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.parquet"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {bundle}/bundle.json: labels: required key missing\n{bundle}/bundle.json: packed: " in err
    assert "ValidationError" not in err and "Traceback" not in err
