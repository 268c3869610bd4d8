"""The bundle's runtime: one predictor over a model bundle, ONNX Runtime and the bundle's input schema.

Every phase that scores with a bundle calls this: both serving runtimes (our ASGI app and the `kserve.Model`),
batch and stream scoring, evaluation and monitoring. It lives with the bundle so that none of them depends on
another phase. It never imports torch, lightning, mlflow or prefect, and loads no pickle: only `model.onnx`
and `bundle.json`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from mlops.core.errors import DataError, MlopsError
from mlops.core.predlog import fp32_values
from mlops.data.descriptors import image_descriptors, text_descriptors
from mlops.data.media import (
    UNKNOWN_TOKEN,
    ImageSpec,
    MediaError,
    TextSpec,
    check_text,
    decode_image_sized,
    encode_texts,
    image_array,
    image_bytes,
    load_tokenizer,
    png_bytes,
)
from mlops.data.preprocess import category_strings, category_text, numeric_column
from mlops.package.bundle import BundleMeta, read_bundle
from mlops.recipe.schema import CategoriesConfig

NUMERIC_V2 = {"FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"}
# the values each V2 integer datatype holds: a value outside its datatype is a malformed tensor, not a number
INT_RANGES = {"INT8": (-2**7, 2**7 - 1), "INT16": (-2**15, 2**15 - 1), "INT32": (-2**31, 2**31 - 1),
              "INT64": (-2**63, 2**63 - 1), "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1),
              "UINT32": (0, 2**32 - 1), "UINT64": (0, 2**64 - 1)}
FP16_MAX = float(np.finfo(np.float16).max)
# a bundle written before data.categories: served as it was then (categories as sent, an unseen one encoded as
# missing without a word)
LEGACY_CATEGORIES = CategoriesConfig(trim=False, unseen="allow")
# the largest integer a float32 holds exactly: beyond it an integer cast to FP32 would silently change
FP32_EXACT_INT = 2**24
FP32_MAX = float(np.finfo(np.float32).max)
BLOCK_PREFIX = "mlops.block:"  # the decoded numbers block's feeds key (Predictor.block_key)
SMALL_COLUMN = 16  # up to this many values a column is checked in Python (see _plain_fp32)
# a V2 tensor's fields, read from every tensor of a request by one C loop each (map)
_NAME, _SHAPE, _DATATYPE, _DATA = (itemgetter(f) for f in ("name", "shape", "datatype", "data"))
_FLOATS = frozenset({"FP32", "FP64"})
_NAME_OF, _SHAPE_OF, _DATA_OF = (attrgetter(f) for f in ("name", "shape", "data"))  # the same of a _PlainTensor


class RequestError(Exception):
    """A request the model cannot take: 4xx with the field at fault."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": f"{self.field}: {self.message}", "field": self.field}


def _missing(tensor: dict[str, Any], key: str) -> str:
    """Why a V2 tensor's field is missing; a tensor that says its data comes as binary_data_size bytes was sent
    as JSON alone, without the binary extension's header that would carry them."""
    parameters = tensor.get("parameters")
    if key == "data" and type(parameters) is dict and "binary_data_size" in parameters:
        return ("is required: parameters.binary_data_size says the data follows the JSON as raw bytes, but the "
                "request has no Inference-Header-Content-Length header (the binary tensor extension's) to find it")
    return "is required"


def _escapes_a_surrogate(raw: bytes) -> bool:
    """Whether the body may escape a UTF-16 surrogate ("\\ud800"): the only way a body msgspec reads can hold one,
    so that the walk of `check_unicode` is only for these. A body with no backslash at all (every plain one) is
    cleared by one memchr, 0.1 us on a 2.3 KB V2 body; searching for the 3-byte escapes themselves took 5.5 us."""
    return raw.find(b"\\") >= 0 and (b"\\ud" in raw or b"\\uD" in raw)


def json_nodes(body: Any) -> Iterator[tuple[str, Any, int]]:
    """Every value of a decoded JSON body, the body first, with where it is ("" for the body itself, then `id`,
    `instances[0].city`, `body[2]` under a top-level list) and its depth. Not recursive: a body may nest as deep as
    the decoder allowed. A value's children are visited after it, so a check that raises stops the walk there."""
    stack: list[tuple[str, Any, int]] = [("", body, 0)]
    while stack:
        where, value, depth = stack.pop()
        yield where, value, depth
        if isinstance(value, dict):
            stack.extend((f"{where}.{key}" if where else str(key), item, depth + 1) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where or 'body'}[{i}]", item, depth + 1) for i, item in enumerate(value))


def check_unicode(body: Any) -> None:
    """A lone surrogate (JSON may escape one: "\\ud800") is no Unicode text: it cannot be logged, answered or
    tokenized, and would fail the request (or its commit group) later. Refused here, naming where it is: the
    value's field (`id`, `instances[0].city`), or the object whose key holds it (`instances[0]`)."""
    for where, value, _ in json_nodes(body):
        if isinstance(value, str):
            _check_text(where or "body", value, "")
        elif isinstance(value, dict):
            for key in value:
                _check_text(where or "body", key, "a key ")


def _check_text(where: str, text: str, what: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(where, f"{what}holds a lone UTF-16 surrogate (an escape from \\ud800 to \\udfff "
                                      "without its pair), which is no Unicode text") from None


def parse_json_body(raw: bytes | str) -> Any:
    """A request body as both runtimes parse it: strict JSON (no NaN/Infinity), whatever the content-type
    said. Nesting deeper than Python's recursion limit is a bad request too, not a crash; so is a string that
    is no Unicode (`check_unicode`)."""
    if _fast_decode is not None and isinstance(raw, bytes):
        try:
            body = _fast_decode(raw)
        except Exception:  # noqa: BLE001 - the standard library's reading decides, and words the error
            pass
        else:
            if _escapes_a_surrogate(raw):
                check_unicode(body)
            return body
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass") if isinstance(raw, bytes) else raw
        body = _DECODER.decode(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError("body", f"invalid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("body", "invalid JSON: nested too deeply") from None
    check_unicode(body)  # the rare path: what msgspec refused (UTF-16, a surrogate's escape or UTF-8 bytes)
    return body


def parse_v2_body(raw: bytes) -> Any:
    """A V2 JSON infer body as `parse_json_body` reads it. A plain one (`_PlainV2`: each tensor's four fields and
    nothing else, FP32 or FP64, plain numbers that fit FP32) is decoded and its values checked in one C pass, its
    `inputs` a `PlainTensors` that `Predictor.feeds_from_v2` takes straight into a packed model's block (measured
    with the feeds, 30 tensors: 48 -> 30 us). Any other body, and any this decoder refuses, is parsed by
    `parse_json_body`: the answers and errors stay the same."""
    if _plain_v2_decode is not None and not _escapes_a_surrogate(raw):
        try:
            plain = _plain_v2_decode(raw)
        except Exception:  # noqa: BLE001 - refused (or nested past the recursion limit): the generic reading decides
            pass
        else:
            body: dict[str, Any] = {"inputs": PlainTensors(plain.inputs)}
            for key in ("id", "parameters", "outputs"):
                value = getattr(plain, key)
                if value is not msgspec.UNSET:
                    body[key] = value
            return body
    return parse_json_body(raw)


class PlainTensors:
    """A plain V2 body's tensors as `parse_v2_body` decoded them (`_PlainTensor`s, not dicts): not a list, so
    that nothing reads them as the JSON's `inputs` without `as_json`."""

    __slots__ = ("tensors",)

    def __init__(self, tensors: list[Any]) -> None:
        self.tensors = tensors

    def as_json(self) -> list[dict[str, Any]]:
        """The tensors as the objects `parse_json_body` would have given."""
        return [{"name": t.name, "shape": t.shape, "datatype": t.datatype, "data": t.data} for t in self.tensors]


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not valid JSON")


# one decoder for every request: `json.loads(..., parse_constant=...)` builds a new one per call. Not orjson,
# which is faster but reads an integer past 64 bits as a float, and would pass it on as an exact number
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)

# msgspec's decoder first when installed (the serve extra): 2-4x faster on a request body, and where it reads a
# body at all it reads what the standard library does (integers past 64 bits exact, like json; NaN, Infinity
# and overflowing numbers refused). What it refuses that json takes (UTF-16 or -32, a byte-order mark, a lone
# surrogate's escape) or refuses with other words goes to _DECODER, which keeps the answers as they were
try:
    import msgspec

    _fast_decode: Any = msgspec.json.Decoder().decode

    class _PlainTensor(msgspec.Struct, forbid_unknown_fields=True, gc=False):
        """A V2 tensor whose values a packed block takes as they are: FP32 or FP64, each a float within FP32's
        range or an int within 2**24 (`_plain_fp32`'s rule; a bool is neither here, as there)."""

        name: str
        shape: list[int]
        datatype: Literal["FP32", "FP64"]
        data: list[Annotated[float, msgspec.Meta(ge=-FP32_MAX, le=FP32_MAX)]
                   | Annotated[int, msgspec.Meta(ge=-FP32_EXACT_INT, le=FP32_EXACT_INT)]]

    class _PlainV2(msgspec.Struct, forbid_unknown_fields=True, gc=False):
        """A V2 infer body of plain tensors; its other fields as the generic decoder reads them (checked later).
        Neither struct is tracked by the cyclic collector (gc=False): what JSON decodes into holds no cycle."""

        inputs: list[_PlainTensor]
        id: Any = msgspec.UNSET
        parameters: Any = msgspec.UNSET
        outputs: Any = msgspec.UNSET

    _plain_v2_decode: Any = msgspec.json.Decoder(_PlainV2).decode
except ImportError:  # pragma: no cover - msgspec comes with the serve extra
    msgspec = None
    _fast_decode = _plain_v2_decode = None


@dataclass
class Prediction:
    outputs: dict[str, np.ndarray]  # label [N] (str) and probabilities [N,C], or prediction [N]
    rows: int
    # what the log keeps of the network's embedding [N, k] (projected when wider than the bundle's policy):
    # image and text models only, never part of an answer
    embedding: np.ndarray | None = None

    def instances(self) -> list[dict[str, Any]]:
        """One JSON-able dict per row (the V1 response shape)."""
        out = []
        for i in range(self.rows):
            row: dict[str, Any] = {}
            for name, values in self.outputs.items():
                v = values[i]
                row[name] = v.tolist() if isinstance(v, np.ndarray) else (v.item() if hasattr(v, "item") else v)
            out.append(row)
        return out

    def log_instances(self) -> list[dict[str, Any]]:
        """What the prediction log keeps of each answer: `instances()`, and the embedding when there is one
        (5 decimals: a drift statistic needs no more, and the log row stays small)."""
        rows = self.instances()
        if self.embedding is not None:
            for row, vector in zip(rows, np.round(self.embedding.astype(np.float64), 5).tolist(), strict=True):
                row[EMBEDDING] = vector
        return rows

    def part(self, start: int, size: int) -> Prediction:
        """Rows [start, start + size) as a prediction of their own (a batch split back into its requests)."""
        return Prediction({name: values[start:start + size] for name, values in self.outputs.items()}, size,
                          None if self.embedding is None else self.embedding[start:start + size])


EMBEDDING = "embedding"  # the network's penultimate layer: for monitoring, never part of an answer
RAW_TEXT = "::text"  # a feed key suffix: the texts behind a text input's token ids (logged, not run)
SENT_SIZE = "::size"  # a feed key suffix: each image's (width, height) as sent, before resizing (logged)
SENT_BYTES = "::bytes"  # a feed key suffix: each image's encoded bytes as sent (a sample of them is logged)
DESCRIPTORS = "::descriptors"  # the log row's key holding its inputs' descriptors, by descriptor column
PROJECTION_SEED = 0  # the embedding's random projection: fixed, so the log and the reference agree
SIZE_LIMIT = 413
_BUFFER_ADDRESS = re.compile(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class Predictor:
    def __init__(self, bundle_dir: str | Path, max_batch: int = 1024, threads: int = 1) -> None:
        self.path = Path(bundle_dir)
        self.meta: BundleMeta = read_bundle(self.path)
        packed = self.meta.packed
        # a tabular bundle's packed.onnx: the same model with its numeric columns as one input, run by predict()
        self.runner = self._open(packed.file if packed else "model.onnx", threads)
        self._threads = threads
        self.packed_input = packed.input if packed else None
        self.packed_columns = list(packed.columns) if packed else []
        self._unpacked = [i.name for i in self.runner.get_inputs() if i.name != self.packed_input]
        # where a decoded request keeps its numbers as one block already (feeds_from_rows): named by the columns'
        # order, so another bundle's Predictor (a shadow, a challenger) packing other columns never takes it
        self.block_key = f"{BLOCK_PREFIX}{','.join(self.packed_columns)}" if packed else None
        self._packed_at = {name: j for j, name in enumerate(self.packed_columns)}
        # model.onnx's inputs: the named raw columns (packed.onnx takes the same values, numeric ones joined)
        self.graph_inputs = frozenset([*self.packed_columns, *self._unpacked])
        # what an answer holds (label and probabilities, or prediction); the embedding only when asked for
        self.output_names = [o.name for o in self.runner.get_outputs() if o.name != EMBEDDING]
        self.has_embedding = any(o.name == EMBEDDING for o in self.runner.get_outputs())
        self.max_batch = max_batch
        self.columns = {i.name: i for i in self.meta.inputs}
        # the input names when every input is a packed number (quickstart's 30 columns): a plain request then
        # goes straight to the block (feeds_from_rows, _v2_only_packed)
        self._only_packed = frozenset(self.columns) if set(self.columns) == set(self.packed_columns) else None
        # a log row is then the block's row named, in the inputs' order (log_rows)
        self._block_is_row = list(self.columns) == self.packed_columns
        self.categories = self.meta.categories or LEGACY_CATEGORIES
        trained = {c.name: c for c in self.meta.data_schema.columns}
        # each categorical input's categories seen in training (the graph's one-hot levels)
        self.levels = {i.name: frozenset(trained[i.name].categories or ()) for i in self.meta.inputs
                       if i.kind == "categorical"}
        # a categorical column that held numbers in training (data.categorical): a number is one of its categories
        self.numeric_categories = frozenset(n for n in self.levels if _numeric_dtype(trained[n].dtype))
        self.tokenizers = {i.name: load_tokenizer((self.path / i.text.tokenizer).read_text())
                           for i in self.meta.inputs if i.text is not None}
        self.unknown_ids = {n: t.token_to_id(UNKNOWN_TOKEN) for n, t in self.tokenizers.items()}
        # an image or text model logs its embedding with every prediction: what the monitor's embedding drift
        # reads. A tabular model's log stays as it was (its columns are the drift signal)
        self.logs_embedding = self.has_embedding and not all(i.scalar for i in self.meta.inputs)
        self.projection = embedding_projection(self._embedding_width(), self.meta.payloads.embedding_dims) \
            if self.logs_embedding else None
        self._sample = random.Random()  # which payloads the log keeps: a share, not a choice by content

    def _open(self, file: str, threads: int) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # many small requests: one thread each beats contention
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(self.path / file), opts, providers=["CPUExecutionProvider"])

    @cached_property
    def session(self) -> Any:
        """model.onnx itself, named raw columns in: what the evaluation's checks run, as Triton and every other
        client of the bundle would. Opened on first use when predict() runs packed.onnx."""
        return self.runner if self.packed_input is None else self._open("model.onnx", self._threads)

    def _embedding_width(self) -> int:
        shape = next(o.shape for o in self.runner.get_outputs() if o.name == EMBEDDING)
        return int(shape[-1])

    @property
    def name(self) -> str:
        return self.meta.name

    def predict(self, feeds: dict[str, np.ndarray], embedding: bool = False) -> Prediction:
        """The answer for already checked feeds; with `embedding`, the embedding output too (whole, in
        `outputs`). An image or text model's `Prediction.embedding` is what its log keeps of it."""
        logged = self.logs_embedding
        names = [*self.output_names, EMBEDDING] if (embedding or logged) and self.has_embedding else self.output_names
        if self.packed_input is None:
            graph_feeds = {k: v for k, v in feeds.items() if k in self.graph_inputs}
        else:
            graph_feeds = pack_feeds(feeds, self.packed_input, self.packed_columns, self._unpacked, self.block_key)
        outputs = dict(zip(names, self.runner.run(names, graph_feeds), strict=True))
        rows = len(next(iter(graph_feeds.values()))) if graph_feeds else 0
        kept = None
        if logged:
            whole = outputs[EMBEDDING] if embedding else outputs.pop(EMBEDDING)
            kept = whole if self.projection is None else whole @ self.projection
        return Prediction(outputs, rows, kept)

    def graph_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Only what model.onnx takes (a text's raw strings ride along in `feeds` for the log), the block as
        its named columns."""
        return {k: v for k, v in self.named(feeds).items() if k in self.graph_inputs}

    def frame_feeds(self, frame: Any) -> dict[str, np.ndarray]:
        """A data frame's rows as the graph takes them, as a request's would be: scalar columns as the graph's
        raw columns (float32 [N,1] with NaN for missing, strings [N,1]), images decoded and texts tokenized by
        the bundle's own specs. How evaluation, robustness checks, benchmarks and the monitor score raw rows."""
        feeds: dict[str, np.ndarray] = {}
        for name, spec in self.columns.items():
            if name not in frame.columns:
                raise MlopsError(f"the model needs column '{name}', which the data does not have")
            col = frame[name]
            if spec.scalar:
                feeds[name] = (category_strings(col, self.categories.trim) if spec.dtype == "string"
                               else numeric_column(col))[:, None]
                continue
            try:
                feeds |= self.column_feeds(name, col.tolist(), name)
            except RequestError as exc:
                raise DataError(f"column '{name}' row {exc.field.removeprefix(name)}: {exc.message}") from None
        return feeds

    def log_rows(self, feeds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The validated inputs as one object per row, for the prediction log: numbers (NaN -> null), categories
        ("" -> null); an image as its size and a digest of its pixels, a text as sent; both with their
        descriptors (under DESCRIPTORS), and the payload itself for the bundle's sampled share of them."""
        # a decoded block's numbers as Python floats in one call, not numpy scalars one by one
        decoded = self.block_in(feeds)
        block = None if decoded is None else fp32_values(decoded)
        if block is not None and self._block_is_row:  # a row is the block's row, named (8 rows: 64 -> 35 us)
            return [dict(zip(self.packed_columns, values, strict=True)) for values in block]
        n = len(next(iter(feeds.values()))) if feeds else 0
        rows: list[dict[str, Any]] = [{} for _ in range(n)]
        policy = self.meta.payloads
        for name, spec in self.columns.items():
            j = self._packed_at.get(name) if block is not None else None
            if j is not None:
                for i in range(n):
                    rows[i][name] = block[i][j]  # type: ignore[index]
            elif spec.kind == "image":
                pixels = feeds[name]
                sent = feeds.get(name + SENT_BYTES)
                for i in range(n):
                    rows[i][name] = {"sha1": hashlib.sha1(pixels[i].tobytes()).hexdigest()[:16],
                                     "shape": list(pixels[i].shape)}
                    if policy.image_sample and self._sample.random() < policy.image_sample:
                        raw = sent[i] if sent is not None and sent[i] is not None else png_bytes(pixels[i])
                        if len(raw) <= policy.max_bytes:
                            rows[i][name]["b64"] = base64.b64encode(raw).decode("ascii")
            elif spec.kind == "text":
                texts = feeds.get(name + RAW_TEXT)
                for i in range(n):
                    keep = texts is not None and (policy.text_sample >= 1 or self._sample.random() < policy.text_sample)
                    rows[i][name] = texts[i] if keep and len(texts[i].encode()) <= policy.max_bytes else None
            elif feeds[name].dtype == np.float32:
                for i, f in enumerate(fp32_values(feeds[name][:, 0])):
                    rows[i][name] = f
            else:
                values = feeds[name]
                for i in range(n):
                    v = values[i, 0]
                    if isinstance(v, str):
                        rows[i][name] = v or None
                    else:
                        f = float(v)
                        rows[i][name] = None if math.isnan(f) else f
        described = self.descriptors(feeds)
        if described:
            columns = {k: v.tolist() for k, v in described.items()}
            for i in range(n):
                rows[i][DESCRIPTORS] = {k: _json_number(v[i]) for k, v in columns.items()}
        return rows

    def descriptors(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each image and text input's descriptors (mlops.data.descriptors), by descriptor column: what the log
        keeps per prediction and the monitor's training reference computes alike."""
        out: dict[str, np.ndarray] = {}
        for name, spec in self.columns.items():
            if spec.kind == "image":
                pixels = feeds[name]
                sizes = feeds.get(name + SENT_SIZE)
                if sizes is None:  # decoded pixels were sent: their size is the model's
                    sizes = np.tile(np.asarray(pixels.shape[2:0:-1]), (len(pixels), 1))
                out |= image_descriptors(name, pixels, sizes)
            elif spec.kind == "text" and name + RAW_TEXT in feeds:
                out |= text_descriptors(name, feeds[name + RAW_TEXT].tolist(), feeds.get(name),
                                        self.unknown_ids.get(name))
        return out

    def unseen(self, feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
        """The rows holding a category never seen in training, by column (only the columns with some). The graph
        encodes such a category as a missing one; under the `error` policy the request was refused before."""
        out: dict[str, list[int]] = {}
        for name, known in self.levels.items():
            rows = [i for i, v in enumerate(feeds[name][:, 0].tolist()) if v and v not in known]
            if rows:
                out[name] = rows
        return out

    def imputed(self, unseen: dict[str, list[int]], rows: int) -> list[list[str]] | None:
        """Per row, the columns whose unseen category was imputed, for the answer: under the `impute` policy and
        when there were some, else None (`allow` counts them without a word in the answer)."""
        if not unseen or self.categories.unseen != "impute":
            return None
        out: list[list[str]] = [[] for _ in range(rows)]
        for name, at in unseen.items():
            for i in at:
                out[i].append(name)
        return out

    # --- request decoding -------------------------------------------------------------------------

    def feeds_from_rows(self, rows: list[dict[str, Any]], where: str = "instances") -> dict[str, np.ndarray]:
        """V1 instances: objects of named raw columns, or lists in schema order; null means missing."""
        if (self._only_packed is not None and type(rows) is list and len(rows) == 1 and type(rows[0]) is dict
                and rows[0].keys() == self._only_packed and self.max_batch >= 1):
            # the most common request, one object of every column: its numbers read in schema order at C speed
            row = _plain_row(list(map(rows[0].__getitem__, self.packed_columns)))
            if row is not None:  # else the checks below, which name the value at fault
                return self._block_feeds(row)
        if not isinstance(rows, list) or not rows:
            raise RequestError(where, "must be a non-empty list of instances")
        self._check_batch(len(rows), where)
        names = list(self.columns)
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for i, row in enumerate(rows):
            if isinstance(row, list):
                if len(row) != len(names):
                    raise RequestError(f"{where}[{i}]", f"expected {len(names)} values in schema order {names}, "
                                       f"got {len(row)}")
                row = dict(zip(names, row, strict=True))
            if not isinstance(row, dict):
                raise RequestError(f"{where}[{i}]", "must be an object of named columns or a list in schema order")
            unknown = set(row) - set(names)
            if unknown:
                raise RequestError(f"{where}[{i}].{sorted(unknown)[0]}", f"unknown column (expected: {', '.join(names)})")
            for n in names:
                if n not in row:
                    raise RequestError(f"{where}[{i}].{n}", "missing column (send null for a missing value)")
                columns[n].append(row[n])
        block = self._numeric_block(columns, len(rows))
        feeds = {} if block is None else self._block_feeds(block)
        for n, values in columns.items():
            if block is None or not self.packs(n):
                feeds |= self.column_feeds(n, values, f"{where}[].{n}")
        return feeds

    def _numeric_block(self, columns: dict[str, list[Any]], rows: int) -> np.ndarray | None:
        """The numeric columns as packed.onnx's one [N, K] input, in one numpy call rather than one per column,
        when every value is a plain number that fits FP32 (`_plain_fp32`); None otherwise, and each
        column is then checked on its own, which names the value at fault."""
        if self.block_key is None:
            return None
        return _fp32_block([columns[c] for c in self.packed_columns], rows)

    def feeds_from_v2(self, inputs: Any) -> dict[str, np.ndarray]:
        """V2 inputs: one tensor per column (shape [N] or [N,1]), or one [N, n_columns] tensor; as the JSON's list,
        or as `parse_v2_body`'s PlainTensors."""
        if type(inputs) is PlainTensors:
            if self._only_packed is not None and len(inputs.tensors) == len(self.packed_columns):
                tensors = inputs.tensors
                fast = self._only_packed_block(list(map(_NAME_OF, tensors)), list(map(_DATA_OF, tensors)),
                                               list(map(_SHAPE_OF, tensors)), checked=True)
                if fast is not None:
                    return fast
            inputs = inputs.as_json()
        if not isinstance(inputs, list) or not inputs:
            raise RequestError("inputs", "must be a non-empty list of tensors")
        if self._only_packed is not None and len(inputs) == len(self.packed_columns):
            fast = self._v2_only_packed(inputs)
            if fast is not None:
                return fast
        names = list(self.columns)
        # the block, when it is taken, has read the four fields of every tensor it holds (a plain request's
        # all): only the others are checked below. Otherwise every tensor is, before anything else.
        try:
            taken = self._v2_block(inputs)
        except (TypeError, KeyError):  # a tensor that is not an object, or lacks a field: named below
            taken = None
        block, others = taken if taken is not None else (None, range(len(inputs)))
        for k in others:
            t = inputs[k]
            if not isinstance(t, dict):
                raise RequestError(f"inputs[{k}]", "must be an object with name, shape, datatype, data")
            for key in ("name", "shape", "datatype", "data"):
                if key not in t:
                    raise RequestError(f"inputs[{k}].{key}", _missing(t, key))
            if not isinstance(t["name"], str):
                raise RequestError(f"inputs[{k}].name", "must be a string")
        if len(inputs) == 1 and inputs[0]["name"] not in self.columns:
            return self._single_tensor(inputs[0], names)
        seen: dict[str, np.ndarray] = block or {}
        rows = None if block is None else len(seen[self.block_key])  # type: ignore[index]
        for k, t in enumerate(inputs):
            name = t["name"]
            if block is not None and name in self._packed_at:
                continue  # in the block already
            if name not in self.columns:
                raise RequestError(f"inputs[{k}].name", f"unknown input '{name}' (expected: {', '.join(names)})")
            if name in seen:
                raise RequestError(f"inputs[{k}].name", f"input '{name}' given twice")
            try:
                if self.columns[name].image is not None and t["datatype"] == "UINT8":
                    feeds = self._pixel_tensor(t, k)  # decoded pixels [N, H, W, C]
                else:
                    values = self._tensor_values(t, k, columns=1)
                    feeds = self.column_feeds(name, values, f"inputs[{k}].data", t["datatype"])
            except RequestError as exc:
                raise _naming(exc, name, self.columns[name].scalar) from None
            n_rows = len(feeds[name])
            if rows is not None and n_rows != rows:
                raise RequestError(f"inputs[{k}].shape", f"has {n_rows} rows, other inputs have {rows}")
            rows = n_rows
            seen |= feeds
        missing = [n for n in names if n not in seen and (block is None or not self.packs(n))]
        if missing:
            raise RequestError(f"inputs.{missing[0]}", "missing input (send null in BYTES or NaN-free data)")
        return seen

    def _v2_only_packed(self, inputs: list[Any]) -> dict[str, np.ndarray] | None:
        """The block of a model whose every input is a packed number, sent the common way: each input once, as
        its own FP32 or FP64 tensor, all of shape [N, 1] (or all [N]), holding N plain numbers that fit FP32. The
        fields are read and checked by C loops (map, set, list comparisons), not a Python loop per tensor as
        `_v2_block` does. None for anything else, which `_v2_block` and the tensor-by-tensor checks decide."""
        try:
            if not set(map(_DATATYPE, inputs)) <= _FLOATS:
                return None
            names, datas, shapes = list(map(_NAME, inputs)), list(map(_DATA, inputs)), list(map(_SHAPE, inputs))
        except (TypeError, KeyError):  # not an object, a field missing, a datatype that is not a string
            return None
        if (set(map(type, names)) != {str} or set(map(type, datas)) != {list} or set(map(type, shapes)) != {list}
                or set(map(type, chain.from_iterable(shapes))) != {int}):  # exact ints: not True, 1.0
            return None
        return self._only_packed_block(names, datas, shapes, checked=False)

    def _only_packed_block(self, names: list[str], datas: list[list[Any]], shapes: list[list[int]], checked: bool
                           ) -> dict[str, np.ndarray] | None:
        """The block's feeds from tensors' fields of the types V2 gives them (`_v2_only_packed` checked those, the
        plain decoder's structs hold no other) when every column is given once, with N rows in each (within the
        batch limit), all of shape [N, 1] or all [N], and every value a plain number that fits FP32 (`checked`:
        the decoder has made sure of that); None otherwise."""
        if names != self.packed_columns and set(names) != self._only_packed:
            return None
        n, k = len(datas[0]), len(names)
        if (not 0 < n <= self.max_batch or set(map(len, datas)) != {n}
                or (shapes.count([n, 1]) != k and shapes.count([n]) != k)):
            return None
        lists = datas
        if names != self.packed_columns:  # every column once, in another order: put in the block's
            lists = list(datas)
            for name, data in zip(names, datas, strict=True):
                lists[self._packed_at[name]] = data
        if checked:  # one C pass over the values, column after column: [k, n], the block its transpose
            flat = np.fromiter(chain.from_iterable(lists), np.float32, k * n)
            block = flat.reshape(1, k) if n == 1 else flat.reshape(k, n).T.copy()
        else:
            block = _fp32_block(lists, n)
        return None if block is None else self._block_feeds(block)

    def _v2_block(self, inputs: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], list[int]] | None:
        """A packed model's numeric inputs as packed.onnx's one block, in one numpy call as V1's rows are
        (`_numeric_block`), when each is its own FP32 or FP64 tensor of shape [N] or [N, 1] holding N plain
        numbers that fit FP32 (`_plain_fp32`), every one given once, all with the same N within the batch
        limit; with the block, where the other tensors are in `inputs`. None otherwise: the tensor-by-tensor
        path then checks each and names the value at fault. The other inputs (categories, texts, images) are
        left to that path either way. A tensor that is not an object or lacks a field raises TypeError or
        KeyError."""
        if self.block_key is None:
            return None
        lists: list[Any] = [None] * len(self.packed_columns)
        rows = None
        at = self._packed_at
        others = []
        for k, t in enumerate(inputs):
            j = at.get(t["name"])
            if j is None:
                others.append(k)
                continue
            shape, data = t["shape"], t["data"]
            if (lists[j] is not None or t["datatype"] not in ("FP32", "FP64") or type(data) is not list
                    or type(shape) is not list or not 1 <= len(shape) <= 2):
                return None
            n = len(data)
            if type(shape[0]) is not int or shape[0] != n or (len(shape) == 2 and (type(shape[1]) is not int
                                                                                  or shape[1] != 1)):
                return None
            if rows is None:
                if not 0 < n <= self.max_batch:
                    return None
                rows = n
            elif n != rows:
                return None
            lists[j] = data
        if rows is None or any(values is None for values in lists):
            return None
        block = _fp32_block(lists, rows)
        return None if block is None else (self._block_feeds(block), others)

    def block_in(self, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
        """The decoded numbers block `feeds` carry for this model (`_block_feeds`), if any."""
        return feeds.get(self.block_key) if self.block_key is not None else None

    def _block_feeds(self, block: np.ndarray) -> dict[str, np.ndarray]:
        """The block under `block_key`, standing for every packed column: feeds hold a packed model's numbers
        either as the block or as named columns, never both, so the two cannot disagree. The columns are not
        made per request (measured: 30 [N, 1] views, the check that they still are, and every consumer's pass over
        31 names cost about 5 % of a served request); what needs them by name asks `named`."""
        assert self.block_key is not None
        return {self.block_key: block}

    def packs(self, name: str) -> bool:
        """Whether column `name` is one of the packed numbers (in the block when feeds carry one)."""
        return name in self._packed_at

    def named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`feeds` with this model's block as its named [N, 1] columns (views of it), in a new dict: what
        model.onnx, another model's feeds and code that edits a column take. Feeds without the block are
        returned as they are."""
        block = self.block_in(feeds)
        if block is None:
            return feeds
        out = {k: v for k, v in feeds.items() if k != self.block_key}
        out.update(zip(self.packed_columns, block.T[:, :, None], strict=True))
        return out

    def _single_tensor(self, t: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
        values = self._tensor_values(t, 0, columns=len(names))
        if not all(isinstance(r, list) for r in values):
            raise RequestError("inputs[0].shape", f"a single tensor must be [N, {len(names)}] in schema order {names}")
        # a tensor mixing numbers and strings can only be BYTES: its numeric columns then carry JSON numbers
        datatype = None if t["datatype"] == "BYTES" else t["datatype"]
        feeds: dict[str, np.ndarray] = {}
        for j, n in enumerate(names):
            feeds |= self.column_feeds(n, [r[j] for r in values], f"inputs[0].data[][{j}]", datatype)
        return feeds

    def _tensor_values(self, t: dict[str, Any], k: int, columns: int) -> list[Any]:
        shape, data, dtype = t["shape"], t["data"], t["datatype"]
        if not isinstance(dtype, str) or (dtype not in NUMERIC_V2 and dtype not in ("BYTES", "BOOL")):
            raise RequestError(f"inputs[{k}].datatype", f"unsupported datatype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape) or not 1 <= len(shape) <= 2:
            raise RequestError(f"inputs[{k}].shape", "must be [N] or [N, M] with non-negative integers")
        if not isinstance(data, list):
            raise RequestError(f"inputs[{k}].data", "must be a list")
        flat = _flatten(data)
        expected = shape[0] * (shape[1] if len(shape) == 2 else 1)
        if len(flat) != expected:
            raise RequestError(f"inputs[{k}].shape", f"shape {shape} needs {expected} values, data has {len(flat)}")
        if len(shape) == 2 and shape[1] != columns:
            raise RequestError(f"inputs[{k}].shape", f"second dimension must be {columns}, got {shape[1]}")
        if shape[0] == 0:
            raise RequestError(f"inputs[{k}].shape", "needs at least one row")
        self._check_batch(shape[0], f"inputs[{k}].shape")
        if len(shape) == 2 and shape[1] > 1:
            return [flat[i * shape[1]:(i + 1) * shape[1]] for i in range(shape[0])]
        return flat

    def _check_batch(self, n: int, where: str) -> None:
        if n > self.max_batch:
            raise RequestError(where, f"batch of {n} rows is over the limit of {self.max_batch}", status=413)

    def column_feeds(self, name: str, values: list[Any], where: str, datatype: str | None = None
                     ) -> dict[str, np.ndarray]:
        """`column`, plus what the log keeps of a text input (the texts themselves, beside their token ids)."""
        spec = self.columns[name]
        if spec.text is not None:
            if datatype is not None and datatype != "BYTES":
                raise RequestError(where, f"input '{name}' is text: send BYTES, not {datatype}")
            texts = self._texts(spec.text, values, where)
            return {name: self.encode_texts(name, texts), name + RAW_TEXT: np.asarray(texts, dtype=object)}
        if spec.image is not None:
            self._image_datatype(name, where, datatype)
            return self._image_feeds(name, spec.image, values, where)
        return {name: self.column(name, values, where, datatype)}

    def encode_texts(self, name: str, texts: list[str]) -> np.ndarray:
        """Token ids [N, max_length] of checked texts, by the bundle's tokenizer for input `name`."""
        spec = self.columns[name].text
        assert spec is not None
        return encode_texts(self.tokenizers[name], texts, spec.max_length)

    def _texts(self, spec: TextSpec, values: list[Any], where: str) -> list[str]:
        out = []
        for i, v in enumerate(values):
            try:
                text = check_text(v, spec)
            except MediaError as exc:
                status = SIZE_LIMIT if "over the limit" in str(exc) else 400
                raise RequestError(f"{where}[{i}]", str(exc), status=status) from None
            # JSON may escape a lone surrogate ("\ud800"), which is no UTF-8: the tokenizer would raise a TypeError
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise RequestError(f"{where}[{i}]", "text must be UTF-8 (it holds a lone surrogate)") from None
            out.append(text)
        return out

    def _image_feeds(self, name: str, spec: ImageSpec, values: list[Any], where: str) -> dict[str, np.ndarray]:
        """The pixels the graph takes, and beside them what the log keeps: each image's size and bytes as sent."""
        pixels, sizes, sent = [], [], []
        for i, v in enumerate(values):
            try:
                if isinstance(v, np.ndarray):
                    pixels.append(image_array(v, spec))
                    sizes.append((v.shape[1], v.shape[0]))
                    sent.append(None)
                else:
                    raw = image_bytes(v)
                    arr, size = decode_image_sized(raw, spec)
                    pixels.append(arr)
                    sizes.append(size)
                    sent.append(raw)
            except MediaError as exc:
                status = SIZE_LIMIT if "over the limit" in str(exc) else 400
                # Pillow names the buffer it could not identify by its address: the same file, another message
                message = _BUFFER_ADDRESS.sub("", str(exc))
                raise RequestError(f"{where}[{i}]", message, status=status) from None
            except Exception as exc:  # Pillow's plugins raise more than decode_image catches
                # (a corrupt DDS raises NotImplementedError): whatever a bad file raises, it is the file's fault
                message = f"not a readable image ({type(exc).__name__}: {exc})"
                raise RequestError(f"{where}[{i}]", message) from None
        sent_bytes = np.empty(len(sent), dtype=object)
        sent_bytes[:] = sent
        return {name: np.stack(pixels), name + SENT_SIZE: np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
                name + SENT_BYTES: sent_bytes}

    @staticmethod
    def _image_datatype(name: str, where: str, datatype: str | None) -> None:
        if datatype is not None and datatype != "BYTES":
            raise RequestError(where, f"input '{name}' is an image: send BYTES (base64 of the encoded image) or "
                               f"a UINT8 tensor of pixels, not {datatype}")

    def _pixel_tensor(self, t: dict[str, Any], k: int) -> dict[str, np.ndarray]:
        """A V2 UINT8 tensor of decoded images: [N, H, W, C] (or [N, H, W] for one channel), any size."""
        spec = self.columns[t["name"]].image
        assert spec is not None
        shape, data = t["shape"], t["data"]
        if not isinstance(shape, list) or len(shape) not in (3, 4) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise RequestError(f"inputs[{k}].shape", "an image tensor is [N, height, width] or "
                               "[N, height, width, channels] with positive integers")
        self._check_batch(shape[0], f"inputs[{k}].shape")
        if shape[1] * shape[2] > spec.max_pixels:
            raise RequestError(f"inputs[{k}].shape", f"images of {shape[2]}x{shape[1]} pixels are over the limit "
                               f"of {spec.max_pixels:,}", status=SIZE_LIMIT)
        if not isinstance(data, list):
            raise RequestError(f"inputs[{k}].data", "must be a list")
        flat = _flatten(data)
        if len(flat) != math.prod(shape):
            raise RequestError(f"inputs[{k}].shape", f"shape {shape} needs {math.prod(shape)} values, data has "
                               f"{len(flat)}")
        if not all(type(v) is int and 0 <= v <= 255 for v in flat):
            raise RequestError(f"inputs[{k}].data", "UINT8 values are integers from 0 to 255")
        arr = np.asarray(flat, dtype=np.uint8).reshape(shape)
        return self._image_feeds(t["name"], spec, list(arr), f"inputs[{k}].data")

    def column(self, name: str, values: list[Any], where: str, datatype: str | None = None) -> np.ndarray:
        """One column's values as the array the graph takes, or a RequestError naming the first bad value."""
        spec = self.columns[name]
        if spec.image is not None:
            self._image_datatype(name, where, datatype)
            return self._image_feeds(name, spec.image, values, where)[name]
        if spec.text is not None:
            return self.encode_texts(name, self._texts(spec.text, values, where))
        if datatype in INT_RANGES or datatype == "FP16":
            _check_datatype(name, values, where, datatype)
        if spec.dtype == "string":
            return self._categories(name, values, where)
        fast = _fast_column(values, datatype)
        if fast is not None:
            return fast
        if datatype == "BYTES":
            raise RequestError(where, f"column '{name}' is numeric: send a numeric datatype, not BYTES")
        arr = np.empty(len(values), dtype=np.float32)
        for i, v in enumerate(values):
            if v is None:
                arr[i] = np.nan  # missing: the graph imputes it
            elif isinstance(v, bool) or not isinstance(v, int | float):
                raise RequestError(f"{where}[{i}]", f"expected a number for '{name}', got {type(v).__name__}")
            elif isinstance(v, int) and abs(v) > FP32_EXACT_INT:  # before isfinite, which overflows on 10**400
                raise RequestError(f"{where}[{i}]", f"integer {v} cannot be cast to FP32 without loss")
            elif not math.isfinite(v):
                raise RequestError(f"{where}[{i}]", f"non-finite number {v!r} (send null for a missing value)")
            elif abs(v) > FP32_MAX:
                raise RequestError(f"{where}[{i}]", f"{v!r} overflows FP32")
            else:
                arr[i] = v
        return arr.reshape(-1, 1)

    def _categories(self, name: str, values: list[Any], where: str) -> np.ndarray:
        """A categorical column as the graph takes it: strings ("" for missing), trimmed as in training
        (`category_text`); an unseen category refused under the `error` policy."""
        trim = self.categories.trim
        if all(type(v) is str for v in values):  # the common case, at C speed when there is nothing to trim
            out = [category_text(v, trim) for v in values] if trim else values
        else:
            out = [self._category(name, v, f"{where}[{i}]", trim) for i, v in enumerate(values)]
        if self.categories.unseen == "error":
            known = self.levels[name]
            for i, v in enumerate(out):
                if v and v not in known:
                    raise RequestError(f"{where}[{i}]", f"category {v!r} of '{name}' was never seen in training "
                                       f"(data.categories.unseen: error; {len(known)} known)")
        return np.asarray(out, dtype=object).reshape(-1, 1)

    def _category(self, name: str, v: Any, where: str, trim: bool) -> str:
        if v is None:
            return ""
        if isinstance(v, str):
            return category_text(v, trim)
        if isinstance(v, bool):
            raise RequestError(where, "expected a string category, got a boolean")
        if isinstance(v, int) and name in self.numeric_categories:
            return str(v)  # as training wrote the column's numbers
        if isinstance(v, float) and math.isfinite(v) and name in self.numeric_categories:
            return str(int(v)) if v.is_integer() else str(v)
        if isinstance(v, int | float):
            raise RequestError(where, f"expected a string category for '{name}', got the number {v!r} (send it "
                               "as a string if it is one)")
        raise RequestError(where, f"expected a string category, got {type(v).__name__}")


def pack_feeds(feeds: dict[str, np.ndarray], name: str, columns: list[str], others: list[str],
               block_key: str | None = None) -> dict[str, np.ndarray]:
    """Feeds as packed.onnx takes them: the numeric [N, 1] columns as one float32 [N, K] input `name`, columns
    in its order; `others` (string columns) as they are. The decoder's block under `block_key`, when the feeds
    carry one, is that input already (`Predictor._block_feeds`)."""
    block = feeds.get(block_key) if block_key is not None else None
    if block is None:
        block = np.concatenate([feeds[c] for c in columns], axis=1)
    packed = {name: block}
    return packed | {k: feeds[k] for k in others} if others else packed


def join_feeds(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several feeds of the same parts (a block, named columns, an image's pixels...) as one, their rows in
    order: a batch of requests, a log group, chunks of a frame. None given: none."""
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}


def _numeric_dtype(dtype: str) -> bool:
    """A pandas dtype of numbers ("int64", "Float64", "uint8"...), as a training column's schema records it."""
    return dtype.lower().startswith(("int", "uint", "float"))


def _check_datatype(name: str, values: list[Any], where: str, datatype: str) -> None:
    """A V2 tensor's values inside its datatype: INT8 1000 or UINT8 -5 is no INT8 or UINT8, FP16 70000 no FP16."""
    if datatype == "FP16":
        for i, v in enumerate(values):
            if (type(v) is int or (type(v) is float and math.isfinite(v))) and abs(v) > FP16_MAX:
                raise RequestError(f"{where}[{i}]", f"{v!r} is outside FP16 (largest {FP16_MAX:g}) for input "
                                   f"'{name}'")
        return
    low, high = INT_RANGES[datatype]
    for i, v in enumerate(values):
        if v is None:
            continue
        if type(v) is not int:
            raise RequestError(f"{where}[{i}]", f"{datatype} takes integers, got {v!r} for input '{name}'")
        if not low <= v <= high:
            raise RequestError(f"{where}[{i}]", f"{v} is outside {datatype} ({low} to {high}) for input '{name}'")


def imputed_parameters(imputed: list[list[str]] | None) -> dict[str, str]:
    """A V2 answer's `parameters` naming the imputed categories, `{"imputed": "city[0],city[2]"}` (input and
    row; V2 parameters are scalars), or nothing when there were none."""
    if not imputed:
        return {}
    return {"imputed": ",".join(f"{name}[{i}]" for i, names in enumerate(imputed) for name in names)}


def embedding_projection(width: int, dims: int) -> np.ndarray | None:
    """A fixed Gaussian random projection [width, dims] (Johnson-Lindenstrauss: distances, hence drift, are
    kept approximately), or None when the embedding is no wider than `dims`."""
    if width <= dims:
        return None
    rng = np.random.default_rng(PROJECTION_SEED)
    return (rng.standard_normal((width, dims)) / np.sqrt(dims)).astype(np.float32)


def _json_number(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def _naming(exc: RequestError, name: str, scalar: bool) -> RequestError:
    """A V2 tensor's error names it by position (`inputs[k]`): an image's or a text's says which input too, as
    its messages ("not a readable image", "the text is empty") do not."""
    if scalar or f"'{name}'" in exc.message:
        return exc
    return RequestError(exc.field, f"input '{name}': {exc.message}", exc.status)


def _fast_column(values: list[Any], datatype: str | None) -> np.ndarray | None:
    """A numeric column's common case at C speed: all plain numbers that fit FP32. Anything else (None,
    bools, mixed types, a bad value) returns None, and `Predictor.column` checks value by value, which
    also finds the row at fault for the error."""
    if datatype == "BYTES" or not values:
        return None
    plain = _plain_fp32([values], len(values))
    return None if plain is None else plain.reshape(-1, 1)


def _plain_row(values: list[Any]) -> np.ndarray | None:
    """One row's values as a float32 [1, K] array when every one is a float within FP32's range (what
    `_plain_fp32` decides for such a row, with no Python loop over the values); None for anything else (an int,
    a NaN, an infinity, a number past FP32, a string, null), which `_plain_fp32` then decides."""
    if set(map(type, values)) != {float}:
        return None
    total = sum(values)
    if total - total != 0:  # NaN: a NaN or an infinity among them (with them, min and max could miss one)
        return None
    if max(values) > FP32_MAX or min(values) < -FP32_MAX:
        return None
    return np.array([values], dtype=np.float32)


def _fp32_block(lists: list[list[Any]], rows: int) -> np.ndarray | None:
    """Columns of `rows` values each as the float32 [rows, len(lists)] block packed.onnx takes, in C order (what
    ONNX Runtime takes without a copy), when `_plain_fp32` takes every value; None otherwise. A single row of
    floats is checked by `_plain_row`'s C loops first."""
    if rows == 1:
        row = _plain_row(list(chain.from_iterable(lists)))
        if row is not None:
            return row
    plain = _plain_fp32(lists, rows)
    return None if plain is None else plain.T.copy()


def _plain_fp32(lists: list[list[Any]], rows: int) -> np.ndarray | None:
    """Lists of `rows` values each as one float32 [len(lists), rows] array when every value is a plain number
    that fits FP32 (an int within 2**24, a finite float within FP32's range); None otherwise. A few rows (a
    single-row request above all) are checked value by value in Python, where numpy's per-call cost would be
    most of the time; more at C speed. The same checks, the same result."""
    if rows <= SMALL_COLUMN:
        for values in lists:
            for v in values:
                t = type(v)
                if t is float:
                    if not -FP32_MAX <= v <= FP32_MAX:  # also false for NaN
                        return None
                elif t is int:
                    if not -FP32_EXACT_INT <= v <= FP32_EXACT_INT:
                        return None
                else:
                    return None
        return np.array(lists, dtype=np.float32)
    types = {t for values in lists for t in map(type, values)}
    if not types <= {float, int}:
        return None
    try:
        arr = np.asarray(lists, dtype=np.float64)
    except OverflowError:  # an int beyond float64
        return None
    if not (np.isfinite(arr).all() and (np.abs(arr) <= FP32_MAX).all()):
        return None
    if int in types:  # an int past 2**24 is a lossy cast, a float is not held to that (as for a few rows above)
        ints = [v for values in lists for v in values if type(v) is int]
        if max(ints) > FP32_EXACT_INT or min(ints) < -FP32_EXACT_INT:
            return None
    return arr.astype(np.float32)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in data:
        if isinstance(v, list):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out
