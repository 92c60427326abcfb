"""The idx file format of MNIST, Fashion-MNIST, KMNIST and EMNIST, plain or
gzipped, read with every check a truncated or foreign file fails."""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np
import torch
from torch import Tensor

# idx type codes (third byte of the magic number) -> big-endian numpy dtype.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
           0x0E: ">f8"}


class IdxFormatError(ValueError):
    """An idx file that is damaged, truncated or not an idx file at all."""


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """The raw bytes of an idx file, decompressed when its name ends in
    ``.gz``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if not path.endswith(".gz"):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise IdxFormatError(f"'{path}' is not a readable gzip file ({e}); "
                             "replace it with an intact copy.") from e


def read_idx(path: str | os.PathLike) -> Tensor:
    r"""Reads an idx file (``.gz`` or plain) as a tensor of its stored shape.

    The magic number must name a known type and a dimension count, and the
    file must hold exactly the bytes its header announces; anything else is
    an :class:`IdxFormatError` naming the file (never a partial load).
    """
    data = read_idx_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IdxFormatError(f"'{os.fspath(path)}' is not an idx file (bad magic "
                             f"number {data[:4].hex() or 'of an empty file'}); "
                             "replace it with the original file.")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0:
        raise IdxFormatError(f"'{os.fspath(path)}': the idx header announces 0 "
                             "dimensions; replace it with the original file.")
    if len(data) < header:
        raise IdxFormatError(f"'{os.fspath(path)}': the idx header announces "
                             f"{ndim} dimensions but the file ends inside it.")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise IdxFormatError(f"'{os.fspath(path)}' is {what}: {len(data)} bytes "
                             f"for shape {dims} ({expected} expected); replace "
                             "it with an intact copy.")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def find_idx_file(folder: str, name: str) -> str | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first)."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None
