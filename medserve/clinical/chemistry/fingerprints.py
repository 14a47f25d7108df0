"""Morgan (ECFP-like) bit fingerprints of a batch of molecules as a uint8 (0/1) model input.

Uses RDKit's ``rdFingerprintGenerator`` Morgan generator (radius 2 and 2048 bits by default, i.e.
ECFP4-like), so a row equals RDKit's own ``ExplicitBitVect`` for the molecule: 1.0 where the bit is
set, 0.0 elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

MAX_RADIUS = 6
MAX_BITS = 1 << 16


class MorganFingerprinter:
    """Morgan bit fingerprints; one generator, reused for every batch (safe across threads)."""

    def __init__(
        self, radius: int = 2, bits: int = 2048, *, chirality: bool = False, threads: int = 1
    ) -> None:
        """``radius`` 0..6, ``bits`` 1..65536, ``chirality`` to tell stereo-isomers apart, ``threads``
        RDKit threads per batch; raises ``ValueError`` for values out of range."""
        for name, value, low, high in (
            ("radius", radius, 0, MAX_RADIUS),
            ("bits", bits, 1, MAX_BITS),
            ("threads", threads, 1, 256),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"fingerprint {name} must be an integer in {low}..{high}, got {value!r}")
        self.radius = radius
        self.bits = bits
        self.chirality = chirality
        self.threads = threads
        self._generator = rdFingerprintGenerator.GetMorganGenerator(
            radius=radius, fpSize=bits, includeChirality=chirality
        )

    def __call__(self, molecules: Sequence[Chem.Mol]) -> np.ndarray:
        """A uint8 array ``[len(molecules), bits]`` of 0/1 (a quarter of float32's bytes to move and
        to hash for the audit trail; the model casts it)."""
        out = np.zeros((len(molecules), self.bits), dtype=np.uint8)
        if not molecules:
            return out
        fingerprints = self._generator.GetFingerprints(list(molecules), numThreads=self.threads)
        rows: list[np.ndarray] = []
        columns: list[np.ndarray] = []
        for row, fingerprint in enumerate(fingerprints):
            on = np.asarray(fingerprint.GetOnBits(), dtype=np.intp)
            rows.append(np.full(on.size, row, dtype=np.intp))
            columns.append(on)
        out[np.concatenate(rows), np.concatenate(columns)] = 1
        return out
