"""The shared header of an audit journal: a page of ``journal.lock``, memory-mapped by every appender.

It holds a generation counter, the newest file's number and size, and the chain head, so that an
append need not read the head back from the files each time. An appender makes the generation odd
before writing and even after; a process that finds it unchanged trusts its cache, one that finds it
even but changed trusts the header, and one that finds it odd (an appender died mid-write) reads the
files instead.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class JournalState:
    """Where appends go and what they continue: the newest file, its size and the chain head."""

    number: int  # the newest file
    size: int  # its size in bytes
    seq: int  # the chain head
    hash: str
    generation: int = 0


class SharedHeader:
    """The header in the lock file: magic, generation, newest file number and size, head."""

    _LAYOUT: Final = struct.Struct("<8sQQQQ64s")
    _MAGIC: Final = b"MSAUDIT1"
    _SIZE: Final = 4096

    def __init__(self, fd: int) -> None:
        if os.fstat(fd).st_size < self._SIZE:
            os.ftruncate(fd, self._SIZE)  # zeros: generation 0, "no header yet"
        self._map = mmap.mmap(fd, self._SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def generation(self) -> int:
        value: int = struct.unpack_from("<Q", self._map, 8)[0]
        return value

    def read(self) -> JournalState | None:
        """The published state; None while a write is in progress, after a crash, or before any."""
        magic, generation, number, size, seq, hash_ = self._LAYOUT.unpack_from(self._map, 0)
        if magic != self._MAGIC or generation == 0 or generation % 2 or self.generation() != generation:
            return None
        return JournalState(number, size, seq, hash_.decode("ascii", "replace"), generation)

    def begin(self) -> int:
        """Mark a write in progress (odd generation); returns that generation."""
        current = self.generation()
        odd = current + 1 if current % 2 == 0 else current + 2
        struct.pack_into("<Q", self._map, 8, odd)
        return odd

    def end(self, odd: int, state: JournalState) -> int:
        """Publish ``state`` and end the write (even generation); returns that generation."""
        even = odd + 1
        self._LAYOUT.pack_into(
            self._map, 0, self._MAGIC, odd, state.number, state.size, state.seq, state.hash.encode("ascii")
        )
        struct.pack_into("<Q", self._map, 8, even)
        return even

    def publish(self, state: JournalState) -> int:
        return self.end(self.begin(), state)

    def close(self) -> None:
        self._map.close()
