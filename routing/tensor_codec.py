"""The one place where torch tensors become wire payloads and back.

A tensor travels as header fields `{"dtype": name, "shape": [..]}` plus its raw bytes in
C order, native little-endian (every platform we run on). Encoding is zero-copy for a
contiguous CPU tensor: the payload is a `memoryview` of the tensor's own memory (through
`tensor.numpy()`; bfloat16 has no numpy dtype, so it is viewed as int16 first). Decoding is
zero-copy when the received buffer is writable and aligned (large messages: the wire
decoder assembles them in their own aligned buffer); otherwise the bytes are copied once
into a fresh tensor (small messages sliced from a read-only receive buffer). The dtype must
be in `ALLOWED_DTYPES` and `prod(shape) * itemsize` must equal the payload length, else
ProtocolError. torch is imported inside the functions, so `import routing` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ProtocolError

if TYPE_CHECKING:
    import torch

__all__ = ["ALLOWED_DTYPES", "MAX_DIMS", "decode_tensor", "encode_tensor"]

# dtype name -> item size in bytes
ALLOWED_DTYPES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
MAX_DIMS = 8


def encode_tensor(tensor: torch.Tensor) -> tuple[dict[str, Any], memoryview]:
    """Header fields and a zero-copy byte view of `tensor` (made contiguous on CPU first).

    The view keeps the tensor's memory alive; do not modify the tensor until it is sent.
    """
    import torch

    name = str(tensor.dtype)[6:]  # "torch.float32" -> "float32"
    if name not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {tensor.dtype} cannot be sent")
    if tensor.dim() > MAX_DIMS:
        raise ValueError(f"at most {MAX_DIMS} dimensions can be sent")
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if not tensor.is_contiguous() or tensor.is_conj() or tensor.is_neg():
        tensor = tensor.resolve_conj().resolve_neg().contiguous()
    shape = list(tensor.shape)
    if tensor.dtype is torch.bfloat16:
        tensor = tensor.view(torch.int16)
    if not tensor.numel():
        return {"dtype": name, "shape": shape}, memoryview(b"")
    view = memoryview(tensor.numpy())  # type: ignore[arg-type]  # ndarray is a buffer
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B") if view.ndim else view.cast("B", (view.itemsize,))
    return {"dtype": name, "shape": shape}, view


def _check_shape(shape: Any) -> list[int]:
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise ProtocolError(f"shape must be a list of at most {MAX_DIMS} sizes")
    for size in shape:
        if type(size) is not int or size < 0:
            raise ProtocolError("shape sizes must be non-negative integers")
    return shape


def decode_tensor(header: Mapping[str, Any], body: bytes | bytearray | memoryview) -> torch.Tensor:
    """The tensor described by `header` ("dtype", "shape") and `body`; ProtocolError if
    they do not match. Shares `body`'s memory when it is writable and aligned."""
    import torch

    name = header.get("dtype")
    if not isinstance(name, str) or name not in ALLOWED_DTYPES:
        raise ProtocolError(f"dtype not allowed: {name!r}")
    shape = _check_shape(header.get("shape"))
    itemsize = ALLOWED_DTYPES[name]
    view = memoryview(body)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if math.prod(shape) * itemsize != len(view):
        raise ProtocolError(
            f"payload of {len(view)} bytes does not hold a {name} tensor of shape {shape}"
        )
    dtype = _DTYPES.get(name) or _load_dtypes()[name]
    if not len(view):
        return torch.empty(shape, dtype=dtype)
    storage_dtype = torch.int16 if dtype is torch.bfloat16 else dtype
    if view.readonly:  # torch tensors are writable: never alias read-only memory
        flat = torch.frombuffer(bytearray(view), dtype=storage_dtype)
    else:
        flat = torch.frombuffer(view, dtype=storage_dtype)
        if flat.data_ptr() % itemsize:  # unaligned: copy into a fresh tensor
            flat = flat.clone()
    tensor = flat.view(shape)
    return tensor if storage_dtype is dtype else tensor.view(dtype)


_DTYPES: dict[str, torch.dtype] = {}


def _load_dtypes() -> dict[str, torch.dtype]:
    import torch

    for name in ALLOWED_DTYPES:
        dtype = getattr(torch, name)
        if isinstance(dtype, torch.dtype):
            _DTYPES[name] = dtype
    return _DTYPES
