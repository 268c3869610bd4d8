"""Descriptors of images and texts: each moves the way its name says when the input changes that way."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from mlops.data.descriptors import descriptor_columns, image_descriptors, text_descriptors
from mlops.data.media import train_tokenizer


def _pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(i)[..., None] if i.mode == "L" else np.asarray(i) for i in images])


def _scene(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size), np.uint8)
    for _ in range(6):  # bright rectangles on a dark ground: edges a blur softens
        x, y = rng.integers(0, size - 8, 2)
        arr[y:y + 8, x:x + 8] = rng.integers(120, 255)
    return Image.fromarray(arr, mode="L")


def test_image_descriptors_follow_brightness_contrast_blur_and_size() -> None:
    scenes = [_scene(s) for s in range(8)]
    sizes = np.asarray([[640, 480]] * 8)
    base = image_descriptors("image", _pixels(scenes), sizes)
    brighter = image_descriptors("image", _pixels([Image.eval(i, lambda v: min(255, v + 60)) for i in scenes]), sizes)
    flatter = image_descriptors("image", _pixels([Image.eval(i, lambda v: 100 + v // 4) for i in scenes]), sizes)
    blurred = image_descriptors("image", _pixels([i.filter(ImageFilter.GaussianBlur(2)) for i in scenes]), sizes)

    assert set(base) == set(descriptor_columns("image", "image", channels=1))
    assert (brighter["image.brightness"] > base["image.brightness"] + 40).all()
    assert (flatter["image.contrast"] < base["image.contrast"] / 2).all()
    assert (blurred["image.sharpness"] < base["image.sharpness"] / 2).all()
    assert (base["image.width"] == 640).all() and (base["image.height"] == 480).all()  # as sent, not as resized


def test_colour_images_have_channel_means() -> None:
    red = np.zeros((2, 4, 4, 3), np.uint8)
    red[..., 0] = 200
    out = image_descriptors("photo", red, np.asarray([[4, 4], [4, 4]]))
    assert set(out) == set(descriptor_columns("photo", "image", channels=3))
    assert out["photo.red"].tolist() == [200.0, 200.0] and out["photo.blue"].tolist() == [0.0, 0.0]
    assert np.allclose(out["photo.brightness"], 0.299 * 200, atol=0.5)  # the grey level Pillow computes


def test_text_descriptors_count_and_name_the_script() -> None:
    texts = ["great coffee", "Отличный кофе!!!", "12345 ???", "", "コーヒー"]
    out = text_descriptors("review", texts)
    assert set(out) == set(descriptor_columns("review", "text"))
    assert out["review.chars"].tolist() == [12, 16, 9, 0, 4]
    assert out["review.words"].tolist() == [2, 2, 2, 0, 1]
    assert out["review.script"].tolist() == ["latin", "cyrillic", "none", "none", "katakana"]
    assert out["review.non_letter_share"][0] == 0.0 and out["review.non_letter_share"][2] == 1.0
    assert np.isnan(out["review.non_letter_share"][3])  # nothing visible: no share at all
    assert np.isnan(out["review.unknown_share"]).all()  # no token ids given


def test_unknown_share_counts_what_the_tokenizer_never_saw() -> None:
    tok = train_tokenizer(["good coffee fresh taste"] * 20, vocab_size=60)
    texts = ["good coffee", "ñandú ßüöä"]
    ids = np.zeros((2, 8), np.int64)
    for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=False)):
        ids[i, :len(enc.ids)] = enc.ids[:8]
    out = text_descriptors("review", texts, ids, tok.token_to_id("[UNK]"))
    assert out["review.unknown_share"][0] == 0.0
    assert out["review.unknown_share"][1] > 0.5
