"""Embedding drift: each method flags a shifted window and not an unshifted one, and its verdict (and score) is
the one Evidently 0.7.23 gives on the same rows, run through its own `EmbeddingsDriftMetric`."""

from __future__ import annotations

import numpy as np
import pytest

from mlops.core.errors import MlopsError
from mlops.monitor import embedding
from mlops.monitor.embedding import (
    EMBEDDING_DEFAULT_THRESHOLD,
    EMBEDDING_METHODS,
    MIN_ROWS,
    EmbeddingReference,
    embedding_drift,
    evidently_embedding_drift,
)

DIMS = 16
SHIFTED = 4  # components whose mean moves; a quarter of them, above ratio's default share of 0.2
# the scores' agreement with Evidently: the same classifier and components; MMD^2 summed in float64 here,
# from Evidently's float32 kernel matrix there
SCORE_TOLERANCE = {"model": 1e-6, "mmd": 1e-5, "ratio": 0.0}


def _sides(seed: int, n_ref: int, n_cur: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian embeddings (float32, as the bundle emits them); the window's first SHIFTED components moved by
    `shift` standard deviations."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n_ref, DIMS)).astype(np.float32)
    cur = rng.normal(size=(n_cur, DIMS)).astype(np.float32)
    cur[:, :SHIFTED] += shift
    return ref, cur


# rows a side for the 20 resamples: the unshifted window's AUC stays 4 standard errors under 0.55 and its
# components' W1 / std under 0.1; MMD^2's noise is far below 0.015 at fewer rows (and every pair is summed)
RESAMPLE_ROWS = {"model": (4_000, 2_000), "mmd": (1_000, 500), "ratio": (4_000, 2_000)}
# (seed, reference rows, shift, threshold), the window half as many rows: small, so that Evidently's t-SNE
# picture takes under a second. Unshifted, shifted a little, shifted more, with cases near the thresholds (a
# false alarm of the classifier on 160 + 80 rows; MMD^2 0.0135 and 0.024). Ratio's components are noise at 160
# rows (W1 / std near 0.1: 11 to 16 of 16 drift unshifted), so its unshifted case has 600 rows, and one case
# sets the threshold to the share it reaches (11/16: no drift, the rule is strictly above)
AGREEMENT_CASES = {
    "model": [(0, 160, 0.0, None), (3, 160, 0.0, None), (2, 160, 0.25, None), (1, 160, 1.0, None)],
    "mmd": [(0, 160, 0.0, None), (1, 160, 0.5, None), (0, 160, 0.5, None)],
    "ratio": [(1, 600, 0.0, None), (3, 160, 0.25, 0.6875), (0, 160, 1.0, None)],
}


@pytest.mark.parametrize("method", EMBEDDING_METHODS)
def test_a_shifted_window_drifts_and_an_unshifted_one_does_not(method: str) -> None:
    n_ref, n_cur = RESAMPLE_ROWS[method]
    for seed in range(20):
        ref, same = _sides(seed, n_ref, n_cur, 0.0)
        shifted = _sides(seed, n_ref, n_cur, 1.0)[1]
        prepared = EmbeddingReference.of(ref, seed=seed, methods=(method,))
        calm = embedding_drift("embedding", prepared, same, method, None)
        moved = embedding_drift("embedding", prepared, shifted, method, None)
        assert (calm.drift, moved.drift) == (False, True), (seed, calm, moved)
        assert calm.kind == moved.kind == "embedding"
        assert calm.threshold == EMBEDDING_DEFAULT_THRESHOLD[method]


@pytest.mark.parametrize("method", EMBEDDING_METHODS)
def test_the_verdict_and_score_are_evidentlys(method: str) -> None:
    verdicts = []
    for seed, rows, shift, threshold in AGREEMENT_CASES[method]:
        ref, cur = _sides(seed, rows, rows // 2, shift)
        ours = embedding_drift("embedding", EmbeddingReference.of(ref), cur, method, threshold)
        score, drift = evidently_embedding_drift(ref, cur, method, threshold)
        assert ours.drift == drift, (seed, shift, ours, score)
        assert ours.score == pytest.approx(score, abs=SCORE_TOLERANCE[method]), (seed, shift)
        verdicts.append(drift)
    assert set(verdicts) == {False, True}


def test_mmd_above_its_row_bound_judges_a_sample_and_keeps_evidentlys_verdict(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Above MMD_MAX_ROWS a side the kernel is summed over a seeded sample: an estimate of Evidently's MMD^2,
    whose verdict holds away from the threshold."""
    monkeypatch.setattr(embedding, "MMD_MAX_ROWS", 60)
    for seed, shift, expected in [(4, 0.0, False), (5, 1.0, True)]:
        ref, cur = _sides(seed, 160, 80, shift)
        prepared = EmbeddingReference.of(ref, methods=("mmd",))
        assert prepared.kernel_rows.shape == (60, DIMS)
        ours = embedding_drift("embedding", prepared, cur, "mmd", None)
        score, drift = evidently_embedding_drift(ref, cur, "mmd", None)
        assert ours.drift == drift == expected
        assert ours.score == pytest.approx(score, rel=0.3, abs=0.005)  # 60 of 160 and of 80 rows


def test_an_explicit_threshold_decides() -> None:
    ref, cur = _sides(5, 4_000, 2_000, 1.0)
    prepared = EmbeddingReference.of(ref)
    assert embedding_drift("embedding", prepared, cur, "ratio", None).drift  # a quarter of the components
    result = embedding_drift("embedding", prepared, cur, "ratio", 0.3)
    assert (result.score, result.threshold, result.drift) == (0.25, 0.3, False)


def test_an_unknown_method_names_the_valid_ones() -> None:
    ref, cur = _sides(0, 100, 50, 0.0)
    with pytest.raises(MlopsError, match="'pca' for 'embedding' is unknown .*model, mmd, ratio"):
        embedding_drift("embedding", EmbeddingReference.of(ref), cur, "pca", None)
    with pytest.raises(MlopsError, match="model, mmd, ratio"):
        evidently_embedding_drift(ref, cur, "pca", None)


def test_too_few_rows_or_another_width_or_shape_is_refused() -> None:
    ref, cur = _sides(0, 100, 50, 0.0)
    prepared = EmbeddingReference.of(ref)
    with pytest.raises(MlopsError, match=f"has {MIN_ROWS - 1} rows; embedding drift needs at least {MIN_ROWS}"):
        embedding_drift("embedding", prepared, cur[:MIN_ROWS - 1], "model", None)
    with pytest.raises(MlopsError, match="reference has 5 rows"):
        EmbeddingReference.of(ref[:5])
    with pytest.raises(MlopsError, match="has 8 components, the reference 16"):
        embedding_drift("embedding", prepared, cur[:, :8], "mmd", None)
    with pytest.raises(MlopsError, match=r"must be a \[rows, components\] array, not one of shape \(50,\)"):
        embedding_drift("embedding", prepared, cur[:, 0], "ratio", None)
    cur[3, 2] = np.nan
    with pytest.raises(MlopsError, match="1 rows with NaN or infinite values"):
        embedding_drift("embedding", prepared, cur, "ratio", None)
