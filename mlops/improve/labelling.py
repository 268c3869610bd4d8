"""A labelling round trip with Label Studio: the predictions most worth a person's label out, their labels back in.

Out (`export_tasks`): the served predictions of a model that have no feedback yet, ranked by each criterion asked
for, taken in turn (one from each, round robin, an id once) up to a count:

- `confidence`: the lowest confidence first (classification: the probability of the label the model answered);
- `disagreement`: requests the shadow answered differently from the served model (a different label; for
  regression, the widest gap first);
- `drift`: requests of the windows the monitor judged drifted (`.mlops/monitor/<model>.sqlite`, the dataset
  verdict of each window over this log), the latest window first, its least confident rows first.

Each becomes a Label Studio task: the logged inputs in `data` with the prediction id (`data.prediction_id`), and the
model's answer as a pre-annotation (`predictions`), so the annotator corrects rather than starts blank. The
labeling config for the project is written beside it.

In (`import_annotations`): a Label Studio JSON export, each task's latest annotation that was not cancelled read
as `{"id": prediction_id, "label": ...}` (or `value` for regression) and recorded through the same path as
`mlops feedback FILE`, so the feedback join, error analysis and the next retrain's data refresh see it.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from mlops.core.atomic import write_json, write_text
from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.predlog import (
    SERVED,
    SHADOW,
    FeedbackError,
    feedback_row,
    finite_float,
    json_object,
)
from mlops.core.predlog_store import log_name, log_target, open_reader, record_feedback
from mlops.data.descriptors import SEPARATOR
from mlops.package.predictor import DESCRIPTORS, EMBEDDING

CRITERIA = ("confidence", "disagreement", "drift")
FROM_NAME = "label"  # the control that holds the label (classification) ...
NUMBER_NAME = "value"  # ... or the number (regression), in the config and in every result
TABLE_NAME = "inputs"  # the tabular inputs, shown as a key-value table
_IMAGE_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"),
                (b"RIFF", "image/webp"), (b"BM", "image/bmp"))


@dataclass
class Candidate:
    """One served prediction proposed for labelling, and why."""

    id: str
    rowid: int
    ts: float
    version: str | None
    variant: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    shadow: dict[str, Any] | None = None  # the shadow's answer, when it disagreed

    @property
    def confidence(self) -> float | None:
        probs = self.outputs.get("probabilities")
        if isinstance(probs, list) and probs and all(isinstance(p, int | float) for p in probs):
            return float(max(probs))
        return None

    @property
    def answer(self) -> Any:
        """The served label (classification) or number (regression); None when the row holds neither."""
        if "label" in self.outputs:
            return str(self.outputs["label"])
        value = self.outputs.get("prediction")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class LabelExport:
    """What `mlops label export` wrote and why each task is in it."""

    model: str
    log: str
    path: str  # the Label Studio import file (a JSON list of tasks)
    config: str  # the labeling config (XML) to create the project with
    task: str  # classification | regression
    labels: list[str]
    tasks: int
    by_reason: dict[str, int]  # tasks per criterion (a task may have several)
    considered: int  # served predictions without feedback, the pool the tasks came from
    criteria: list[str]
    drift_windows: int  # drifted windows found over this log (criterion drift)
    ids: list[str]


@dataclass(frozen=True)
class LabelImport:
    """What `mlops label import` recorded and what it left out, by reason."""

    file: str
    log: str
    tasks: int
    imported: int
    skipped: dict[str, int]  # no_annotation, cancelled, no_label, unknown_id
    unknown_ids: list[str]


# --- out: choosing what to label -------------------------------------------------------------------------------


def parse_criteria(text: str | None) -> tuple[str, ...]:
    """`confidence,disagreement,drift` (any order: the first leads each round) -> a checked tuple."""
    if not text:
        return CRITERIA
    chosen = tuple(c.strip() for c in text.split(",") if c.strip())
    wrong = [c for c in chosen if c not in CRITERIA]
    if wrong or not chosen:
        raise MlopsError(f"--by {text!r}: choose from {', '.join(CRITERIA)} (comma-separated), e.g. --by "
                         "confidence,disagreement")
    return tuple(dict.fromkeys(chosen))


def select_for_labelling(log: Path, model: str, *, count: int | None, criteria: tuple[str, ...] = CRITERIA,
                         since: float | None = None, version: str | None = None,
                         monitor_store: Path | None = None, include_labelled: bool = False
                         ) -> tuple[list[Candidate], int, int]:
    """The `count` predictions most worth labelling (None: every one the criteria rank, in order), each with its
    reasons; the size of the pool and the number of drifted windows found. Raises when the model has no served
    prediction in the log."""
    if count is not None and count < 1:
        raise MlopsError("--count must be at least 1")
    with open_reader(log) as reader:
        served = reader.predictions(SERVED, model, since, version)
        if not served:
            models = sorted({r["model"] for r in reader.predictions((*SERVED, SHADOW))})  # a mistake's path only
            raise MlopsError(f"no served prediction of '{model}' in {log_name(log)}" + (
                f" (it holds {', '.join(models)}): check the model's name" if models else
                " (the log is empty): serve the model and send it traffic first (mlops serve NAME@champion)"))
        shadows = reader.predictions((SHADOW,), model, since) if "disagreement" in criteria else []
        latest: dict[str, dict[str, Any]] = {}
        for r in served:  # a re-sent id keeps its latest answer
            latest[r["id"]] = r
        labelled = set() if include_labelled else set(reader.latest_feedback(list(latest)))
    pool = {pid: Candidate(pid, int(r["rowid"]), float(r["ts"]), r["version"], r["variant"],
                           json_object(r["inputs"]), json_object(r["outputs"]))
            for pid, r in latest.items() if pid not in labelled}
    rankings: dict[str, list[str]] = {}
    drift_windows = 0
    for criterion in criteria:
        if criterion == "confidence":
            rankings[criterion] = _by_confidence(list(pool.values()))
        elif criterion == "disagreement":
            rankings[criterion] = _by_disagreement(pool, shadows)
        else:
            windows = drifted_windows(monitor_store, model, log) if monitor_store is not None else []
            drift_windows = len(windows)
            rankings[criterion] = _by_drift(pool, windows)
    chosen = _round_robin(rankings, len(pool) if count is None else count)
    # why: the criterion that picked it, and any other it meets (every row has a confidence: that one only picks)
    members = {k: set(ids) for k, ids in rankings.items() if k != "confidence"}
    for pid, picked_by in chosen.items():
        pool[pid].reasons = [picked_by, *(k for k, ids in members.items() if k != picked_by and pid in ids)]
    return [pool[pid] for pid in chosen], len(pool), drift_windows


def _by_confidence(rows: list[Candidate]) -> list[str]:
    scored = [(c.confidence, -c.ts, c.id) for c in rows if c.confidence is not None]
    return [pid for _, _, pid in sorted(scored)]


def _by_disagreement(pool: dict[str, Candidate], shadows: list[dict[str, Any]]) -> list[str]:
    gaps: list[tuple[float, float, str]] = []
    for r in shadows:
        c = pool.get(r["id"])
        if c is None:
            continue
        theirs = json_object(r["outputs"])
        if "label" in c.outputs and "label" in theirs:
            if str(theirs["label"]) != str(c.outputs["label"]):
                c.shadow = theirs
                gaps.append((c.confidence if c.confidence is not None else 1.0, -c.ts, c.id))
        elif isinstance(c.answer, float) and isinstance(theirs.get("prediction"), int | float):
            gap = abs(float(theirs["prediction"]) - c.answer)
            if gap > 0:
                c.shadow = theirs
                gaps.append((-gap, -c.ts, c.id))
    return list(dict.fromkeys(pid for _, _, pid in sorted(gaps)))


def drifted_windows(store: Path, model: str, log: Path) -> list[tuple[int, int]]:
    """(first rowid, last rowid) of each window of `log` the monitor judged drifted, the latest first; [] when
    the monitor has not run (no store) or judged none drifted."""
    if not store.is_file():
        return []
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute("SELECT log, start_rowid, end_rowid, summary FROM windows WHERE model = ? "
                              "ORDER BY id DESC", (model,)).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []  # not a monitor store, or another shape of one: no window to go by
    here = log_name(log_target(log, resolve=True))  # as the monitor keys its windows
    out = []
    for logged, first, last, summary in rows:
        if log_name(log_target(logged, resolve=True)) != here:
            continue
        dataset = ((json_object(summary).get("drift") or {}).get("dataset") or {})
        if dataset.get("drift"):
            out.append((int(first), int(last)))
    return out


def _by_drift(pool: dict[str, Candidate], windows: list[tuple[int, int]]) -> list[str]:
    out: list[str] = []
    for first, last in windows:
        inside = [c for c in pool.values() if first <= c.rowid <= last]
        inside.sort(key=lambda c: (c.confidence if c.confidence is not None else 1.0, -c.ts))
        out.extend(c.id for c in inside)
    return list(dict.fromkeys(out))


def _round_robin(rankings: dict[str, list[str]], count: int) -> dict[str, str]:
    """Up to `count` ids, one from each ranking in turn, an id once: id -> the criterion that picked it."""
    chosen: dict[str, str] = {}
    cursors = dict.fromkeys(rankings, 0)
    while len(chosen) < count and any(cursors[k] < len(v) for k, v in rankings.items()):
        for k, ids in rankings.items():
            while cursors[k] < len(ids) and ids[cursors[k]] in chosen:
                cursors[k] += 1
            if cursors[k] < len(ids) and len(chosen) < count:
                chosen[ids[cursors[k]]] = k
                cursors[k] += 1
    return chosen


# --- out: Label Studio's import file and labeling config -------------------------------------------------------


def _key(column: str) -> str:
    """A column's name as a Label Studio tag name and `$variable` (letters, digits, underscores)."""
    return re.sub(r"\W", "_", column) or "_"


def media_columns(rows: list[Candidate]) -> dict[str, str]:
    """Columns that hold an image (logged as its digest and shape, its bytes when sampled) or a text (logged with
    its descriptors, the text itself when sampled): column -> image | text."""
    kinds: dict[str, str] = {}
    for c in rows:
        described = c.inputs.get(DESCRIPTORS)
        described = described if isinstance(described, dict) else {}
        for column, v in c.inputs.items():
            if column in (DESCRIPTORS, EMBEDDING):
                continue
            if isinstance(v, dict) and ("sha1" in v or "b64" in v):
                kinds[column] = "image"
            elif any(str(k).startswith(f"{column}{SEPARATOR}") for k in described):
                kinds.setdefault(column, "text")
    return kinds


def seen_labels(log: Path, model: str) -> list[str]:
    """Every label the model (served or shadow) answered or feedback told: the classes a person can pick."""
    with open_reader(log) as reader:
        rows = reader.predictions((*SERVED, SHADOW), model)
        seen = {str(json_object(r["outputs"])["label"]) for r in rows if "label" in json_object(r["outputs"])}
        seen |= {str(f["label"]) for f in reader.latest_feedback([r["id"] for r in rows]).values()
                 if f.get("label") is not None}
    return sorted(seen)


def label_config(task: str, labels: list[str], media: dict[str, str]) -> str:
    """Label Studio's labeling config: the inputs shown (a table of scalars, each image and text), and one control,
    single choice over the labels or a number."""
    objects = [f'  <Table name="{TABLE_NAME}" value="${TABLE_NAME}"/>']
    for column, kind in media.items():
        tag = "Image" if kind == "image" else "Text"
        objects.append(f'  <{tag} name="{_key(column)}" value="${_key(column)}"/>')
    to_name = _key(next(iter(media))) if media else TABLE_NAME
    if task == "regression":
        control = f'  <Number name="{NUMBER_NAME}" toName="{to_name}" required="true"/>'
    else:
        choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
        control = (f'  <Choices name="{FROM_NAME}" toName="{to_name}" choice="single" required="true">\n'
                   f"{choices}\n  </Choices>")
    return "<View>\n" + "\n".join([*objects, control]) + "\n</View>\n"


def _media_value(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    kept = v.get("b64") if isinstance(v, dict) else None
    if not isinstance(kept, str):
        return None
    head = base64.b64decode(kept[:16] + "=" * (-len(kept[:16]) % 4))
    mime = next((m for magic, m in _IMAGE_MAGIC if head.startswith(magic)), "image/png")
    return f"data:{mime};base64,{kept}"


def to_task(c: Candidate, task: str, media: dict[str, str], to_name: str, model: str) -> dict[str, Any] | None:
    """One Label Studio task; None when an image or text the annotator must see was not kept by the log."""
    scalars = {k: v for k, v in c.inputs.items() if k not in media and k not in (DESCRIPTORS, EMBEDDING)
               and (v is None or isinstance(v, str | int | float | bool))}
    data: dict[str, Any] = {"prediction_id": c.id, TABLE_NAME: scalars}
    for column in media:
        value = _media_value(c.inputs.get(column))
        if value is None:
            return None
        data[_key(column)] = value
    data["mlops"] = {"model": model, "version": c.version, "variant": c.variant, "reasons": c.reasons,
                     "confidence": c.confidence, "shadow": c.shadow}
    out: dict[str, Any] = {"data": data}
    if c.answer is not None:
        if task == "regression":
            result = {"from_name": NUMBER_NAME, "to_name": to_name, "type": "number", "value": {"number": c.answer}}
        else:
            result = {"from_name": FROM_NAME, "to_name": to_name, "type": "choices",
                      "value": {"choices": [c.answer]}}
        prediction: dict[str, Any] = {"model_version": f"{model}/{c.version or '-'}", "result": [result]}
        if c.confidence is not None:
            prediction["score"] = c.confidence
        out["predictions"] = [prediction]
    return out


def export_tasks(log: Path, model: str, out: Path, *, count: int = 50, criteria: tuple[str, ...] = CRITERIA,
                 config_out: Path | None = None, labels: list[str] | None = None, since: float | None = None,
                 version: str | None = None, monitor_store: Path | None = None,
                 include_labelled: bool = False) -> LabelExport:
    """Write Label Studio's import file of the predictions most worth labelling, and the labeling config."""
    if count < 1:
        raise MlopsError("--count must be at least 1")
    # every ranked row, in order: a row whose image or text the log did not keep gives its place to the next
    chosen, considered, windows = select_for_labelling(
        log, model, count=None, criteria=criteria, since=since, version=version, monitor_store=monitor_store,
        include_labelled=include_labelled)
    if not chosen:
        raise MlopsError(f"nothing of '{model}' in {log_name(log)} to label by {', '.join(criteria)}: "
                         + ("every served prediction has feedback already (--include-labelled to label again)"
                            if not considered else "no row matches these criteria (try --by confidence)"))
    regression = all("label" not in c.outputs for c in chosen)
    task = "regression" if regression else "classification"
    if labels is None and not regression:
        labels = seen_labels(log, model)
        classes = max((len(c.outputs.get("probabilities") or []) for c in chosen), default=0)
        if len(labels) < classes:
            say(f"label export: the log names {len(labels)} of the model's {classes} classes ({', '.join(labels)}): "
                "give them all with --labels")
    labels = labels or []
    media = media_columns(chosen)
    to_name = _key(next(iter(media))) if media else TABLE_NAME
    tasks, kept = [], []
    for c in chosen:
        if len(tasks) == count:
            break
        t = to_task(c, task, media, to_name, model)
        if t is not None:
            tasks.append(t)
            kept.append(c)
    if not tasks:
        raise MlopsError(f"the log of '{model}' kept none of the chosen inputs' images or texts, which a person needs "
                         "to see: raise monitor.payloads' sampling and serve more traffic")
    config_out = config_out or out.with_name(out.stem + ".config.xml")
    write_json(out, tasks)
    write_text(config_out, label_config(task, labels, media))
    by_reason: dict[str, int] = {}
    for c in kept:
        for r in c.reasons:
            by_reason[r] = by_reason.get(r, 0) + 1
    say(f"label export: {len(tasks)} tasks of {model} to {out} (labeling config {config_out})")
    return LabelExport(model, log_name(log), str(out), str(config_out), task, labels, len(tasks), by_reason, considered,
                       list(criteria), windows, [c.id for c in kept])


# --- in: a Label Studio export back as feedback ----------------------------------------------------------------


def read_label_studio_export(path: Path) -> tuple[list[dict[str, Any]], dict[str, int], int]:
    """Feedback items ({"id", "label"} or {"id", "value"}) from a Label Studio JSON export (or JSON-MIN), the
    tasks left out by reason, and the number of tasks."""
    if not path.is_file():
        raise MlopsError(f"{path}: no such file (export the project from Label Studio as JSON)")
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MlopsError(f"{path} is not a Label Studio JSON export ({exc}): in Label Studio, Export -> JSON") from None
    except RecursionError:  # JSON nested deeper than Python's recursion limit: no export is
        raise MlopsError(f"{path} is not a Label Studio JSON export (nested too deeply): in Label Studio, Export -> "
                         "JSON") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise MlopsError(f"{path} is not a Label Studio JSON export (expected a list of tasks): in Label Studio, "
                         "Export -> JSON")
    if tasks and not any(isinstance(t.get("data"), dict) or "prediction_id" in t for t in tasks):
        raise MlopsError(f"{path} is not a Label Studio export of `mlops label export` tasks: its tasks have no "
                         "data.prediction_id (import the tasks file `mlops label export` wrote, then export as JSON)")
    items: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for t in tasks:
        data = t.get("data") if isinstance(t.get("data"), dict) else t  # JSON-MIN: the data at the top
        pid = data.get("prediction_id")
        if not isinstance(pid, str) or not pid:
            skip("no_prediction_id")
            continue
        if "data" not in t:
            truth = _min_truth(t)
            if truth is None:
                skip("no_annotation")
            else:
                items.append({"id": pid} | truth)
            continue
        annotations = [a for a in t.get("annotations") or [] if isinstance(a, dict)]
        if not annotations:
            skip("no_annotation")
            continue
        live = [a for a in annotations if not a.get("was_cancelled")]
        if not live:
            skip("cancelled")
            continue
        latest = max(live, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
        truth = _truth(latest.get("result") or [])
        if truth is None:
            skip("no_label")
            continue
        items.append({"id": pid} | truth)
    return items, skipped, len(tasks)


def _truth(result: list[Any]) -> dict[str, Any] | None:
    """{"label": ...} from a single choice, {"value": ...} from a number; the labelling control first."""
    regions = sorted((r for r in result if isinstance(r, dict)), key=lambda r: r.get("from_name") not in
                     (FROM_NAME, NUMBER_NAME))
    for r in regions:
        value = r.get("value") or {}
        choices = value.get("choices")
        if isinstance(choices, list) and len(choices) == 1:
            return {"label": str(choices[0])}
        number = finite_float(value.get("number"))
        if number is not None:
            return {"value": number}
    return None


def _min_truth(item: dict[str, Any]) -> dict[str, Any] | None:
    label, number = item.get(FROM_NAME), finite_float(item.get(NUMBER_NAME))
    if isinstance(label, str) and label:
        return {"label": label}
    if number is not None:
        return {"value": number}
    return None


def import_annotations(path: Path, log: Path) -> LabelImport:
    """Record each annotated task's label as feedback for its prediction id, as `mlops feedback FILE` does."""
    items, skipped, n = read_label_studio_export(path)
    if not items:
        raise MlopsError(f"{path}: none of its {n} tasks has an annotation to import ({_counts(skipped)}): "
                         "annotate in Label Studio, then export again")
    now = time.time()
    rows = []
    for item in items:
        try:
            rows.append(feedback_row(item, now))
        except FeedbackError:  # an id or label the log cannot hold (a lone surrogate): the export was edited
            skipped["invalid"] = skipped.get("invalid", 0) + 1
    if not rows:
        raise MlopsError(f"{path}: none of its {n} tasks has an annotation to import ({_counts(skipped)})")
    result = record_feedback(log, rows)
    if result["unknown"]:
        skipped["unknown_id"] = result["unknown"]
    if not result["matched"]:
        raise MlopsError(f"none of the {len(rows)} prediction ids in {path} has a prediction in {log_name(log)}: is it the "
                         "right log (--log, --model)?")
    say(f"label import: {result['matched']} annotations of {path} recorded as feedback in {log_name(log)}")
    return LabelImport(str(path), log_name(log), n, int(result["matched"]), skipped, list(result["unknown_ids"]))


def _counts(skipped: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
