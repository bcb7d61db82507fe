"""The Open Inference Protocol (KServe / Triton "V2") over REST: requests in, responses out, numpy between.

JSON bodies are parsed with orjson and ``data`` becomes a numpy array in one C-level conversion (flat or
nested lists, no per-element Python loop); the binary tensor extension (Triton's ``binary_tensor_data``)
takes raw little-endian tensors after a JSON header whose length is in ``Inference-Header-Content-Length``
and reads them with ``numpy.frombuffer`` without a copy. Every problem raises ``ProtocolError`` with a
message that names the input, output or field, answered as HTTP 400 ``{"error": ...}``.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

#: V2 datatype -> numpy dtype (little-endian on the wire). BYTES are numpy object arrays of ``str``.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

#: ONNX Runtime's type strings -> V2 datatypes.
ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# Which numpy kinds a JSON ``data`` list may parse to for each datatype family.
_FLOAT_KINDS = frozenset("fiu")
_INT_KINDS = frozenset("iu")
_BOOL_KINDS = frozenset("b")
_JSON = "application/json"
_BINARY = "application/octet-stream"
MAX_RANK = 16


class ProtocolError(Exception):
    """A request the protocol or the model cannot take; answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An input or output of a model as V2 metadata shows it (``-1`` for a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(slots=True)
class RequestTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray[Any, Any]


@dataclass(slots=True)
class InferRequest:
    """A parsed inference request, not yet checked against a model."""

    id: str | None
    inputs: list[RequestTensor]
    outputs: list[tuple[str, bool | None]] | None  # (name, binary_data) asked for; None: every output
    binary_output: bool  # request-level ``binary_data_output``
    route_key: str | None
    parameters: Mapping[str, Any] | None


#: No request tensor can be this large within the body limit; past it numpy itself would fail.
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**31
#: BYTES elements are decoded one by one in Python (on the event loop): keep one request's share small.
MAX_BYTES_ELEMENTS = 1 << 16


def _shape(where: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_RANK:
        raise ProtocolError(f"{where}: 'shape' must be a list of at most {MAX_RANK} dimensions")
    for dim in raw:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ProtocolError(f"{where}: 'shape' must hold non-negative integers, not {dim!r}")
        if dim > MAX_DIM:
            raise ProtocolError(f"{where}: 'shape' dimension {dim} is larger than {MAX_DIM}")
    if math.prod(d for d in raw if d) > MAX_ELEMENTS:
        raise ProtocolError(f"{where}: 'shape' {raw} holds more than {MAX_ELEMENTS} elements")
    return tuple(raw)


def _count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _json_array(where: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray[Any, Any]:
    """``data`` (flat or nested list) as an array of ``shape`` and ``datatype``; one C-level conversion."""
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: 'data' must be a list")
    count = _count(shape)
    dtype = DTYPES[datatype]
    if datatype == "BYTES":
        if count > MAX_BYTES_ELEMENTS or len(data) > MAX_BYTES_ELEMENTS:
            raise ProtocolError(f"{where}: a BYTES tensor holds at most {MAX_BYTES_ELEMENTS} elements")
        return _bytes_array(where, shape, data)
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"{where}: 'data' is not a regular array (rows of different lengths)") from exc
    if arr.size != count:
        raise ProtocolError(f"{where}: shape {list(shape)} needs {count} values, 'data' holds {arr.size}")
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    kind = arr.dtype.kind
    allowed = _BOOL_KINDS if datatype == "BOOL" else _FLOAT_KINDS if datatype.startswith("FP") else _INT_KINDS
    if kind not in allowed:
        if kind in "USO":
            raise ProtocolError(f"{where}: 'data' holds non-numeric values (strings, null or objects)")
        what = {"b": "booleans", "f": "non-integer numbers", "i": "numbers", "u": "numbers"}.get(kind, kind)
        raise ProtocolError(f"{where}: 'data' holds {what}, which are not {datatype}")
    if kind in "iu" and dtype.kind in "iu" and arr.dtype != dtype:
        info = np.iinfo(dtype)
        low, high = arr.min(), arr.max()
        if low < info.min or high > info.max:
            raise ProtocolError(f"{where}: 'data' holds values outside the range of {datatype}")
    return arr.reshape(shape).astype(dtype, copy=False)


def _bytes_array(where: str, shape: tuple[int, ...], data: list[Any]) -> np.ndarray[Any, Any]:
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:  # flatten nested lists of strings (BYTES tensors are rare and small)
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if not isinstance(item, str):
                raise ProtocolError(f"{where}: BYTES 'data' must hold strings")
            flat.append(item)
        else:
            stack.pop()
    if len(flat) != _count(shape):
        raise ProtocolError(f"{where}: shape {list(shape)} needs {_count(shape)} values, 'data' holds {len(flat)}")
    arr = np.empty(len(flat), dtype=object)
    arr[:] = flat
    return arr.reshape(shape)


def _binary_array(
    where: str, datatype: str, shape: tuple[int, ...], body: bytes, offset: int, size: int
) -> np.ndarray[Any, Any]:
    count = _count(shape)
    if datatype == "BYTES":
        if count > MAX_BYTES_ELEMENTS:
            raise ProtocolError(f"{where}: a BYTES tensor holds at most {MAX_BYTES_ELEMENTS} elements")
        items: list[str] = []
        pos, end = offset, offset + size
        while pos < end:
            if len(items) >= count:
                raise ProtocolError(f"{where}: shape {list(shape)} needs {count} values, binary data holds more")
            if pos + 4 > end:
                raise ProtocolError(f"{where}: BYTES binary data is truncated")
            (length,) = struct.unpack_from("<I", body, pos)
            pos += 4
            if pos + length > end:
                raise ProtocolError(f"{where}: BYTES binary data is truncated")
            items.append(body[pos : pos + length].decode("utf-8", errors="replace"))
            pos += length
        if len(items) != count:
            raise ProtocolError(f"{where}: shape {list(shape)} needs {count} values, binary data holds {len(items)}")
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = DTYPES[datatype]
    if size != count * dtype.itemsize:
        raise ProtocolError(
            f"{where}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"binary_data_size is {size}"
        )
    return np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)


def parse_infer(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse a V2 inference request: JSON, or a JSON header of ``header_length`` bytes and binary tensors."""
    if header_length is None:
        header_length = len(body)
    elif header_length < 0 or header_length > len(body):
        raise ProtocolError(f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes")
    try:
        request = orjson.loads(body[:header_length] if header_length != len(body) else body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("the request must have a non-empty 'inputs' list")
    rid = request.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError("'id' must be a string")
    params = request.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    offset = header_length
    inputs: list[RequestTensor] = []
    seen: set[str] = set()
    for index, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise ProtocolError(f"inputs[{index}] must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"inputs[{index}] has no 'name'")
        where = f"input {name!r}"
        if name in seen:
            raise ProtocolError(f"{where} is given twice")
        seen.add(name)
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in DTYPES:
            raise ProtocolError(f"{where}: unknown datatype {datatype!r} (V2 datatypes: {', '.join(DTYPES)})")
        shape = _shape(where, item.get("shape"))
        iparams = item.get("parameters")
        size = iparams.get("binary_data_size") if isinstance(iparams, dict) else None
        if size is not None:
            if "data" in item:
                raise ProtocolError(f"{where} has both 'data' and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
            if offset + size > len(body):
                raise ProtocolError(f"{where}: binary_data_size {size} runs past the end of the body")
            array = _binary_array(where, datatype, shape, body, offset, size)
            offset += size
        elif "data" in item:
            array = _json_array(where, datatype, shape, item["data"])
        else:
            raise ProtocolError(f"{where} has no 'data' (nor binary_data_size)")
        inputs.append(RequestTensor(name, datatype, shape, array))
    if offset != len(body):
        raise ProtocolError(f"the body has {len(body) - offset} bytes after the last binary input")
    outputs = _requested_outputs(request.get("outputs"))
    binary_output = False
    route_key = None
    if params:
        flag = params.get("binary_data_output", False)
        if not isinstance(flag, bool):
            raise ProtocolError("parameters.binary_data_output must be true or false")
        binary_output = flag
        key = params.get("route_key")
        if key is not None and not isinstance(key, str):
            raise ProtocolError("parameters.route_key must be a string")
        route_key = key
    return InferRequest(rid, inputs, outputs, binary_output, route_key, params)


def _requested_outputs(raw: Any) -> list[tuple[str, bool | None]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ProtocolError("'outputs' must be a list")
    out: list[tuple[str, bool | None]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"outputs[{index}] must be an object with a 'name'")
        params = item.get("parameters")
        binary = params.get("binary_data") if isinstance(params, dict) else None
        if binary is not None and not isinstance(binary, bool):
            raise ProtocolError(f"output {item['name']!r}: parameters.binary_data must be true or false")
        out.append((item["name"], binary))
    return out


def bind_inputs(
    request: InferRequest, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], batchable: bool
) -> tuple[dict[str, np.ndarray[Any, Any]], int]:
    """Check a request against a model's signature; return its feeds and its row count.

    Rows are the first dimension when the model batches along it, else 1.
    """
    given = {t.name: t for t in request.inputs}
    feeds: dict[str, np.ndarray[Any, Any]] = {}
    rows = -1
    for spec in inputs:
        tensor = given.get(spec.name)
        if tensor is None:
            raise ProtocolError(f"missing input {spec.name!r} (the model's inputs: {_names(inputs)})")
        if tensor.datatype != spec.datatype:
            raise ProtocolError(
                f"input {spec.name!r} has datatype {tensor.datatype}; the model expects {spec.datatype}"
            )
        if len(tensor.shape) != len(spec.shape) or any(
            want >= 0 and got != want for got, want in zip(tensor.shape, spec.shape, strict=True)
        ):
            raise ProtocolError(
                f"input {spec.name!r} has shape {list(tensor.shape)}; the model expects {list(spec.shape)} "
                "(-1: any size)"
            )
        if batchable:
            if rows >= 0 and tensor.shape[0] != rows:
                raise ProtocolError(
                    f"input {spec.name!r} has {tensor.shape[0]} rows, other inputs have {rows}: they must agree"
                )
            rows = tensor.shape[0]
        feeds[spec.name] = tensor.array
    if len(given) != len(feeds):
        unknown = sorted(set(given) - set(feeds))
        raise ProtocolError(f"unknown input {unknown[0]!r} (the model's inputs: {_names(inputs)})")
    if request.outputs is not None:
        known = {o.name for o in outputs}
        for name, _ in request.outputs:
            if name not in known:
                raise ProtocolError(f"unknown output {name!r} (the model's outputs: {_names(outputs)})")
    if batchable and rows == 0:
        raise ProtocolError("the request has 0 rows")
    return feeds, rows if batchable else 1


def _names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(repr(s.name) for s in specs)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Sequence[TensorSpec],
    arrays: Sequence[np.ndarray[Any, Any]],
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A V2 response body and its headers (binary tensors when asked for, JSON otherwise)."""
    wanted: list[tuple[int, bool]]
    if request.outputs is None:
        wanted = [(i, request.binary_output) for i in range(len(outputs))]
    else:
        index = {o.name: i for i, o in enumerate(outputs)}
        wanted = [(index[name], request.binary_output if flag is None else flag) for name, flag in request.outputs]
    items: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for i, binary in wanted:
        spec, arr = outputs[i], arrays[i]
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(arr.shape)}
        if binary:
            blob = _to_bytes(spec.datatype, arr)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif spec.datatype == "BYTES":
            entry["data"] = [_text(x) for x in arr.ravel().tolist()]
        else:
            flat = arr.ravel()
            entry["data"] = flat if flat.dtype.isnative else flat.astype(flat.dtype.newbyteorder("="))
        items.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": items}
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, [(b"content-type", _JSON.encode())]
    return header + b"".join(blobs), [
        (b"content-type", _BINARY.encode()),
        (b"inference-header-content-length", str(len(header)).encode()),
    ]


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _to_bytes(datatype: str, arr: np.ndarray[Any, Any]) -> bytes:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for x in arr.ravel().tolist():
            raw = x if isinstance(x, bytes) else str(x).encode("utf-8")
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A ``Content-Encoding: gzip`` or ``deflate`` body (as Triton's clients send it), at most ``limit`` bytes."""
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)")
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding} body cannot be decompressed: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise ProtocolError(f"the decompressed request body is larger than the limit of {limit} bytes")
    if not inflater.eof:
        raise ProtocolError(f"the {encoding} body is truncated")
    return out


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
