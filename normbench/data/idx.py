"""Reader for the MNIST idx format (uint8 labels and images), plain or gzip-compressed."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from normbench.errors import UserError

LABELS_MAGIC = 0x00000801  # uint8, 1-D
IMAGES_MAGIC = 0x00000803  # uint8, 3-D
NDIM = {LABELS_MAGIC: 1, IMAGES_MAGIC: 3}
GZIP_MAGIC = b"\x1f\x8b"


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(
        f"{path}: {why}: the file is truncated or corrupt, reinstall or re-download it"
    )


def read_bytes(path: str | Path) -> bytes:
    """The file's contents, gunzipped when it is gzip-compressed (by content, not by name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file: check the data path") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror}): check its permissions") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise _corrupt(path, f"bad gzip data ({e})") from None


def read_idx(path: str | Path, ndim: int | None = None) -> torch.Tensor:
    """A uint8 tensor with the file's dims; `ndim` (1 labels, 3 images) is checked when given."""
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4:
        raise _corrupt(path, f"only {len(data)} bytes, no idx header")
    magic = int.from_bytes(data[:4], "big")
    if magic not in NDIM:
        raise _corrupt(path, f"magic number {magic:#010x} is not an idx uint8 labels/images file")
    dims_n = NDIM[magic]
    if ndim is not None and dims_n != ndim:
        raise _corrupt(path, f"holds a {dims_n}-D array where a {ndim}-D one was expected")
    header = 4 + 4 * dims_n
    if len(data) < header:
        raise _corrupt(path, f"header cut short ({len(data)} of {header} bytes)")
    dims = [int(d) for d in np.frombuffer(data, dtype=">i4", count=dims_n, offset=4)]
    if any(d < 0 for d in dims):
        raise _corrupt(path, f"negative dimension in {dims}")
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(data) - header
    if found != expected:
        raise _corrupt(path, f"dims {dims} need {expected} data bytes, found {found}")
    array = np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)
    return torch.from_numpy(array.copy())  # copy: frombuffer on bytes is read-only
