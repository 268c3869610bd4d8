"""The reference production is compared with: the model's training split, or a known-good window of the log.

The bundle records the data schema (types, ranges, categories, missing rates) but no sample of the data, so
the training reference is reproduced from the recipe: the same data, the same deterministic split, its
training rows. They pass through the bundle's own feed conversion (numbers to float32, categories to
strings), exactly as the server logs a request, and through the model, for the prediction reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.core.errors import MlopsError
from mlops.core.predlog import LogFilter
from mlops.data.fingerprint import fingerprint_bytes, fingerprint_frame
from mlops.data.preprocess import category_strings
from mlops.data.schema import infer_task
from mlops.data.sources import load_frame, source_name
from mlops.data.split import split_indices
from mlops.evaluate.scored import bundle_feeds
from mlops.monitor.drift import CategoricalReference, NumericReference
from mlops.monitor.embedding import EmbeddingReference
from mlops.monitor.logstream import Rows, read_chunks
from mlops.package.predictor import Predictor, join_feeds

if TYPE_CHECKING:
    from mlops.package.bundle import BundleMeta
    from mlops.recipe import LoadedRecipe

LABEL, CONFIDENCE, VALUE = "prediction.label", "prediction.confidence", "prediction.value"


@dataclass
class Reference:
    source: str  # training | production
    description: str
    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]  # LABEL and CONFIDENCE, or VALUE
    target: np.ndarray | None = None  # true labels (strings) or values, where known
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, NumericReference | CategoricalReference] = field(default_factory=dict)
    embedding: np.ndarray | None = None  # an image or text model's embeddings [N, k], as its log keeps them
    _embedding_profile: EmbeddingReference | None = field(default=None, init=False, repr=False)  # prepared once

    @property
    def n(self) -> int:
        first = next(iter({**self.numeric, **self.categorical, **self.outputs}.values()))
        return int(len(first))

    def profile(self, column: str) -> NumericReference | CategoricalReference:
        """Prepared once per run: sorted values or category counts."""
        if column not in self.profiles:
            if column in self.numeric or column in (CONFIDENCE, VALUE):
                self.profiles[column] = NumericReference.of(self.numeric.get(column, self.outputs.get(column)))
            else:
                self.profiles[column] = CategoricalReference.of(self.categorical.get(column, self.outputs.get(column)))
        return self.profiles[column]

    def embedding_profile(self) -> EmbeddingReference | None:
        """Prepared once per run, from the rows that have an embedding."""
        if self._embedding_profile is None and self.embedding is not None:
            kept = self.embedding[np.isfinite(self.embedding).all(axis=1)]
            if len(kept):
                self._embedding_profile = EmbeddingReference.of(kept)
        return self._embedding_profile

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "description": self.description, "rows": self.n, "notes": self.notes}


def training_reference(loaded: LoadedRecipe, meta: BundleMeta, bundle_dir: Path, max_rows: int,
                       seed: int) -> Reference:
    r = loaded.recipe
    frame, raw = load_frame(r.data, loaded.path)
    notes = []
    fingerprint = fingerprint_bytes(raw) if raw is not None else fingerprint_frame(frame)
    if fingerprint != meta.data_fingerprint:
        notes.append(f"the recipe's data ({fingerprint[:19]}) is not the data the model was trained on "
                     f"({meta.data_fingerprint[:19]}): the reference is this data's training split")
    task = infer_task(frame[r.data.target].dropna(), r.data.task)
    parts = split_indices(frame, r.data.target, r.data.split, r.split_seed, classification=task != "regression")
    train = frame.iloc[parts["train"]].reset_index(drop=True)
    if len(train) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(train), max_rows, replace=False))
        train = train.iloc[keep].reset_index(drop=True)
        notes.append(f"sampled {max_rows} of the training split's rows (monitor.reference.max_rows)")
    described: dict[str, np.ndarray] = {}
    embedding = None
    if all(i.scalar for i in meta.inputs):
        feeds = _feeds(meta, bundle_dir, train)
        outputs = _model_outputs(bundle_dir, feeds, meta.task)
    else:  # one pass through the Predictor: images decoded once, the model run once
        feeds, outputs, described, embedding = _media_profile(meta, bundle_dir, train)
    numeric = {i.name: feeds[i.name][:, 0].astype(np.float64) for i in meta.inputs if i.kind == "numeric"}
    categorical = {i.name: np.asarray([v or None for v in feeds[i.name][:, 0]], dtype=object)
                   for i in meta.inputs if i.kind == "categorical"}
    numeric |= {k: v.astype(np.float64) for k, v in described.items() if v.dtype != object}
    categorical |= {k: v for k, v in described.items() if v.dtype == object}
    target = None
    if r.data.target in train.columns:
        col = train[r.data.target]
        target = (col.to_numpy(np.float64) if meta.task == "regression"
                  else np.asarray([v or None for v in category_strings(col)], dtype=object))
    source = source_name(r.data)
    return Reference("training", f"training split of {source} ({len(train)} rows, split seed {r.split_seed})",
                     numeric, categorical, outputs, target, notes, embedding=embedding)


def _media_profile(meta: BundleMeta, bundle_dir: Path, frame: Any, chunk: int = 1024
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """An image or text model's training rows as its log describes a request, a chunk at a time through the
    bundle's own Predictor: the scalar columns as the graph takes them, the reference outputs, the inputs'
    descriptors and the embedding the log keeps (projected alike)."""
    predictor = Predictor(bundle_dir, max_batch=chunk)
    scalars: list[dict[str, np.ndarray]] = []
    answers: list[dict[str, np.ndarray]] = []
    described: list[dict[str, np.ndarray]] = []
    embeddings: list[np.ndarray] = []
    for start in range(0, len(frame), chunk):
        try:
            feeds = predictor.frame_feeds(frame.iloc[start:start + chunk])
        except MlopsError as exc:
            raise MlopsError(f"the recipe's data does not fit model '{meta.name}': {exc}") from None
        scalars.append({i.name: feeds[i.name] for i in meta.inputs if i.scalar})
        described.append(predictor.descriptors(feeds))
        prediction = predictor.predict(feeds)
        answers.append(prediction.outputs)
        if prediction.embedding is not None:
            embeddings.append(prediction.embedding)

    return (join_feeds(scalars), _reference_outputs(answers, meta.task), join_feeds(described),
            np.concatenate(embeddings) if embeddings else None)


def _feeds(meta: BundleMeta, bundle_dir: Path, frame: Any) -> dict[str, np.ndarray]:
    try:
        return bundle_feeds(bundle_dir, frame)
    except MlopsError as exc:
        raise MlopsError(f"the recipe's data does not fit model '{meta.name}': {exc}") from None


def _model_outputs(bundle_dir: Path, feeds: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(feeds.values())))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n, 4096):
        chunk = {k: v[start:start + 4096] for k, v in feeds.items()}
        parts.append(dict(zip(names, session.run(None, chunk), strict=True)))
    return _reference_outputs(parts, task)


def _reference_outputs(parts: list[dict[str, np.ndarray]], task: str) -> dict[str, np.ndarray]:
    """The model's answers, chunk by chunk, as the reference's prediction columns."""
    if task == "regression":
        return {VALUE: np.concatenate([p["prediction"] for p in parts]).reshape(-1).astype(np.float64)}
    labels = np.concatenate([p["label"] for p in parts]).reshape(-1)
    proba = np.concatenate([p["probabilities"] for p in parts]).astype(np.float64)
    return {LABEL: np.asarray([str(v) for v in labels], dtype=object), CONFIDENCE: proba.max(axis=1)}


def outputs_of(rows: Rows, task: str) -> dict[str, np.ndarray]:
    """The prediction columns of logged rows, named as in the reference."""
    if task == "regression":
        return {VALUE: rows.prediction} if rows.prediction is not None else {}
    out: dict[str, np.ndarray] = {}
    if rows.label is not None:
        out[LABEL] = rows.label
    if rows.confidence is not None:
        out[CONFIDENCE] = rows.confidence
    return out


def production_reference(log_path: Path, flt: LogFilter, columns: dict[str, str], task: str, start: float,
                         end: float, max_rows: int, seed: int, describe: str) -> Reference:
    """Rows of the log in [start, end): a uniform sample of at most `max_rows` of them, kept while streaming
    (each row draws a random key; the smallest keys stay), so memory stays bounded however long the window."""
    rng = np.random.default_rng(seed)
    kept: Rows | None = None
    keys = np.empty(0)
    total = 0
    window = LogFilter(flt.model, flt.version, flt.variants, start, end)
    for chunk in read_chunks(log_path, window, columns, task):
        total += len(chunk)
        kept = chunk if kept is None else Rows.concat([kept, chunk])
        keys = np.concatenate([keys, rng.random(len(chunk))])
        if len(kept) > 2 * max_rows:
            kept, keys = _smallest(kept, keys, max_rows)
    if kept is None or len(kept) == 0:
        raise MlopsError(f"the reference window {describe} of {log_path} has no rows of model '{flt.model}' "
                         "(monitor.reference.start/end)")
    notes = []
    if len(kept) > max_rows:
        kept, keys = _smallest(kept, keys, max_rows)
    if total > max_rows:
        notes.append(f"sampled {max_rows} of the window's {total} rows (monitor.reference.max_rows)")
    order = np.argsort(kept.rowid)
    kept = _select(kept, order)
    target = kept.truth_value if task == "regression" else kept.truth_label
    return Reference("production", f"production window {describe} ({len(kept)} rows)", dict(kept.numeric),
                     dict(kept.categorical), outputs_of(kept, task), target, notes, embedding=kept.embedding)


def _smallest(rows: Rows, keys: np.ndarray, k: int) -> tuple[Rows, np.ndarray]:
    idx = np.argpartition(keys, k - 1)[:k]
    return _select(rows, idx), keys[idx]


def _select(rows: Rows, idx: np.ndarray) -> Rows:
    def pick(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[idx]

    return Rows(rows.rowid[idx], rows.ids[idx], rows.ts[idx], rows.latency_ms[idx], rows.versions[idx],
                {k: v[idx] for k, v in rows.numeric.items()}, {k: v[idx] for k, v in rows.categorical.items()},
                pick(rows.label), pick(rows.proba), pick(rows.prediction), pick(rows.truth_label),
                pick(rows.truth_value), {k: v[idx] for k, v in rows.bad_values.items()},
                {k: v[idx] for k, v in rows.unknown.items()}, pick(rows.embedding),
                {k: v[idx] for k, v in rows.payloads.items()})
