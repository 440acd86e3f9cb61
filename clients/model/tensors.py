"""A plaintext tensor archive: safetensors-like, with no pickle and no zip, and exactly one encoding.

Layout::

    u64 little-endian N | N bytes of header (canonical JSON, audit.entry) | data

The header is a JSON object naming each tensor::

    {"<name>": {"data_offsets": [begin, end], "dtype": "F32" | "I32", "shape": [d0, d1, ...]}, ...}

Offsets are relative to the start of the data section. The tensors, in name order (the canonical
header's order), must tile the data section exactly: the first begins at 0, each begins where the
previous ends, the last ends at the end of the file. No gaps, overlaps or trailing bytes; values are
little-endian. One set of tensors therefore has exactly one archive, so two archives can be compared by
their digest.

The parser is strict because it reads a file that has just been decrypted inside the confidential VM:
a malformed archive is refused with a ``TensorArchiveError`` and nothing else, before any array is made.
Writing archives (:mod:`clients.model.tensors_encode`, for training and the demo) is apart, so that the
loader's measured image holds only the reader.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from audit.entry import EntryError, decode_entry

HEADER_LENGTH_BYTES: Final = 8
# A header for a few hundred tensors fits in a few KiB; anything far larger is not an archive we wrote.
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_TENSORS: Final = 256
MAX_RANK: Final = 4
MAX_TENSOR_ELEMENTS: Final = 1 << 26
TENSOR_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}\Z")

# The archive's dtype names (as safetensors spells them) and their little-endian numpy types.
DTYPES: Final[Mapping[str, np.dtype[Any]]] = {"F32": np.dtype("<f4"), "I32": np.dtype("<i4")}
_NATIVE: Final[Mapping[str, np.dtype[Any]]] = {"F32": np.dtype(np.float32), "I32": np.dtype(np.int32)}
_ENTRY_MEMBERS: Final = frozenset({"data_offsets", "dtype", "shape"})

Tensor = npt.NDArray[np.float32] | npt.NDArray[np.int32]


class TensorArchiveError(ValueError):
    """Bytes that are not a well-formed tensor archive, or tensors that cannot be archived."""


def decode_tensors(data: bytes) -> dict[str, Tensor]:
    """The tensors in ``data``, as native-endian arrays that own their memory (not views of ``data``)."""
    if len(data) < HEADER_LENGTH_BYTES:
        raise TensorArchiveError("the archive is truncated: it is shorter than its 8-byte header length")
    (header_length,) = struct.unpack_from("<Q", data, 0)
    if header_length > MAX_HEADER_BYTES:
        raise TensorArchiveError(f"the header claims {header_length} bytes; the limit is {MAX_HEADER_BYTES}")
    data_start = HEADER_LENGTH_BYTES + header_length
    if data_start > len(data):
        raise TensorArchiveError("the archive is truncated inside its header")
    header = _decode_header(data[HEADER_LENGTH_BYTES:data_start])
    entries = [_parse_entry(name, entry) for name, entry in header.items()]
    data_length = len(data) - data_start
    cursor = 0
    for name, _, _, begin, end in entries:
        if begin != cursor:
            problem = "overlaps the previous tensor" if begin < cursor else "leaves a gap before it"
            raise TensorArchiveError(f"tensor {name!r} {problem}: tensors must tile the data in name order")
        if end > data_length:
            raise TensorArchiveError(f"the archive is truncated inside tensor {name!r}")
        cursor = end
    if cursor != data_length:
        raise TensorArchiveError(f"{data_length - cursor} trailing bytes after the last tensor")
    tensors: dict[str, Tensor] = {}
    for name, dtype_name, shape, begin, end in entries:
        count = (end - begin) // DTYPES[dtype_name].itemsize
        array = np.frombuffer(data, dtype=DTYPES[dtype_name], count=count, offset=data_start + begin)
        tensors[name] = array.reshape(shape).astype(_NATIVE[dtype_name], copy=True)
    return tensors


def _decode_header(raw: bytes) -> dict[str, Any]:
    try:
        header = decode_entry(raw)
    except EntryError as exc:
        raise TensorArchiveError(f"the header is not canonical JSON: {exc}") from None
    except (ValueError, RecursionError):
        # json refuses integers of more than 4300 digits with a plain ValueError, and deep nesting
        # with RecursionError: neither is a header we wrote.
        raise TensorArchiveError("the header is not canonical JSON") from None
    if len(header) > MAX_TENSORS:
        raise TensorArchiveError(
            f"an archive holds at most {MAX_TENSORS} tensors; this header names {len(header)}"
        )
    return header


def _parse_entry(name: str, entry: Any) -> tuple[str, str, tuple[int, ...], int, int]:
    _check_name(name)
    if not isinstance(entry, dict) or set(entry) != _ENTRY_MEMBERS:
        raise TensorArchiveError(f"tensor {name!r} must have exactly the members data_offsets, dtype, shape")
    dtype_name = entry["dtype"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise TensorArchiveError(f"tensor {name!r} has dtype {dtype_name!r}; only F32 and I32 are supported")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(dim) for dim in shape):
        raise TensorArchiveError(f"tensor {name!r}: the shape must be a list of integers")
    _check_shape(name, shape)
    offsets = entry["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(item) for item in offsets):
        raise TensorArchiveError(f"tensor {name!r}: data_offsets must be [begin, end]")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise TensorArchiveError(f"tensor {name!r}: data_offsets must satisfy 0 <= begin <= end")
    if end - begin != _elements(shape) * DTYPES[dtype_name].itemsize:
        raise TensorArchiveError(f"tensor {name!r}: its byte length does not match its shape and dtype")
    return name, dtype_name, tuple(shape), begin, end


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not TENSOR_NAME_RE.match(name):
        raise TensorArchiveError(
            f"tensor name {name!r} is not valid: "
            "dot-separated parts of a-z 0-9 _, each starting with a letter"
        )


def _check_shape(name: str, shape: list[int]) -> None:
    if len(shape) > MAX_RANK:
        raise TensorArchiveError(f"tensor {name!r} has rank {len(shape)}; the limit is {MAX_RANK}")
    if any(dim < 0 or dim > MAX_TENSOR_ELEMENTS for dim in shape):
        raise TensorArchiveError(f"tensor {name!r} has a negative or oversized dimension")
    if _elements(shape) > MAX_TENSOR_ELEMENTS:
        raise TensorArchiveError(f"tensor {name!r} has more than {MAX_TENSOR_ELEMENTS} elements")


def _elements(shape: list[int]) -> int:
    # Python integers: a product of huge dimensions cannot overflow into a small, plausible size.
    count = 1
    for dim in shape:
        count *= dim
    return count


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
