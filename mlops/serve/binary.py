"""The V2 binary tensor data extension (Triton's `binary_tensor_data`, what `tritonclient` sends and expects by
default), and the tensors of the V2 gRPC protocol, as the JSON `inputs` the V2 JSON path takes.

A request body is a JSON header of `Inference-Header-Content-Length` bytes followed by raw tensors: each input
whose `parameters` hold `binary_data_size: N` takes the next N bytes, little-endian, row-major; a BYTES tensor
is its elements each prefixed by its length (4 bytes, little-endian). Decoded here into the JSON path's `data`
lists, so that everything after (validation against the bundle's inputs, the log, metrics, shadow and A/B) is
the JSON path's, with the same errors. A BYTES element is text (UTF-8) except for an image input, whose element
is the encoded file itself (no base64: that is JSON's way of carrying bytes). Floats have no null: a missing
number cannot travel as a binary FP tensor (NaN is refused as in JSON, and by the stock runtime); send that
column as JSON.

An answer's outputs go back binary when the request asks (`parameters.binary_data_output: true`, or an output's
`parameters.binary_data: true`): the JSON header names each binary output's `binary_data_size`, the raw bytes
follow. A request naming `outputs` gets those outputs only, as the protocol says (and the stock runtime does).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from mlops.package.predictor import RequestError, parse_json_body, parse_v2_body

HEADER_LENGTH = "inference-header-content-length"  # the request's and the answer's header (lower case)
# each V2 numeric datatype's little-endian numpy dtype
DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(code) for name, code in (
    ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"), ("UINT64", "<u8"), ("INT8", "i1"),
    ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"), ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"))}
# the same as struct codes: a few values unpack several times faster with struct than through numpy
STRUCT_CODES = {"BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b", "INT16": "h",
                "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d"}
SMALL_TENSOR = 64  # up to this many values a tensor is unpacked with struct
_PREFIX = 4  # bytes of a BYTES element's length


def parse_request(raw: bytes, header_length: str | None, images: frozenset[str]) -> Any:
    """A V2 infer body: plain JSON without `header_length`, else the binary extension's header and tensors, the
    binary inputs decoded into `data` lists (see the module's docstring). `images`: the inputs whose BYTES stay
    bytes."""
    if header_length is None:
        return parse_v2_body(raw)
    if not header_length.isdigit() or int(header_length) > len(raw):
        raise RequestError(HEADER_LENGTH, f"must be the byte length of the JSON header at the start of the "
                           f"body ({len(raw)} bytes), got {header_length[:40]!r}")
    size = int(header_length)
    body = parse_json_body(raw[:size])
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        return body  # the JSON path names what is wrong with it
    blob = memoryview(raw)[size:]
    length = len(blob)
    offset = 0
    for k, t in enumerate(body["inputs"]):
        parameters = t.get("parameters") if type(t) is dict else None
        n = parameters.get("binary_data_size") if type(parameters) is dict else None
        if n is None:
            continue
        where = f"inputs[{k}]"
        if type(n) is not int or n < 0:
            raise RequestError(f"{where}.parameters.binary_data_size", "must be a number of bytes (an integer >= 0)")
        if "data" in t:
            raise RequestError(f"{where}.data", "give the tensor's data in JSON or as binary_data_size bytes after "
                               "the header, not both")
        name = _name(t)
        if offset + n > length:
            raise RequestError(f"{where}.parameters.binary_data_size",
                               f"input '{name}' claims {n} bytes at offset {offset}, but the body has "
                               f"{length} bytes after the JSON header")
        t["data"] = tensor_data(t.get("datatype"), t.get("shape"), blob[offset:offset + n], where, name,
                                name in images)
        offset += n
    if offset != length:
        raise RequestError("body", f"{len(blob) - offset} bytes after the tensors that no input's "
                           "binary_data_size claims")
    return body


def tensor_data(datatype: Any, shape: Any, raw: bytes | memoryview, where: str, name: str, keep_bytes: bool
                ) -> list[Any]:
    """One raw tensor as the JSON path's flat `data` list: numbers as Python numbers, BYTES as text (or bytes
    when `keep_bytes`). Its size must be what its datatype and shape make."""
    if datatype == "BYTES":
        elements = bytes_elements(raw, where, name)
        count = _count(shape)
        if count is not None and len(elements) != count:
            raise RequestError(f"{where}.shape", f"input '{name}': shape {shape} needs {count} elements, the "
                               f"binary data holds {len(elements)}")
        return elements if keep_bytes else [_text(e, f"{where}.data[{i}]", name) for i, e in enumerate(elements)]
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise RequestError(f"{where}.datatype", f"input '{name}': unsupported datatype {datatype!r} for binary "
                           f"data (expected one of {', '.join([*DTYPES, 'BYTES'])})")
    count = _count(shape)
    if count is None:
        raise RequestError(f"{where}.shape", f"input '{name}': must be a list of non-negative integers")
    if len(raw) != count * dtype.itemsize:
        raise RequestError(f"{where}.parameters.binary_data_size",
                           f"input '{name}': {datatype} of shape {shape} is {count * dtype.itemsize} bytes, "
                           f"got {len(raw)}")
    if count <= SMALL_TENSOR:
        return list(struct.unpack(f"<{count}{STRUCT_CODES[datatype]}", raw))
    return np.frombuffer(raw, dtype=dtype).tolist()


def bytes_elements(raw: bytes | memoryview, where: str, name: str) -> list[bytes]:
    """A serialized BYTES tensor's elements: each a 4-byte little-endian length, then that many bytes."""
    view = memoryview(raw)
    out: list[bytes] = []
    at = 0
    while at < len(view):
        if at + _PREFIX > len(view):
            raise RequestError(f"{where}.data", f"input '{name}': element {len(out)} has a truncated length "
                               f"prefix ({len(view) - at} of 4 bytes)")
        size = int.from_bytes(view[at:at + _PREFIX], "little")
        at += _PREFIX
        if at + size > len(view):
            raise RequestError(f"{where}.data", f"input '{name}': element {len(out)} claims {size} bytes, "
                               f"{len(view) - at} are left")
        out.append(bytes(view[at:at + size]))
        at += size
    return out


def serialize_bytes(values: np.ndarray) -> bytes:
    """BYTES elements as the extension carries them (str as UTF-8), row-major."""
    parts: list[bytes] = []
    for v in values.reshape(-1).tolist():
        b = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts += [len(b).to_bytes(_PREFIX, "little"), b]
    return b"".join(parts)


def v2_outputs(outputs: dict[str, np.ndarray], wanted: list[str], binary: set[str]
               ) -> tuple[list[dict[str, Any]], bytes]:
    """A V2 answer's `wanted` outputs and the raw bytes that follow its JSON header: the `binary` ones carry
    `parameters.binary_data_size` instead of `data`. Numbers are FP32, strings BYTES."""
    out: list[dict[str, Any]] = []
    tail: list[bytes] = []
    for name in wanted:
        values = outputs[name]
        datatype = "BYTES" if values.dtype == object else "FP32"
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(values.shape)}
        if name in binary:
            raw = (serialize_bytes(values) if datatype == "BYTES"
                   else np.ascontiguousarray(values, dtype=DTYPES["FP32"]).tobytes())
            tensor["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            tensor["data"] = values.reshape(-1).tolist()
        out.append(tensor)
    return out, b"".join(tail)


def requested_outputs(body: dict[str, Any], names: list[str]) -> tuple[list[str], set[str]]:
    """(the outputs to answer, in the request's order or the model's, and those of them to send binary)."""
    parameters = body.get("parameters")
    binary_all = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    requested = body.get("outputs")
    if requested is None:
        return names, set(names) if binary_all else set()
    if not isinstance(requested, list):
        raise RequestError("outputs", "must be a list of {\"name\": ...} objects")
    wanted: list[str] = []
    binary: set[str] = set()
    for k, o in enumerate(requested):
        name = o.get("name") if isinstance(o, dict) else None
        if name not in names:
            raise RequestError(f"outputs[{k}].name", f"unknown output {name!r} (expected: {', '.join(names)})")
        if name in wanted:
            raise RequestError(f"outputs[{k}].name", f"output '{name}' requested twice")
        wanted.append(name)
        o_parameters = o.get("parameters")
        flag = o_parameters.get("binary_data") if isinstance(o_parameters, dict) else None
        if flag is True or (flag is None and binary_all):
            binary.add(name)
    return wanted, binary


def _count(shape: Any) -> int | None:
    if type(shape) is not list:
        return None
    for d in shape:
        if type(d) is not int or d < 0:  # type(): a bool is no dimension
            return None
    return math.prod(shape)


def _text(raw: bytes, where: str, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(where, f"input '{name}': BYTES must be UTF-8 text") from None


def _name(t: dict[str, Any]) -> str:
    name = t.get("name")
    return name if isinstance(name, str) else "?"
