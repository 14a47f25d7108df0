"""A seeded random reference genome with low-complexity sequence, written as FASTA with its ``.fai``.

Each contig is built from 1 kb blocks of random bases whose GC content varies from block to block
(35-62 %), then homopolymers (6-14 bp, about one per 250 bp) and short tandem repeats (2-3 bp units,
5-10 copies, about one per 700 bp) are written over it. The planted elements are kept, so the
variant generator can put sequencing artefacts where real ones cluster. Nothing here is real
sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONTIG_SHARES: tuple[tuple[str, float], ...] = (("chr1", 0.5), ("chr2", 0.3), ("chr3", 0.2))
"""Contig names and their share of the genome length."""

HOMOPOLYMER = 0
TANDEM_REPEAT = 1

_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
_BLOCK = 1000
_HOMOPOLYMER_SPACING = 250
_REPEAT_SPACING = 700
_FASTA_WIDTH = 60


@dataclass(frozen=True)
class LowComplexity:
    """Planted elements of one contig, sorted by start."""

    starts: np.ndarray
    """0-based first base."""
    lengths: np.ndarray
    kinds: np.ndarray
    """``HOMOPOLYMER`` or ``TANDEM_REPEAT``."""


@dataclass(frozen=True)
class SyntheticGenome:
    """Contig sequences (uint8 ASCII, upper case) and their planted low-complexity elements."""

    sequences: dict[str, np.ndarray]
    low_complexity: dict[str, LowComplexity]

    def bases(self, chrom: str, start: int, end: int) -> str:
        """Bases ``[start, end)`` (0-based) of ``chrom``."""
        return self.sequences[chrom][start:end].tobytes().decode("ascii")


def synthetic_genome(length: int, rng: np.random.Generator) -> SyntheticGenome:
    """A genome of about ``length`` bases (at least 10 kb) over the contigs of ``CONTIG_SHARES``."""
    if length < 10_000:
        raise ValueError(f"genome length {length} is below the 10000 bases the generator needs")
    sequences: dict[str, np.ndarray] = {}
    elements: dict[str, LowComplexity] = {}
    for name, share in CONTIG_SHARES:
        size = max(_BLOCK, int(length * share) // _BLOCK * _BLOCK)
        sequences[name], elements[name] = _contig(size, rng)
    return SyntheticGenome(sequences=sequences, low_complexity=elements)


def _contig(size: int, rng: np.random.Generator) -> tuple[np.ndarray, LowComplexity]:
    blocks = size // _BLOCK
    gc = rng.uniform(0.35, 0.62, size=blocks).repeat(_BLOCK)
    draw = rng.random(size)
    # A, C, G, T with P(C) = P(G) = gc / 2 and P(A) = P(T) = (1 - gc) / 2.
    index = (draw >= (1 - gc) / 2).astype(np.int8) + (draw >= 0.5) + (draw >= 0.5 + gc / 2)
    sequence = _BASES[index]
    starts, lengths, kinds = [], [], []
    for kind, spacing in ((HOMOPOLYMER, _HOMOPOLYMER_SPACING), (TANDEM_REPEAT, _REPEAT_SPACING)):
        count = size // spacing
        where = np.sort(rng.choice(np.arange(20, size - 60), size=count, replace=False))
        for start in where.tolist():
            if kind == HOMOPOLYMER:
                run = int(rng.integers(6, 15))
                sequence[start : start + run] = _BASES[rng.integers(4)]
            else:
                unit = _BASES[rng.integers(4, size=int(rng.integers(2, 4)))]
                if np.all(unit == unit[0]):
                    unit[-1] = _BASES[(np.flatnonzero(unit[0] == _BASES)[0] + 1) % 4]
                run = unit.size * int(rng.integers(5, 11))
                sequence[start : start + run] = np.resize(unit, run)
            starts.append(start)
            lengths.append(run)
            kinds.append(kind)
    order = np.argsort(starts, kind="stable")
    planted = LowComplexity(
        starts=np.asarray(starts, dtype=np.int64)[order],
        lengths=np.asarray(lengths, dtype=np.int64)[order],
        kinds=np.asarray(kinds, dtype=np.int8)[order],
    )
    return sequence, planted


def write_reference(genome: SyntheticGenome, path: Path) -> list[Path]:
    """Write ``genome`` as FASTA (60 bases a line) and index it with pyfaidx; returns
    ``[fasta, fasta.fai]``."""
    import pyfaidx

    path = Path(path)
    with open(path, "wb") as handle:
        for name, sequence in genome.sequences.items():
            handle.write(f">{name} synthetic contig, {sequence.size} bp\n".encode("ascii"))
            for start in range(0, sequence.size, _FASTA_WIDTH):
                handle.write(sequence[start : start + _FASTA_WIDTH].tobytes())
                handle.write(b"\n")
    index = Path(f"{path}.fai")
    index.unlink(missing_ok=True)
    pyfaidx.Faidx(str(path)).close()  # builds the .fai index
    return [path, index]
