"""Sequence context of variants from a reference FASTA (pyfaidx): the 21 bp window centred on POS, its
GC fraction and the homopolymer run at the site, vectorised over a chunk of variants.

Variants of one contig within ``MAX_SHARED_SPAN`` of each other are served by a single read of the
reference (a sorted VCF's chunk usually is), others one read each. Bases beyond a contig's ends are
``N``; ``N`` counts neither for GC nor as a homopolymer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FLANK = 10
"""Bases on each side of POS in the context window."""
WINDOW = 2 * FLANK + 1
"""Window length: POS is column ``FLANK``, the base after it column ``FLANK + 1``."""
MAX_SHARED_SPAN = 4_000_000
"""Largest reference span read once for several variants of a chunk."""

_N = ord("N")
_GC = np.frombuffer(b"GC", dtype=np.uint8)
_ACGT = np.frombuffer(b"ACGT", dtype=np.uint8)


class ReferenceGenome:
    """A FASTA reference with a ``.fai`` index (pyfaidx builds the index beside it when missing).

    Raises ``ValueError`` when ``path`` is not a readable FASTA file.
    """

    def __init__(self, path: Path) -> None:
        import pyfaidx

        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"reference {self.path} is not a file")
        try:
            self._fasta: Any = pyfaidx.Fasta(str(self.path), as_raw=True, sequence_always_upper=True)
        except (pyfaidx.FastaIndexingError, pyfaidx.FastaNotFoundError, OSError, ValueError) as exc:
            raise ValueError(f"reference {self.path} is not a readable FASTA file: {exc}") from None
        self._lengths: dict[str, int] = {record.name: len(record) for record in self._fasta}
        if not self._lengths:
            raise ValueError(f"reference {self.path} holds no sequences")

    @property
    def lengths(self) -> dict[str, int]:
        """Contig name to length."""
        return dict(self._lengths)

    def fetch(self, chrom: str, start: int, end: int) -> str:
        """Upper-case bases ``[start, end)`` (0-based) of ``chrom``; the caller keeps within bounds."""
        return str(self._fasta[chrom][start:end])

    def close(self) -> None:
        """Close the FASTA file."""
        self._fasta.close()


def reference_windows(
    reference: ReferenceGenome, chroms: Sequence[str], positions: Sequence[int], refs: Sequence[str]
) -> tuple[np.ndarray, list[str | None]]:
    """The ``(n, WINDOW)`` uint8 ASCII windows centred on each 1-based position, and per variant
    None or why it has no context: contig not in the reference, REF outside the contig, or REF
    different from the reference bases (rows with a reason are all ``N``)."""
    count = len(chroms)
    windows = np.full((count, WINDOW), _N, dtype=np.uint8)
    errors: list[str | None] = [None] * count
    groups: dict[str, list[int]] = {}
    for i, chrom in enumerate(chroms):
        groups.setdefault(chrom, []).append(i)
    lengths = reference._lengths
    for chrom, members in groups.items():
        length = lengths.get(chrom)
        if length is None:
            for i in members:
                errors[i] = f"contig {chrom!r} is not in the reference"
            continue
        inside: list[int] = []
        for i in members:
            start = positions[i] - 1
            if start < 0 or start + len(refs[i]) > length:
                errors[i] = (
                    f"REF at {chrom}:{positions[i]} lies outside the reference contig (length {length})"
                )
            else:
                inside.append(i)
        if not inside:
            continue
        first, last = min(positions[i] for i in inside), max(positions[i] + len(refs[i]) for i in inside)
        batches = [inside] if last - first <= MAX_SHARED_SPAN else [[i] for i in inside]
        for batch in batches:
            _fill(reference, chrom, length, batch, positions, refs, windows, errors)
    return windows, errors


def _fill(
    reference: ReferenceGenome,
    chrom: str,
    length: int,
    batch: list[int],
    positions: Sequence[int],
    refs: Sequence[str],
    windows: np.ndarray,
    errors: list[str | None],
) -> None:
    starts = np.array([positions[i] - 1 for i in batch], dtype=np.int64)
    ends = np.array([positions[i] - 1 + max(len(refs[i]), FLANK + 1) + FLANK for i in batch], dtype=np.int64)
    low, high = max(0, int(starts.min()) - FLANK), min(length, int(ends.max()))
    text = reference.fetch(chrom, low, high)
    bases = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    columns = (starts - FLANK - low)[:, None] + np.arange(WINDOW)[None, :]
    usable = (columns >= 0) & (columns < bases.size)
    rows = np.where(usable, bases[np.clip(columns, 0, bases.size - 1)], _N)
    for row, i in enumerate(batch):
        offset = int(starts[row]) - low
        expected = text[offset : offset + len(refs[i])]
        if expected != refs[i]:
            errors[i] = (
                f"REF {refs[i][:20]!r} differs from the reference {expected[:20]!r} at {chrom}:{positions[i]}"
            )
        else:
            windows[i] = rows[row]


def gc_fraction(windows: np.ndarray, neutral: float = 0.5) -> np.ndarray:
    """Fraction of G and C among the A, C, G, T bases of each window (``neutral`` when none), float32."""
    called = np.isin(windows, _ACGT).sum(axis=1)
    gc = np.isin(windows, _GC).sum(axis=1)
    fraction = np.where(called > 0, gc / np.maximum(called, 1), neutral)
    return fraction.astype(np.float32)


def homopolymer_run(windows: np.ndarray) -> np.ndarray:
    """Length of the longest run of one base (not ``N``) in each window that covers POS or the base
    after it (columns ``FLANK`` and ``FLANK + 1``), float32; 1 for a base without a repeat."""
    count, width = windows.shape
    same = (windows[:, 1:] == windows[:, :-1]) & (windows[:, 1:] != _N)
    left = np.ones((count, width), dtype=np.int32)
    right = np.ones((count, width), dtype=np.int32)
    for j in range(1, width):
        left[:, j] = np.where(same[:, j - 1], left[:, j - 1] + 1, 1)
    for j in range(width - 2, -1, -1):
        right[:, j] = np.where(same[:, j], right[:, j + 1] + 1, 1)
    run = left + right - 1
    longest: np.ndarray = np.maximum(run[:, FLANK], run[:, FLANK + 1]).astype(np.float32)
    return longest
