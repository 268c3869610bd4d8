"""Error analysis of an image and text model, from what its log keeps: the descriptors tell where it errs, the
embedding regions group its inputs, and a confident mistake shows its image and text."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mlops.core.predlog import read_predictions
from mlops.improve.error_analysis import REGION, analyse_errors, write_report
from tests.media_fixtures import CORPUS, IMAGE, LABELS, NAME, NUMBER, TEXT, b64, build_media_bundle
from tests.monitor_fixtures import log_feedback, log_traffic


def _png(rng: np.random.Generator, bright: bool) -> bytes:
    grey = rng.integers(150, 256, (8, 8)) if bright else rng.integers(0, 100, (8, 8))
    out = io.BytesIO()
    Image.fromarray(grey.astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def test_mistakes_are_found_by_descriptor_shown_with_their_image_and_grouped_by_region(tmp_path: Path) -> None:
    bundle = build_media_bundle(tmp_path / "bundle", payloads={"image_sample": 1.0})
    rng = np.random.default_rng(0)
    n = 300
    bright = rng.random(n) < 0.3
    frame = pd.DataFrame({IMAGE: [{"b64": b64(_png(rng, b))} for b in bright],
                          TEXT: [CORPUS[k] for k in rng.integers(0, len(CORPUS), n)],
                          NUMBER: rng.normal(40, 10, n)})
    log = tmp_path / "log.sqlite"
    ids = log_traffic(log, bundle, frame, np.arange(float(n)))
    answered = {r["id"]: json.loads(r["outputs"])["label"] for r in read_predictions(log)}
    # the model is wrong on the bright scans only (the truth is the other label), right on the rest
    truth = {i: (next(x for x in LABELS if x != answered[i]) if b else answered[i]) for i, b in zip(ids, bright,
                                                                                                      strict=True)}
    log_feedback(log, truth)

    a = analyse_errors(log, NAME, min_rows=15, top=100)
    assert a["overall"]["errors"] == int(bright.sum())
    top = a["slices"][0]
    assert top["column"] == f"{IMAGE}.brightness" and top["error_rate"] == 1.0, a["slices"][:3]
    assert any(f"{IMAGE}.brightness" in c["rule"] or f"{IMAGE}.contrast" in c["rule"] for c in a["clusters"])
    assert any(s["column"] == REGION for s in a["slices"])  # the embedding's regions are slices too
    regions = {m["region"] for m in a["confident_mistakes"]}
    assert regions and all(r.startswith("region ") for r in regions)
    assert all(s["column"] not in (IMAGE, TEXT) for s in a["slices"])  # every image and text is unique: no slice
    mistake = a["confident_mistakes"][0]
    assert mistake["images"][0].startswith("data:image/png;base64,") and mistake["texts"][0] in CORPUS

    paths = write_report(a, tmp_path / "report")
    page = Path(paths["html"]).read_text()
    assert 'src="data:image/png;base64,' in page and mistake["texts"][0] in page


def test_a_retrain_learns_from_the_production_images_the_log_kept(tmp_path: Path) -> None:
    """The refreshed data takes a production image back as its bytes, and drops a row whose image or text the
    log did not keep (it cannot be learnt from)."""
    from mlops.improve.refresh import production_frame
    from mlops.recipe.improve import ImproveConfig

    rng = np.random.default_rng(1)
    pngs = [_png(rng, bool(k % 2)) for k in range(40)]
    frame = pd.DataFrame({IMAGE: [{"b64": b64(p)} for p in pngs], TEXT: [CORPUS[k % 10] for k in range(40)],
                          NUMBER: rng.normal(40, 10, 40)})
    reference = pd.DataFrame({IMAGE: pngs[:5], TEXT: CORPUS[:5], NUMBER: [40.0] * 5, "y": LABELS[:1] * 5})
    for policy, log_name in (({"image_sample": 1.0}, "kept"), ({"image_sample": 0.0}, "not-kept"),
                             ({"image_sample": 1.0, "text_sample": 0.0}, "no-text")):
        bundle = build_media_bundle(tmp_path / log_name / "bundle", payloads=policy)
        log = tmp_path / log_name / "log.sqlite"
        ids = log_traffic(log, bundle, frame, np.arange(40.0))
        log_feedback(log, {i: LABELS[0] for i in ids})
        rows, kept, dropped, _ = production_frame(log, NAME, reference, "y", "binary", ImproveConfig(), 0.0, 0)
        if log_name == "kept":
            assert len(rows) == 40 and not dropped
            by_id = dict(zip(ids, pngs, strict=True))
            assert [bytes(v) for v in rows[IMAGE]] == [by_id[i] for i in kept]  # the bytes as sent
        else:
            assert len(rows) == 0 and dropped == {"payload_not_kept": 40}
