"""SHA-256 digests of request and response tensors, for audit records (what went in, what came out)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medserve.values.types import Tensor


def tensors_digest(tensors: Iterable[Tensor]) -> str:
    """One digest over each tensor's name, datatype, shape and values (BYTES elements length-prefixed)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tensor.name}\0{tensor.datatype}\0{list(tensor.shape)}\0".encode())
        data = tensor.data
        if isinstance(data, np.ndarray) and data.dtype != object:
            digest.update(np.ascontiguousarray(data).data)
        else:
            for item in np.asarray(data, dtype=object).reshape(-1):
                value = item if isinstance(item, bytes) else str(item).encode()
                digest.update(len(value).to_bytes(8, "little"))
                digest.update(value)
    return digest.hexdigest()


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
