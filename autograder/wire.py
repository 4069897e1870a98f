"""What crosses between the grader and a student's sandbox: plain data only, never pickles.

The trusted grader must never run code that the student's process chose, so nothing it
receives is unpickled. A message is one JSON document (length-prefixed on a pipe) in which
a few tagged objects stand for the values checks need:

===================  =========================================================
``{"__nd__": ...}``  a NumPy array (dtype from a fixed list, shape, raw bytes)
``{"__np__": ...}``  a NumPy scalar (kept as a 0-d array of its dtype)
``{"__t__": ...}``   a torch tensor (an ``__nd__`` plus its torch dtype), detached
``{"__tuple__"}``    a tuple (JSON has only lists)
``{"__h__": id}``    a handle on an object that stays in the sandbox
``{"__name__": n}``  a name in the student's namespace (a function, a class)
``{"__float__"}``    ``nan``, ``inf`` or ``-inf``
``{"__str__": b64}`` a string holding surrogate code points, as UTF-8 with
                     ``surrogatepass`` (JSON would join a high and a low
                     surrogate into one character on the way)
===================  =========================================================

Decoding checks every field (types, dtype, size), so a malformed or hostile message
raises :class:`WireError` instead of turning into something unexpected.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import struct

import numpy as np

#: dtypes an array may have on the wire
DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "complex64", "complex128")
#: torch dtypes, by name, and the NumPy dtype each travels as
TORCH_DTYPES = {"float16": "float16", "bfloat16": "float32", "float32": "float32",
                "float64": "float64", "int8": "int8", "int16": "int16", "int32": "int32",
                "int64": "int64", "uint8": "uint8", "bool": "bool",
                "complex64": "complex64", "complex128": "complex128"}
MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


class WireError(ValueError):
    """A message that is not valid plain data (or is too large)."""


class Unencodable(TypeError):
    """A value that is not plain data; the sandbox keeps it and sends a handle instead."""


# ----------------------------------------------------------------------------- encoding

def encode(value, *, handle=None, depth: int = 0):
    """``value`` as JSON-ready data. ``handle(obj) -> int`` stores what is not plain data."""
    if depth > MAX_DEPTH:
        raise Unencodable("nested too deeply")
    if isinstance(value, str) and _SURROGATE.search(value):
        return {"__str__": base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.ndarray):
        return _encode_array(value)
    if isinstance(value, np.generic):
        return {"__np__": _encode_array(np.asarray(value))}
    if type(value).__module__ == "torch" and type(value).__name__ in ("Tensor", "Parameter"):
        return _encode_tensor(value)
    if isinstance(value, (list, tuple)):
        items = [encode(v, handle=handle, depth=depth + 1) for v in value]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: encode(v, handle=handle, depth=depth + 1) for k, v in value.items()}}
    if handle is None:
        raise Unencodable(f"a {type(value).__name__} is not plain data")
    ref = handle(value)
    return ref if isinstance(ref, dict) else {"__h__": int(ref), "type": type(value).__name__[:80]}


def _encode_array(arr: np.ndarray) -> dict:
    if arr.dtype.name not in DTYPES:
        raise Unencodable(f"arrays of dtype {arr.dtype} cannot be sent")
    arr = arr if arr.flags.c_contiguous else arr.copy(order="C")
    return {"__nd__": arr.dtype.name, "shape": list(arr.shape),
            "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def _encode_tensor(t) -> dict:
    import torch

    t = t.detach()
    name = str(t.dtype).removeprefix("torch.")
    if name not in TORCH_DTYPES:
        raise Unencodable(f"tensors of dtype {t.dtype} cannot be sent")
    cpu = t.to("cpu")
    if name == "bfloat16":
        cpu = cpu.to(torch.float32)
    return {"__t__": _encode_array(cpu.resolve_conj().resolve_neg().numpy()), "dtype": name}


# ----------------------------------------------------------------------------- decoding

def decode(data, *, handle=None, name=None, depth: int = 0):
    """Rebuild a value from :func:`encode`'s output, checking every field.

    ``handle(id, type)`` and ``name(str)`` build what handles and names stand for on this side.
    """
    if depth > MAX_DEPTH:
        raise WireError("message nested too deeply")
    if data is None or isinstance(data, (bool, int, str)):
        return data
    if isinstance(data, float):
        return data
    if isinstance(data, list):
        return [decode(v, handle=handle, name=name, depth=depth + 1) for v in data]
    if not isinstance(data, dict) or len(data) == 0:
        raise WireError(f"unexpected {type(data).__name__} in message")
    if "__nd__" in data:
        return _decode_array(data)
    if "__np__" in data:
        arr = _decode_array(data["__np__"])
        if arr.ndim != 0:
            raise WireError("a NumPy scalar must be 0-d")
        return arr[()]
    if "__t__" in data:
        return _decode_tensor(data)
    if "__tuple__" in data:
        if not isinstance(data["__tuple__"], list):
            raise WireError("bad tuple")
        return tuple(decode(v, handle=handle, name=name, depth=depth + 1) for v in data["__tuple__"])
    if "__dict__" in data:
        items = data["__dict__"]
        if not isinstance(items, dict):
            raise WireError("bad dict")
        return {str(k): decode(v, handle=handle, name=name, depth=depth + 1) for k, v in items.items()}
    if "__float__" in data:
        text = data["__float__"]
        if text not in ("nan", "inf", "-inf"):
            raise WireError(f"bad float {text!r}")
        return float(text)
    if "__h__" in data:
        if handle is None or not isinstance(data["__h__"], int):
            raise WireError("unexpected handle")
        return handle(data["__h__"], str(data.get("type", "object"))[:80])
    if "__str__" in data:
        try:
            return base64.b64decode(str(data["__str__"]), validate=True).decode("utf-8", "surrogatepass")
        except ValueError as exc:
            raise WireError("bad string") from exc
    if "__name__" in data:
        if name is None or not isinstance(data["__name__"], str) or not data["__name__"].isidentifier():
            raise WireError("unexpected name")
        return name(data["__name__"])
    raise WireError(f"unknown object with keys {sorted(data)[:5]}")


def _decode_array(data: dict) -> np.ndarray:
    dtype, shape, raw = data.get("__nd__"), data.get("shape"), data.get("data")
    if dtype not in DTYPES or not isinstance(shape, list) or not isinstance(raw, str):
        raise WireError("bad array")
    if not all(isinstance(s, int) and s >= 0 for s in shape) or len(shape) > 16:
        raise WireError("bad array shape")
    try:
        buf = base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise WireError("bad array data") from exc
    dt = np.dtype(dtype)
    if len(buf) != math.prod(shape) * dt.itemsize:
        raise WireError("array data does not match its shape")
    return np.frombuffer(buf, dtype=dt).reshape(shape).copy()


def _decode_tensor(data: dict):
    import torch

    name = data.get("dtype")
    if name not in TORCH_DTYPES:
        raise WireError("bad tensor dtype")
    arr = _decode_array(data["__t__"])
    t = torch.from_numpy(arr)
    return t.to(getattr(torch, name)) if name == "bfloat16" else t


# ----------------------------------------------------------------------------- framing

HEADER = struct.Struct("!Q")


def send(fd: int, message: dict) -> None:
    """Write one length-prefixed JSON message to file descriptor ``fd``."""
    body = json.dumps(message, allow_nan=True).encode("utf-8")
    view = memoryview(HEADER.pack(len(body)) + body)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_exactly(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def parse(body: bytes) -> dict:
    """One message body -> dict, or :class:`WireError`."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"not a JSON message: {exc}") from None
    if not isinstance(message, dict):
        raise WireError("a message must be a JSON object")
    return message
