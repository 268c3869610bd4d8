"""`mlops batch` on this machine: score a file in chunks with ONNX Runtime, resumably.

Each chunk is judged and scored (`mlops.score.rows.score_frame`), written as its own Parquet part file
(temp file, fsync, rename) and then recorded in a manifest (same). A run that is killed leaves finished parts
and the manifest; the same command again skips the chunks the manifest lists and scores the rest. When every
chunk is done the parts are joined, in order, into the output file (again by rename) and the parts removed.

A manifest belongs to one input file (path, size, mtime), one model (ONNX SHA-256, name, version), one chunk
size and id column: when any of these differ, its parts are discarded and the run starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops.core.atomic import replacing, write_bytes
from mlops.core.errors import MlopsError
from mlops.package.predictor import Predictor
from mlops.score.rows import arrow_schema, output_fields, score_frame
from mlops.score.source import InputFile, check_columns, check_unique_ids

MANIFEST_FORMAT = "mlops-batch/1"
DEFAULT_CHUNK_ROWS = 10_000
MAX_EXAMPLES = 5  # failed rows shown in the summary


@dataclass
class BatchResult:
    output: str
    engine: str
    model: str
    version: str | None
    rows: int = 0
    scored: int = 0
    failed: int = 0
    chunks: int = 0
    resumed_chunks: int = 0
    errors_by_column: dict[str, int] = field(default_factory=dict)  # failed rows by their first failing column
    # categories never seen in training that were scored as missing, by column (data.categories.unseen)
    unseen_by_column: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)  # the first failed rows: row, id, error
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parts_dir(output: Path) -> Path:
    """Where an unfinished run keeps its part files and manifest: next to the output."""
    return output.with_name(output.name + ".parts")


def run_key(inp: InputFile, onnx_sha256: str, model: str, version: str | None, chunk_rows: int,
            id_column: str | None) -> str:
    blob = json.dumps({"format": MANIFEST_FORMAT, "input": inp.identity(), "onnx_sha256": onnx_sha256,
                       "model": model, "version": version, "chunk_rows": chunk_rows, "id_column": id_column},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class Manifest:
    """The chunks a run has finished, with their counts; written atomically after each part."""

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = directory
        self.path = directory / "manifest.json"
        self.key = key
        self.done: dict[int, dict[str, Any]] = {}
        self.discarded = False

    @classmethod
    def open(cls, directory: Path, key: str) -> Manifest:
        m = cls(directory, key)
        if m.path.is_file():
            try:
                data = json.loads(m.path.read_text())
            except ValueError:
                data = {}
            if data.get("format") == MANIFEST_FORMAT and data.get("key") == key:
                m.done = {int(k): v for k, v in data["done"].items()
                          if (directory / part_name(int(k))).is_file()}
                return m
        if directory.exists():  # another input, model or chunk size: its parts are of no use
            m.discarded = any(directory.iterdir())
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        m.save()
        return m

    def record(self, chunk: int, counts: dict[str, Any]) -> None:
        self.done[chunk] = counts
        self.save()

    def save(self) -> None:
        data = {"format": MANIFEST_FORMAT, "key": self.key, "done": {str(k): v for k, v in sorted(self.done.items())}}
        write_bytes(self.path, json.dumps(data, indent=1).encode(), durable=True)


def part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.parquet"


def write_part(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    with replacing(path, durable=True) as tmp:
        pq.write_table(table, tmp)


def chunk_counts(frame: Any, unseen: dict[str, int]) -> dict[str, Any]:
    """Rows, failed rows by their first failing column, the first failed rows and the unseen categories by
    column of one scored chunk."""
    failed = frame[frame["error"].notna()]
    by_column: dict[str, int] = {}
    for text in failed["error"]:
        column = first_column(text)
        by_column[column] = by_column.get(column, 0) + 1
    examples = [{"row": int(r), "id": i, "error": e} for r, i, e in
                zip(failed["row"].head(MAX_EXAMPLES), failed["id"].head(MAX_EXAMPLES),
                    failed["error"].head(MAX_EXAMPLES), strict=True)]
    return {"rows": len(frame), "failed": len(failed), "by_column": by_column, "examples": examples,
            "unseen": unseen}


def first_column(error: str) -> str:
    """The column an error names first (errors read `column: why; column: why`)."""
    return error.split(": ", 1)[0]


def score_local(inp: InputFile, bundle: Path, version: str | None, output: Path, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                id_column: str | None = None, progress: bool = True) -> BatchResult:
    """Score `inp` with the bundle into `output` (one Parquet file), resuming a killed run of the same command."""
    import pyarrow as pa
    import pyarrow.parquet as pq


    if chunk_rows < 1:
        raise MlopsError(f"--chunk-rows {chunk_rows}: expected a positive number of rows")
    started = time.perf_counter()
    predictor = Predictor(bundle, max_batch=chunk_rows, threads=min(os.cpu_count() or 1, 4))
    needed = list(predictor.columns)
    check_columns(inp, needed, id_column)
    if id_column is not None:
        check_unique_ids(inp, id_column, as_text=id_column not in needed)
    fields = output_fields(predictor.meta)
    schema = arrow_schema(fields)
    output = output.expanduser().resolve()
    if output.is_dir():
        raise MlopsError(f"--output {output} is a directory (a Spark dataset?): the local engine writes one "
                         "Parquet file; give a file path or remove the directory")
    output.parent.mkdir(parents=True, exist_ok=True)
    directory = parts_dir(output)
    key = run_key(inp, predictor.meta.onnx_sha256, predictor.name, version, chunk_rows, id_column)
    manifest = Manifest.open(directory, key)
    if manifest.discarded:
        print(f"mlops batch: {directory} held parts of a different run (input, model or chunk size changed): "
              "discarded, starting over", file=sys.stderr)
    result = BatchResult(str(output), "local", predictor.name, version)
    columns = list(dict.fromkeys(needed + ([id_column] if id_column else [])))

    with _progress(progress, inp.count_rows(), inp.path.name) as advance:
        chunk = -1
        for chunk, frame in enumerate(inp.chunks(chunk_rows, columns, as_text=id_column if id_column not in needed else None)):
            if chunk in manifest.done:
                result.resumed_chunks += 1
                advance(len(frame))
                continue
            unseen: dict[str, int] = {}
            scored = score_frame(predictor, frame, inp.text, chunk * chunk_rows, inp.path.name, id_column,
                                 version, fields, inp.integer_columns, base=inp.path.parent, unseen=unseen)
            write_part(directory / part_name(chunk), pa.Table.from_pandas(scored, schema=schema, preserve_index=False))
            manifest.record(chunk, chunk_counts(scored, unseen))
            advance(len(frame))
        result.chunks = chunk + 1

    with replacing(output, durable=True) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for k in range(result.chunks):
            writer.write_table(pq.read_table(directory / part_name(k), schema=schema))
    shutil.rmtree(directory)

    for k in range(result.chunks):
        _add_counts(result, manifest.done[k])
    result.errors_by_column = dict(sorted(result.errors_by_column.items()))
    result.unseen_by_column = dict(sorted(result.unseen_by_column.items()))
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _add_counts(result: BatchResult, counts: dict[str, Any]) -> None:
    result.rows += counts["rows"]
    result.failed += counts["failed"]
    result.scored += counts["rows"] - counts["failed"]
    for column, n in counts["by_column"].items():
        result.errors_by_column[column] = result.errors_by_column.get(column, 0) + n
    for column, n in counts.get("unseen", {}).items():  # a manifest written before the count has none
        result.unseen_by_column[column] = result.unseen_by_column.get(column, 0) + n
    room = MAX_EXAMPLES - len(result.examples)
    if room > 0:
        result.examples.extend(counts["examples"][:room])


class _progress:
    """A rich progress bar on stderr (rows scored), or nothing."""

    def __init__(self, enabled: bool, total: int | None, label: str) -> None:
        self.enabled = enabled
        self.total = total
        self.label = label
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(TextColumn("scoring {task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("rows"), TimeElapsedColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=False)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
