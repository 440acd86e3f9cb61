"""Writing tensor archives (the format: :mod:`clients.model.tensors`): for training and the demo.

Apart from the reader, which is what the loader runs, so that its measured image holds no writer.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from audit.entry import canonical_bytes
from clients.model.tensors import (
    _NATIVE,
    DTYPES,
    MAX_HEADER_BYTES,
    MAX_TENSORS,
    Tensor,
    TensorArchiveError,
    _check_name,
    _check_shape,
    decode_tensors,
)


def encode_tensors(tensors: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """The archive of ``tensors`` (float32 or int32 arrays; other dtypes are refused, not converted)."""
    if len(tensors) > MAX_TENSORS:
        raise TensorArchiveError(f"an archive holds at most {MAX_TENSORS} tensors; got {len(tensors)}")
    header: dict[str, Any] = {}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        array = tensors[name]
        _check_name(name)
        dtype_name = _dtype_name(name, array)
        shape = [int(dim) for dim in array.shape]
        _check_shape(name, shape)
        raw = np.ascontiguousarray(array, dtype=DTYPES[dtype_name]).tobytes()
        header[name] = {"data_offsets": [offset, offset + len(raw)], "dtype": dtype_name, "shape": shape}
        chunks.append(raw)
        offset += len(raw)
    header_bytes = canonical_bytes(header)
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise TensorArchiveError(
            f"the header would be {len(header_bytes)} bytes; the limit is {MAX_HEADER_BYTES}"
        )
    return struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(chunks)


def save_tensors(path: Path, tensors: Mapping[str, npt.NDArray[Any]]) -> None:
    path.write_bytes(encode_tensors(tensors))


def load_tensors(path: Path) -> dict[str, Tensor]:
    return decode_tensors(path.read_bytes())


def _dtype_name(name: str, array: npt.NDArray[Any]) -> str:
    for dtype_name, native in _NATIVE.items():
        if array.dtype == native:
            return dtype_name
    raise TensorArchiveError(f"tensor {name!r} is {array.dtype}; only float32 and int32 can be archived")
