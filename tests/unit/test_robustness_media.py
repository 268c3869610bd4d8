"""Robustness of image and text inputs on the hand-built image + text + number bundle (tests/media_fixtures.py,
no torch): perturbations of the raw image and text at declared strengths, scored by the bundle as a request
would be; broken payloads refused or answered, never crashing; the metrics and the gates that read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from mlops.evaluate.gates import evaluate_gates
from mlops.evaluate.robustness import PAYLOAD_OUTCOMES, robustness_checks, robustness_summary
from mlops.package.predictor import RAW_TEXT, Predictor
from mlops.recipe.schema import Gate, RobustnessConfig
from tests.media_fixtures import CORPUS, IMAGE, NUMBER, TEXT, build_media_bundle, image_png, training_frame

ROWS = 40
IMAGE_KINDS = {"image_noise", "image_blur", "image_brightness", "image_contrast", "image_rotation", "image_jpeg",
               "image_occlusion"}
TEXT_KINDS = {"text_typos", "text_casing", "text_punctuation", "text_truncation", "text_whitespace"}
# the scalar checks of the bundle's one numeric column, as before images and text
SCALAR_KINDS = {"missing", "out_of_range", "out_of_distribution", "perturbation"}
NO_IMAGE = {"noise": [], "blur": [], "brightness": [], "contrast": [], "rotation": [], "jpeg": [], "occlusion": []}
PNG_B64, JPEG_B64 = "iVBORw0KGgo", "/9j/"  # how the base64 of every PNG and of every JPEG begins
NO_TEXT = {"typos": [], "casing": False, "punctuation": False, "truncation": [], "whitespace": []}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_media_bundle(tmp_path_factory.mktemp("media-robust") / "b")


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return training_frame()


@pytest.fixture(scope="module")
def test_rows() -> pd.DataFrame:
    """Rows as the data holds them: PNG bytes, review texts (with punctuation and capitals), ages, the target."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({
        IMAGE: [image_png(100 + i) for i in range(ROWS)],
        TEXT: [f"{CORPUS[i % len(CORPUS)].capitalize()}, really! Order #{i}." for i in range(ROWS)],
        NUMBER: rng.normal(40, 10, ROWS),
    })
    frame["y"] = np.where(rng.random(ROWS) < 0.5, "neg", "pos")
    return frame


@pytest.fixture(scope="module")
def default_checks(bundle: Path, test_rows: pd.DataFrame, train: pd.DataFrame) -> list[dict[str, Any]]:
    return robustness_checks(bundle, test_rows, train, RobustnessConfig(), seed=0)


def _named(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in checks}


def _only(image: dict[str, Any] | None = None, text: dict[str, Any] | None = None,
          payloads: bool = False) -> RobustnessConfig:
    """Nothing but the given image and text perturbations (and the payloads when asked)."""
    return RobustnessConfig(image=NO_IMAGE | (image or {}), text=NO_TEXT | (text or {}), corrupt_payloads=payloads)


def test_every_declared_strength_gives_a_check_and_its_metrics(default_checks: list[dict[str, Any]]) -> None:
    kinds = {c["kind"] for c in default_checks}
    cfg = RobustnessConfig()

    assert kinds == SCALAR_KINDS | IMAGE_KINDS | TEXT_KINDS | {"corrupt_payload"}
    assert len({c["name"] for c in default_checks}) == len(default_checks)
    named = _named(default_checks)
    assert [n for n in named if n.startswith("image_noise/")] == [f"image_noise/{s:g}" for s in cfg.image.noise]
    assert [n for n in named if n.startswith("image_jpeg/")] == ["image_jpeg/50", "image_jpeg/20"]
    assert named["image_brightness/0.4"]["strongest"] and not named["image_brightness/0.2"]["strongest"]
    assert named["image_jpeg/20"]["strongest"] and not named["image_jpeg/50"]["strongest"]  # lowest quality
    assert [c["name"] for c in default_checks if not c["passed"]] == []
    json.dumps(default_checks)  # goes into the report and assess.json as is

    metrics = robustness_summary(default_checks)
    noise = named["image_noise/0.2"]["measures"]
    assert metrics["robustness/image_noise/flip_rate"] == noise["flip_rate"]  # the example gate's metric
    assert metrics["robustness/image_noise/accuracy_drop"] == noise["accuracy_drop"]
    assert metrics["robustness/image_noise/0.05/flip_rate"] == named["image_noise/0.05"]["value"]
    assert metrics["robustness/image_jpeg/flip_rate"] == named["image_jpeg/20"]["value"]
    assert metrics["robustness/text_casing/flip_rate"] == named["text_casing"]["value"]
    assert metrics["robustness/failed_checks"] == 0.0
    # every metric produced is one the configuration announces (what `mlops validate` checks gates against)
    assert set(metrics) - {"robustness/failed_checks", "robustness/flip_rate"} <= set(cfg.metric_names())


def test_measures_compare_with_the_same_rows_unperturbed(default_checks: list[dict[str, Any]]) -> None:
    named = _named(default_checks)
    for name in ("image_noise/0.2", "image_brightness/0.2", "text_typos/0.1"):
        m = named[name]["measures"]
        assert 0.0 <= m["flip_rate"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0
        assert -1.0 <= m["accuracy_drop"] <= 1.0
    # both ways count: each image made darker and brighter
    assert "over 80 scored rows" in named["image_brightness/0.2"]["detail"]
    assert "over 40 scored rows" in named["image_noise/0.2"]["detail"]


def test_heavy_noise_and_blur_flip_more_than_mild(bundle: Path, test_rows: pd.DataFrame,
                                                  train: pd.DataFrame) -> None:
    cfg = _only(image={"noise": [0.01, 0.5], "blur": [0.1, 3.0]})

    named = _named(robustness_checks(bundle, test_rows, train, cfg, seed=0))

    assert named["image_noise/0.01"]["value"] < named["image_noise/0.5"]["value"]
    assert named["image_blur/0.1"]["value"] < named["image_blur/3"]["value"]
    assert named["image_noise/0.5"]["value"] >= 0.2


def test_a_lowercasing_tokenizer_makes_casing_harmless(bundle: Path, test_rows: pd.DataFrame,
                                                       train: pd.DataFrame) -> None:
    named = _named(robustness_checks(bundle, test_rows, train, _only(text={"casing": True}), seed=0))

    assert named["text_casing"]["value"] == 0.0  # the bundle's tokenizer lowercases (BertNormalizer)
    assert named["text_casing"]["measures"]["accuracy_drop"] == 0.0


def test_a_perturbation_the_bundle_refuses_counts_as_flipped_not_crashed(bundle: Path, test_rows: pd.DataFrame,
                                                                         train: pd.DataFrame) -> None:
    # cutting 99% of a text shorter than 100 characters leaves it empty: the bundle refuses empty texts
    named = _named(robustness_checks(bundle, test_rows, train, _only(text={"truncation": [0.99]}), seed=0))

    check = named["text_truncation/0.99"]
    assert check["passed"] and not check["crashed"]
    assert check["refused"] == ROWS and check["value"] == 1.0 and check["measures"]["accuracy"] == 0.0


def test_same_seed_same_checks_another_seed_other_noise(bundle: Path, test_rows: pd.DataFrame,
                                                        train: pd.DataFrame) -> None:
    cfg = _only(image={"noise": [0.3], "occlusion": [0.3]}, text={"typos": [0.3]})

    first = robustness_checks(bundle, test_rows, train, cfg, seed=1)
    again = robustness_checks(bundle, test_rows, train, cfg, seed=1)
    other = robustness_checks(bundle, test_rows, train, cfg, seed=2)

    assert first == again
    assert [c["value"] for c in first] != [c["value"] for c in other]


def test_an_empty_list_turns_a_perturbation_off(bundle: Path, test_rows: pd.DataFrame,
                                                train: pd.DataFrame) -> None:
    checks = robustness_checks(bundle, test_rows, train, _only(image={"blur": [1.0]}), seed=0)

    assert {c["kind"] for c in checks} == SCALAR_KINDS | {"image_blur"}


# --- corrupt payloads ---------------------------------------------------------------------------------


def test_corrupt_payloads_are_refused_or_answered_and_counted(default_checks: list[dict[str, Any]]) -> None:
    payloads = {c["name"]: c for c in default_checks if c["kind"] == "corrupt_payload"}
    metrics = robustness_summary(default_checks)

    assert payloads["corrupt_payload/image/truncated_png"]["outcome"] == "refused"
    assert payloads["corrupt_payload/image/random_bytes"]["outcome"] == "refused"
    assert "refused (413" in payloads["corrupt_payload/image/over_size_limit"]["detail"]
    assert payloads["corrupt_payload/image/pixel_bomb"]["outcome"] == "refused"
    assert payloads["corrupt_payload/review/empty"]["outcome"] == "refused"  # the bundle allows no empty text
    assert payloads["corrupt_payload/review/over_length"]["outcome"] == "refused"
    # other modes are converted to the model's, and more tokens than it reads are truncated: answered
    for name in ("image/rgba", "image/cmyk", "image/grey16", "image/other_channels", "review/many_tokens"):
        assert payloads[f"corrupt_payload/{name}"]["outcome"] == "answered", payloads[f"corrupt_payload/{name}"]
    assert all(c["passed"] and not c["crashed"] for c in payloads.values())
    counts = {o: sum(c["outcome"] == o for c in payloads.values()) for o in PAYLOAD_OUTCOMES}
    assert {o: metrics[f"robustness/corrupt_payload/{o}"] for o in PAYLOAD_OUTCOMES} == counts
    assert counts["crashed"] == counts["non_finite"] == 0 and counts["refused"] >= 8


def test_a_bundle_that_crashes_on_a_payload_fails_the_check(bundle: Path, test_rows: pd.DataFrame,
                                                            train: pd.DataFrame,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A serving layer that lets a decoding error escape (a 500) instead of refusing the request."""
    original = Predictor.column_feeds

    def fragile(self: Predictor, name: str, values: list[Any], where: str, datatype: str | None = None
                ) -> dict[str, np.ndarray]:
        sent = values[0]
        if name == IMAGE and isinstance(sent, dict) and not sent["b64"].startswith((PNG_B64, JPEG_B64)):
            raise KeyError("decoder")
        return original(self, name, values, where, datatype)

    monkeypatch.setattr(Predictor, "column_feeds", fragile)
    checks = robustness_checks(bundle, test_rows, train, _only(payloads=True), seed=0)

    payloads = {c["payload"]: c for c in checks if c["kind"] == "corrupt_payload" and c["column"] == IMAGE}
    assert payloads["random_bytes"]["outcome"] == "crashed" and not payloads["random_bytes"]["passed"]
    assert "KeyError" in payloads["random_bytes"]["detail"]
    assert payloads["truncated_png"]["outcome"] == "refused"  # a PNG: the real decoder refuses it
    metrics = robustness_summary(checks)
    crashed = sum(c["outcome"] == "crashed" for c in payloads.values())
    assert crashed == 3 and metrics["robustness/corrupt_payload/crashed"] == crashed
    assert metrics["robustness/failed_checks"] == crashed


def test_a_nan_answer_to_a_payload_fails_the_check(bundle: Path, test_rows: pd.DataFrame, train: pd.DataFrame,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    original = Predictor.predict

    def nan_for_blank_review(self: Predictor, feeds: dict[str, np.ndarray], embedding: bool = False) -> Any:
        answer = original(self, feeds, embedding)
        if "\x00" in feeds[TEXT + RAW_TEXT][0]:  # the payload of control characters
            answer.outputs["probabilities"] = np.full_like(answer.outputs["probabilities"], np.nan)
        return answer

    monkeypatch.setattr(Predictor, "predict", nan_for_blank_review)
    checks = robustness_checks(bundle, test_rows, train, _only(payloads=True), seed=0)

    bad = [c for c in checks if c["kind"] == "corrupt_payload" and c["outcome"] == "non_finite"]
    assert bad and all(not c["passed"] and not c["finite"] for c in bad)
    assert robustness_summary(checks)["robustness/corrupt_payload/non_finite"] == len(bad)


# --- gates and configuration --------------------------------------------------------------------------


def _verdict(metric: str, results: dict[str, Any], **bound: float) -> str:
    gate = Gate(metric=metric, **bound)
    return evaluate_gates([gate], results, {}, None, None, {}, {}, 0)[0].status


def test_a_gate_on_the_noise_flip_rate_fails_a_strict_bound_and_passes_a_loose_one(
        bundle: Path, test_rows: pd.DataFrame, train: pd.DataFrame) -> None:
    checks = robustness_checks(bundle, test_rows, train, _only(image={"noise": [0.05, 0.5]}), seed=0)
    results = {"metrics": robustness_summary(checks)}
    assert results["metrics"]["robustness/image_noise/flip_rate"] > 0.0

    assert _verdict("robustness/image_noise/flip_rate", results, max=0.0) == "failed"
    assert _verdict("robustness/image_noise/flip_rate", results, max=1.0) == "passed"
    assert _verdict("robustness/image_noise/0.05/flip_rate", results, max=1.0) == "passed"
    # a perturbation that was not declared is not computed: an error, never a silent pass
    assert _verdict("robustness/image_blur/flip_rate", results, max=1.0) == "error"


def test_the_configuration_names_its_metrics_and_refuses_mistakes() -> None:
    names = RobustnessConfig().metric_names()

    assert names["robustness/image_noise/flip_rate"] == "lower"
    assert names["robustness/image_noise/0.1/accuracy_drop"] == "lower"
    assert names["robustness/image_jpeg/20/flip_rate"] == "lower"
    assert names["robustness/text_casing/flip_rate"] == "lower"
    assert names["robustness/adversarial/fgsm/0.03/accuracy"] == "higher"
    assert names["robustness/adversarial/pgd/accuracy"] == "higher"
    assert names["robustness/corrupt_payload/crashed"] == "lower"
    assert "robustness/image_noise/0.3/flip_rate" not in names
    assert RobustnessConfig(enabled=False).metric_names() == {}
    assert not any(n.startswith("robustness/adversarial/")
                   for n in RobustnessConfig(adversarial={"enabled": False}).metric_names())
    with pytest.raises(ValidationError, match="distinct"):
        RobustnessConfig(image={"noise": [0.1, 0.1]})
    with pytest.raises(ValidationError, match="image.nois"):
        RobustnessConfig(image={"nois": [0.1]})
    with pytest.raises(ValidationError, match="text.truncation"):
        RobustnessConfig(text={"truncation": [1.0]})  # cutting everything is the empty-text payload's job
    with pytest.raises(ValidationError, match="adversarial.methods"):
        RobustnessConfig(adversarial={"methods": ["cw"]})
