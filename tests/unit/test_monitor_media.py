"""The monitor on an image and text model: requests logged as the server logs them (descriptors and embedding,
never pixels), judged window by window against a production reference. A brighter scanner and new words are
flagged through the embedding and the descriptors; more traffic like the reference's is not."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlops.core.predlog import LogFilter, read_predictions
from mlops.monitor.dashboard import render_dashboard
from mlops.monitor.judge import WindowJudge
from mlops.monitor.logstream import EMBEDDING_COLUMN, count_windows, monitored_columns, read_chunks
from mlops.monitor.reference import production_reference
from mlops.monitor.results import WindowSummary
from mlops.monitor.rules import drift_rule
from mlops.package.bundle import read_bundle
from mlops.recipe.monitor import MonitorConfig
from tests.media_fixtures import CORPUS, IMAGE, NAME, NUMBER, TEXT, b64, build_media_bundle
from tests.monitor_fixtures import log_traffic

WINDOW = 1000  # rows: at 500, the classifier AUC of two like windows passes 0.55 about once in 40
NEW_WORDS = ["zorbo pods slap hard fr", "yeet this vape juice lol", "kombucha gummies bussin",
             "oat milk frother mid tbh", "ngl the keto bars hit"]


def _png(rng: np.random.Generator, brighter: int = 0, noise: float = 0.0) -> bytes:
    grey = rng.integers(0, 200, size=(8, 8)).astype(np.float64)  # a darker scene than pure noise
    grey = np.clip(grey + brighter + rng.normal(0, noise, grey.shape) if noise else grey + brighter, 0, 255)
    out = io.BytesIO()
    Image.fromarray(grey.astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def _frame(n: int, seed: int, drifted: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    texts = NEW_WORDS if drifted else CORPUS
    return pd.DataFrame({
        IMAGE: [{"b64": b64(_png(rng, 70 if drifted else 0, 25.0 if drifted else 0.0))} for _ in range(n)],
        TEXT: [texts[k] for k in rng.integers(0, len(texts), n)],
        NUMBER: rng.normal(40, 10, n),
    })


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_media_bundle(tmp_path_factory.mktemp("monitor-media") / "bundle")


def _judged(bundle: Path, log: Path, seed: int, drifted: bool) -> list[WindowSummary]:
    """A reference hour, then two windows of new traffic (as the reference's, or drifted), each judged."""
    meta = read_bundle(bundle)
    log_traffic(log, bundle, _frame(2 * WINDOW, seed), np.linspace(0, 3000, 2 * WINDOW))
    log_traffic(log, bundle, _frame(2 * WINDOW, seed + 1000, drifted), np.linspace(4000, 7000, 2 * WINDOW))
    cfg = MonitorConfig.model_validate({"window": {"size": WINDOW, "min_samples": WINDOW // 2},
                                        "reference": {"source": "production", "start": 0, "end": 3600}})
    columns = monitored_columns(meta)
    judge = WindowJudge(meta, cfg)
    judge.reference = production_reference(log, LogFilter(NAME), columns, meta.task, 0, 3600, 10_000, 0, "the hour")
    chunks = read_chunks(log, LogFilter(NAME, since=3600), columns, meta.task)
    return [judge.judge(w) for w in count_windows(chunks, WINDOW)]


def _drifted(window: dict[str, Any]) -> set[str]:
    return {c["column"] for c in window["drift"]["columns"] if c["drift"]}


@pytest.mark.parametrize("seed", range(20))
def test_a_brighter_scanner_and_new_words_are_flagged_and_more_of_the_same_is_not(bundle: Path, tmp_path: Path,
                                                                                   seed: int) -> None:
    same = [s.record() for s in _judged(bundle, tmp_path / "same.sqlite", seed, drifted=False)]
    shifted = [s.record() for s in _judged(bundle, tmp_path / "shifted.sqlite", seed, drifted=True)]
    assert len(same) == len(shifted) == 2
    for window in same:
        assert _drifted(window) == set(), _drifted(window)
        assert "examples" not in window  # only a drifted window shows its inputs
    for window in shifted:
        flagged = _drifted(window)
        assert {EMBEDDING_COLUMN, f"{IMAGE}.brightness", f"{TEXT}.unknown_share"} <= flagged, flagged
        assert NUMBER not in flagged  # the scalar column did not move
        embedding = next(c for c in window["drift"]["columns"] if c["column"] == EMBEDDING_COLUMN)
        assert embedding["kind"] == "embedding" and embedding["score"] > embedding["threshold"]


def test_a_drifted_window_fires_the_drift_rule_and_keeps_examples(bundle: Path, tmp_path: Path) -> None:
    windows = _judged(bundle, tmp_path / "log.sqlite", 7, drifted=True)
    # the bundle keeps no image payload (image_sample 0): the examples are the texts
    examples = windows[-1].examples
    assert examples and {e["column"] for e in examples} == {TEXT}
    assert all(e["value"] in NEW_WORDS for e in examples)
    drift = drift_rule(windows[-1], MonitorConfig(), {})
    assert drift.breach and EMBEDDING_COLUMN in drift.detail["key_features"]
    page = render_dashboard({"model": NAME}, [w.record() for w in windows], [])
    assert "<h2>Embeddings</h2>" in page and "chart-embedding-drift" in page
    assert f"{html.escape(examples[0]['value'], quote=False)}</blockquote>" in page  # the drifted window's texts


def test_the_log_holds_no_pixels_and_the_reference_reads_its_descriptors(bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "log.sqlite"
    log_traffic(log, bundle, _frame(20, 0), np.arange(20.0))
    meta = read_bundle(bundle)
    columns = monitored_columns(meta)
    ref = production_reference(log, LogFilter(NAME), columns, meta.task, 0, 100, 100, 0, "all")
    assert ref.embedding is not None and ref.embedding.shape == (20, 8)
    assert set(ref.numeric) >= {f"{IMAGE}.brightness", f"{TEXT}.chars", NUMBER}
    assert set(ref.categorical) >= {f"{TEXT}.script"}
    for row in read_predictions(log):
        assert "b64" not in json.loads(row["inputs"])[IMAGE]
