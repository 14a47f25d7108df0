"""A fixed-capacity ring buffer of samples on a NumPy array: vectorised appends, no per-sample Python."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike


class RingBuffer:
    """The newest ``capacity`` samples of a 1-D stream; older samples are overwritten."""

    def __init__(self, capacity: int, dtype: DTypeLike = np.float32) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.dtype = np.dtype(dtype)
        self._data: np.ndarray[Any, np.dtype[Any]] = np.zeros(capacity, dtype=self.dtype)
        self._head = 0  # index the next sample is written to
        self._size = 0
        self._total = 0

    def __len__(self) -> int:
        """How many samples the buffer holds now (at most ``capacity``)."""
        return self._size

    @property
    def total(self) -> int:
        """How many samples were ever appended, including those since overwritten or cleared."""
        return self._total

    def append(self, values: np.ndarray[Any, Any]) -> None:
        """Append a 1-D array of samples, oldest first; when longer than capacity, the newest are kept.

        Raises ``ValueError`` for an array that is not 1-D or cannot be cast to the buffer's dtype.
        """
        array = np.asarray(values)
        if array.ndim != 1:
            raise ValueError(f"samples must be a 1-D array, got shape {array.shape}")
        if not np.can_cast(array.dtype, self.dtype, casting="same_kind"):
            raise ValueError(f"cannot store {array.dtype} samples in a {self.dtype} buffer")
        n = array.shape[0]
        if n == 0:
            return
        cap = self.capacity
        if n >= cap:
            self._data[:] = array[n - cap :]
            self._head = 0
        else:
            end = self._head + n
            if end <= cap:
                self._data[self._head : end] = array
            else:
                first = cap - self._head
                self._data[self._head :] = array[:first]
                self._data[: n - first] = array[first:]
            self._head = end % cap
        self._size = min(self._size + n, cap)
        self._total += n

    def latest(self, n: int) -> np.ndarray[Any, Any]:
        """A copy of the newest ``n`` samples, oldest first; ``ValueError`` if fewer are held."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if n > self._size:
            raise ValueError(f"asked for the latest {n} samples but the buffer holds {self._size}")
        start = (self._head - n) % self.capacity
        if start + n <= self.capacity:
            return self._data[start : start + n].copy()
        return np.concatenate((self._data[start:], self._data[: self._head]))

    def clear(self) -> None:
        """Forget the held samples; ``total`` keeps counting."""
        self._head = 0
        self._size = 0
