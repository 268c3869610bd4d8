"""Images and text as data: an image folder and tables of image paths or bytes as sources, the fingerprint
over every image's bytes, the schema of image and text columns, their checks before training (and validate's
sampled decode), and the arrays the preprocess step writes for the network."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlops.core.errors import DataError, ExpectationError, RecipeError
from mlops.data.columns import inferred_kind
from mlops.data.expectations import check_expectations, check_media
from mlops.data.fingerprint import file_source_fingerprint, fingerprint_bytes
from mlops.data.media import TABULAR, ModelInputs, load_tokenizer
from mlops.data.preprocess import pixel_stats
from mlops.data.schema import infer_schema
from mlops.data.sources import column_names, load_frame, load_rows
from mlops.engine.results import PreprocessResult, StepOutput
from mlops.engine.steps.check_data import check_data
from mlops.engine.steps.common import RunContext
from mlops.engine.steps.load_data import load_data
from mlops.engine.steps.preprocess import preprocess
from mlops.engine.steps.split import split
from mlops.engine.validate import load_validated
from mlops.recipe.schema import DataConfig, ExpectationsConfig

WORDS = ["good", "bad", "tasty", "stale", "crisp", "sweet", "salty", "fresh", "awful", "great"]


def png(size: tuple[int, int] = (12, 10), color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    """An encoded PNG of `size` (width, height)."""
    buf = io.BytesIO()
    Image.new(mode, size, color if mode != "L" else color[0]).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root: Path, per_class: int = 6) -> Path:
    folder = root / "images"
    for k, cls in enumerate(("cat", "dog")):
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            (folder / cls / f"{i:02d}.png").write_bytes(png((10 + i, 8 + k), (20 * i, 100 * k, 50)))
    (folder / "cat" / ".DS_Store").write_bytes(b"\0")  # not an image: skipped
    (folder / "README.txt").write_text("one folder per class")
    return folder


def image_table(root: Path, n: int = 20) -> pd.DataFrame:
    """A CSV's rows: image paths (relative to the CSV), a text, a number and the label."""
    (root / "pics").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "pics" / f"{i}.png").write_bytes(png((8 + i % 3, 8), (10 * i, 5, 255 - 10 * i)))
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "photo": [f"pics/{i}.png" for i in range(n)],
        "review": [" ".join(rng.choice(WORDS, 3 + i % 4)) for i in range(n)],
        "price": rng.normal(10, 2, n).round(2),
        "y": ["yes" if i % 2 else "no" for i in range(n)],
    })


def run_steps(recipe: Path, out: Path, until: str = "preprocess") -> RunContext:
    """The data steps through their functions, as a run calls them (no cache, no tracking)."""
    ctx = RunContext(loaded=load_validated(recipe), run_id=None, tracking_uri="")
    for name, fn in (("load_data", load_data), ("check_data", check_data), ("split", split),
                     ("preprocess", preprocess)):
        step_dir = out / name
        step_dir.mkdir(parents=True)
        ctx.record(name, StepOutput(fn(ctx, step_dir), step_dir))
        if name == until:
            break
    return ctx


# --- sources -----------------------------------------------------------------------------------------------


def test_an_image_folder_is_one_row_per_image_in_sorted_order(tmp_path: Path) -> None:
    folder = image_folder(tmp_path)
    data = DataConfig(path="images", target="label")
    frame, raw = load_frame(data, tmp_path / "r.yaml")
    assert list(frame.columns) == ["image", "label"] == column_names(data, tmp_path / "r.yaml")
    assert frame["label"].tolist() == ["cat"] * 6 + ["dog"] * 6
    assert frame["image"].tolist()[0] == (folder / "cat" / "00.png").read_bytes()  # bytes, not paths
    assert b"cat/00.png" in raw and b"dog/05.png" in raw  # the manifest names every file, in row order
    assert raw.index(b"cat/05.png") < raw.index(b"dog/00.png")


def test_validate_knows_an_image_folders_columns_without_reading_images(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()  # empty: listing or reading it would fail
    assert column_names(DataConfig(path="images", target="label"), tmp_path / "r.yaml") == ["image", "label"]
    with pytest.raises(DataError, match="has no images: expected one subfolder per class"):
        load_frame(DataConfig(path="images", target="label"), tmp_path / "r.yaml")


def test_an_image_outside_a_class_folder_is_named(tmp_path: Path) -> None:
    image_folder(tmp_path)
    (tmp_path / "images" / "stray.png").write_bytes(png())
    with pytest.raises(DataError, match=r"stray\.png is not inside a class folder"):
        load_frame(DataConfig(path="images", format="image_folder", target="label"), tmp_path / "r.yaml")


def test_a_csv_of_paths_and_a_parquet_of_bytes_load_the_same_images(tmp_path: Path) -> None:
    table = image_table(tmp_path)
    table.to_csv(tmp_path / "d.csv", index=False)
    absolute = table.assign(photo=[str(tmp_path / p) for p in table["photo"]])
    absolute.to_csv(tmp_path / "abs.csv", index=False)
    as_bytes = table.assign(photo=[(tmp_path / p).read_bytes() for p in table["photo"]])
    as_bytes.to_parquet(tmp_path / "d.parquet", index=False)
    recipe = tmp_path / "r.yaml"
    from_csv = load_rows(DataConfig(path="d.csv", target="y"), recipe)
    from_abs, _ = load_frame(DataConfig(path="abs.csv", target="y"), recipe)
    from_parquet, raw = load_frame(DataConfig(path="d.parquet", target="y"), recipe)
    assert raw == (tmp_path / "d.parquet").read_bytes()  # bytes in the table: the table's bytes cover them
    for frame in (from_csv.frame, from_abs, from_parquet):
        assert frame["photo"].tolist() == as_bytes["photo"].tolist()
        assert frame["review"].tolist() == table["review"].tolist()  # text stays text
    assert from_csv.image_files == {"photo": table["photo"].tolist()}


def test_a_missing_image_file_names_its_row_and_file(tmp_path: Path) -> None:
    table = image_table(tmp_path, n=6)
    (tmp_path / "pics" / "4.png").unlink()
    table.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError) as err:
        load_frame(DataConfig(path="d.csv", target="y"), tmp_path / "r.yaml")
    message = str(err.value)
    assert "d.csv" in message and "column 'photo', row 4: image file not found" in message
    assert str(tmp_path / "pics" / "4.png") in message


# --- the fingerprint ---------------------------------------------------------------------------------------


def test_the_fingerprint_changes_with_one_images_bytes_and_not_otherwise(tmp_path: Path) -> None:
    folder = image_folder(tmp_path)
    image_table(tmp_path).to_csv(tmp_path / "d.csv", index=False)
    recipe = tmp_path / "r.yaml"
    for data in (DataConfig(path="images", target="label"), DataConfig(path="d.csv", target="y")):
        before = fingerprint_bytes(load_frame(data, recipe)[1])
        assert file_source_fingerprint(data, recipe) == before  # a plan keys on what load_data records
        target = folder / "dog" / "03.png" if data.path == "images" else tmp_path / "pics" / "7.png"
        content = target.read_bytes()
        target.write_bytes(content)  # rewritten, same bytes (a new mtime): same data
        assert fingerprint_bytes(load_frame(data, recipe)[1]) == before
        target.write_bytes(png((9, 9), (1, 2, 3)))
        assert fingerprint_bytes(load_frame(data, recipe)[1]) != before
        target.write_bytes(content)
        assert file_source_fingerprint(data, recipe) == before


def test_moving_an_image_to_another_class_changes_the_fingerprint(tmp_path: Path) -> None:
    folder = image_folder(tmp_path)
    data = DataConfig(path="images", target="label")
    before = file_source_fingerprint(data, tmp_path / "r.yaml")
    (folder / "cat" / "00.png").rename(folder / "dog" / "00-cat.png")
    assert file_source_fingerprint(data, tmp_path / "r.yaml") != before


# --- kinds and the schema ----------------------------------------------------------------------------------


def test_kinds_are_inferred_from_values() -> None:
    assert inferred_kind(pd.Series([1.5, None])) == "numeric"
    assert inferred_kind(pd.Series([True, False])) == "categorical"
    assert inferred_kind(pd.Series(["a.png", None, "b.JPG"])) == "image"
    assert inferred_kind(pd.Series(["a.png", "notes"])) == "categorical"
    assert inferred_kind(pd.Series([png(), None], dtype=object)) == "image"
    assert inferred_kind(pd.Series(["a long review", "another"])) == "categorical"  # text is declared


def test_the_schema_of_image_and_text_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "img": [png((12, 10)), png((30, 20), mode="L"), png((16, 16))],
        "review": ["great taste", "", None],
        "code": ["1.png", "2.png", "3.png"],  # image paths by inference, forced categorical
        "n": [1, 2, 3],
        "y": ["a", "b", "a"],
    })
    data = DataConfig.model_validate({"path": "d.parquet", "target": "y", "categorical": ["code"],
                                      "columns": {"review": {"kind": "text"}, "n": {"kind": "categorical"}}})
    schema = infer_schema(data, frame)
    img, review, code, n = (schema.column(c) for c in ("img", "review", "code", "n"))
    assert (img.kind, img.min_width, img.max_width, img.min_height, img.max_height, img.modes) == \
        ("image", 12, 30, 10, 20, ["L", "RGB"])
    assert (review.kind, review.min_chars, review.max_chars, review.empty_rate) == ("text", 0, 11, 2 / 3)
    assert review.mean_chars == pytest.approx(11 / 3)
    assert code.kind == "categorical" and n.kind == "categorical" and n.categories == ["1", "2", "3"]
    assert (schema.of_kind("image"), schema.of_kind("text"), schema.of_kind("numeric")) == (["img"], ["review"], [])
    dumped = json.loads(schema.model_dump_json())
    assert "min_width" not in dumped["columns"][2] and dumped["columns"][0]["modes"] == ["L", "RGB"]


def test_a_column_declared_numeric_that_holds_words_is_named() -> None:
    data = DataConfig.model_validate({"path": "d.csv", "target": "y", "columns": {"x": {"kind": "numeric"}}})
    with pytest.raises(DataError, match="column 'x' is declared numeric .* 'abc'"):
        infer_schema(data, pd.DataFrame({"x": ["1", "abc"], "y": [0, 1]}))


# --- checks before training --------------------------------------------------------------------------------


def test_check_data_names_an_unreadable_image_and_its_file(tmp_path: Path) -> None:
    image_folder(tmp_path)
    (tmp_path / "images" / "dog" / "02.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "r.yaml").write_text("name: t\ndata:\n  path: images\n  target: label\n")
    rows = load_rows(DataConfig(path="images", target="label"), tmp_path / "r.yaml")
    with pytest.raises(DataError) as err:
        check_media(rows.frame, DataConfig(path="images", target="label"), "images", rows.image_files)
    assert "column 'image', row 8 (dog/02.png): not a readable image" in str(err.value)


def test_check_data_refuses_empty_texts_unless_allowed(tmp_path: Path) -> None:
    frame = pd.DataFrame({"review": ["ok", " ", None, "fine"], "y": [0, 1, 0, 1]})
    strict = DataConfig.model_validate({"path": "d.csv", "target": "y",
                                        "columns": {"review": {"kind": "text"}}})
    with pytest.raises(DataError, match=r"column 'review': empty \(missing or blank\) text in rows 1, 2 "
                                        ".*allow_empty"):
        check_media(frame, strict, "d.csv")
    lenient = DataConfig.model_validate({"path": "d.csv", "target": "y",
                                         "columns": {"review": {"kind": "text", "allow_empty": True,
                                                                "max_chars": 3}}})
    with pytest.raises(DataError, match=r"texts over max_chars \(3\) in row 3"):
        check_media(frame, lenient, "d.csv")
    assert check_media(frame.assign(review=["a", "", None, "b"]), lenient, "d.csv") == {"review": 4}


def test_the_check_data_step_names_the_file_of_a_broken_image(tmp_path: Path) -> None:
    """Validate decodes only a sample (the first 50 rows): check_data decodes every image."""
    table = image_table(tmp_path, n=60)
    (tmp_path / "pics" / "55.png").write_bytes(b"not an image")
    table.to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "r.yaml").write_text("name: t\ndata:\n  path: d.csv\n  target: y\n")
    with pytest.raises(DataError, match=r"column 'photo', row 55 \(pics/55\.png\): not a readable image"):
        run_steps(tmp_path / "r.yaml", tmp_path / "steps", until="check_data")


def test_image_and_text_expectations_name_their_rows() -> None:
    frame = pd.DataFrame({
        "img": [png((12, 10)), png((4, 30)), png((12, 10), mode="L"), b"junk", None],
        "text": ["a fine review", "short", "", None, "x" * 40],
    })
    cfg = ExpectationsConfig.model_validate({"columns": {
        "img": {"modes": ["RGB"], "min_size": [8, 8]},
        "text": {"min_chars": 6, "max_chars": 30, "allow_empty": False},
    }})
    with pytest.raises(ExpectationError) as err:
        check_expectations(frame, cfg, "d.parquet")
    message = str(err.value)
    assert "column 'img': image: values that are not readable images; rows (0-based) 3" in message
    assert "column 'img': modes: images in mode(s) L, expected RGB; rows (0-based) 2" in message
    assert ("column 'img': min_size: images smaller than 8x8 (height x width; smallest 30x4); "
            "rows (0-based) 1") in message
    assert "column 'text': allow_empty: empty (missing or blank) texts; rows (0-based) 2, 3" in message
    assert "column 'text': min_chars: texts shorter than 6 characters (shortest 5); rows (0-based) 1" \
        in message
    assert "column 'text': max_chars: texts longer than 30 characters (longest 40); rows (0-based) 4" \
        in message


def test_an_unknown_image_mode_in_an_expectation_fails_validation(tmp_path: Path) -> None:
    pd.DataFrame({"x": [1, 2], "y": [0, 1]}).to_csv(tmp_path / "d.csv", index=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ndata:\n  path: d.csv\n  target: y\nevaluate:\n  expectations:\n    columns:\n"
                      "      x:\n        modes: [rgb]\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:9: evaluate\.expectations\.columns\.x\.modes: unknown "
                                          r"image mode\(s\); Pillow.s modes are 1, L.*got \[.rgb.\]"):
        load_validated(recipe)


def test_validate_decodes_a_sample_and_names_an_unreadable_image(tmp_path: Path) -> None:
    image_folder(tmp_path)
    (tmp_path / "images" / "cat" / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ndata:\n  path: images\n  target: label\n")
    with pytest.raises(RecipeError) as err:
        load_validated(recipe)
    message = str(err.value)
    assert "r.yaml:3: data.path: image " + str(tmp_path / "images" / "cat" / "03.png") in message
    assert "(row 3): not a readable image" in message


def test_validate_names_a_missing_image_file_of_a_table(tmp_path: Path) -> None:
    table = image_table(tmp_path, n=4)
    table.to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "pics" / "2.png").unlink()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ndata:\n  path: d.csv\n  target: y\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:3: data\.path: image .*pics/2\.png "
                                          r"\(row 2, column 'photo'\): file not found"):
        load_validated(recipe)


def test_validate_checks_declared_columns(tmp_path: Path) -> None:
    image_table(tmp_path, n=4).to_csv(tmp_path / "d.csv", index=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ndata:\n  path: d.csv\n  target: y\n  categorical: [review]\n  columns:\n"
                      "    reveiw: {kind: text}\n    review: {kind: text}\n")
    with pytest.raises(RecipeError) as err:
        load_validated(recipe)
    message = str(err.value)
    assert "r.yaml:7: data.columns.reveiw: column 'reveiw' is not in the data (did you mean 'review'?)" \
        in message
    assert "data.columns.review: column 'review' is declared text here and categorical in data.categorical" \
        in message


# --- the preprocess step -----------------------------------------------------------------------------------


def test_preprocess_writes_pixels_token_ids_and_a_tokenizer(tmp_path: Path) -> None:
    image_table(tmp_path, n=40).to_csv(tmp_path / "d.csv", index=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ndata:\n  path: d.csv\n  target: y\n  columns:\n"
                      "    photo: {kind: image, size: [6, 5], channels: 1}\n"
                      "    review: {kind: text, max_chars: 500}\n"
                      "model:\n  _target_: mlops.train.multimodal.MultiInputNet\n"
                      "  text: {vocab_size: 100, max_length: 7}\n")
    ctx = run_steps(recipe, tmp_path / "steps")
    result = ctx.result("preprocess", PreprocessResult)
    out = ctx.dir("preprocess")
    sizes = ctx.results["split"].sizes  # type: ignore[attr-defined]
    arrays = np.load(out / "arrays.npz")
    assert result.n_features == 1 and result.inputs.tabular == 1
    assert result.inputs.names == [TABULAR, "photo", "review"]
    assert result.inputs.images["photo"].shape == (6, 5, 1)
    text = result.inputs.texts["review"]
    assert (text.tokenizer, text.max_length, text.max_chars, text.allow_empty) == \
        ("tokenizer-review.json", 7, 500, False)
    assert 0 < text.vocab_size <= 100
    expected = {f"{kind}_{s}" for kind in ("x", "y") for s in sizes} | \
        {ModelInputs.array_key(c, s) for c in ("photo", "review") for s in sizes}
    assert set(arrays.files) == expected
    for s, n in sizes.items():
        assert arrays[f"x_{s}"].shape == (n, 1) and arrays[f"x_{s}"].dtype == np.float32
        assert arrays[f"photo__{s}"].shape == (n, 6, 5, 1) and arrays[f"photo__{s}"].dtype == np.uint8
        assert arrays[f"review__{s}"].shape == (n, 7) and arrays[f"review__{s}"].dtype == np.int64
    tokenizer = load_tokenizer((out / "tokenizer-review.json").read_text())
    assert tokenizer.get_vocab_size() == text.vocab_size
    assert (arrays["review__train"] > 1).any()  # words the tokenizer learnt, not only [PAD]/[UNK]
    pixels = arrays["photo__train"].astype(np.float64) / 255
    stats = result.pixel_stats["photo"]
    assert stats.mean == pytest.approx([pixels.mean()]) and stats.std == pytest.approx([pixels.std()])
    again = PreprocessResult.model_validate_json(result.model_dump_json())  # what the cache reads back
    assert again == result


def test_preprocess_of_an_image_folder_has_no_tabular_input(tmp_path: Path) -> None:
    image_folder(tmp_path, per_class=10)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ndata:\n  path: images\n  target: label\n")
    ctx = run_steps(recipe, tmp_path / "steps")
    result = ctx.result("preprocess", PreprocessResult)
    arrays = np.load(ctx.dir("preprocess") / "arrays.npz")
    assert result.inputs.names == ["image"] and result.inputs.tabular == 0 and result.labels == ["cat", "dog"]
    assert set(arrays.files) == {f"{k}_{s}" for k in ("image_", "y") for s in ("train", "val", "test")}
    assert arrays["image__train"].shape[1:] == (32, 32, 3)  # an inferred image column: the default spec
    assert len(result.pixel_stats["image"].mean) == 3


def test_a_tabular_recipe_gives_what_it_gave_before(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pd.DataFrame({"a": rng.normal(size=40), "c": rng.choice(["u", "v"], 40), "y": [0, 1] * 20}).to_csv(
        tmp_path / "d.csv", index=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ndata:\n  path: d.csv\n  target: y\n")
    ctx = run_steps(recipe, tmp_path / "steps")
    result = ctx.result("preprocess", PreprocessResult)
    arrays = np.load(ctx.dir("preprocess") / "arrays.npz")
    assert arrays.files == ["x_train", "y_train", "x_val", "y_val", "x_test", "y_test"]
    assert arrays["x_train"].shape[1] == result.n_features == result.inputs.tabular == 3
    assert result.inputs.scalar_only and result.pixel_stats == {}
    schema = json.loads((ctx.dir("preprocess") / "schema.json").read_text())
    assert set(schema["columns"][0]) == {"name", "kind", "dtype", "missing_rate", "min", "max", "mean", "std",
                                         "categories"}
    # a result cached before images and text still loads, as the tabular model it was
    old = {"task": "binary", "n_features": 3, "labels": ["0", "1"], "target_scale": None}
    assert PreprocessResult.model_validate(old).inputs == ModelInputs(tabular=3)


def test_pixel_stats_are_per_channel_and_a_constant_channel_scales_by_one() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (300, 4, 3, 3), dtype=np.uint8)
    pixels[..., 2] = 9
    stats = pixel_stats(pixels)
    flat = pixels.reshape(-1, 3) / 255
    assert stats.mean == pytest.approx(flat.mean(axis=0).tolist())
    assert stats.std[:2] == pytest.approx(flat.std(axis=0)[:2].tolist()) and stats.std[2] == 1.0
