"""A compound read from a library, an entry of a library (a compound or the reason there is none),
SMILES parsing that says why RDKit refused a string, and the errors of reading libraries."""

from __future__ import annotations

from dataclasses import dataclass

from rdkit import Chem

from medserve.clinical.chemistry.rdkit_errors import read_quietly


class UnreadableLibrary(ValueError):
    """The library cannot be read at all: missing, not a library of a known format, no SMILES column."""


class UnreadableMolecule(ValueError):
    """RDKit could not make a molecule from the text; the message is RDKit's reason."""


@dataclass(frozen=True)
class Compound:
    """A sanitised RDKit molecule and the library's name for it (None when the library gives none)."""

    id: str | None
    molecule: Chem.Mol


@dataclass(frozen=True)
class LibraryEntry:
    """One record of a library, in file order: a compound, or why the record could not be read."""

    index: int
    """0-based ordinal of the record in the library (unreadable records count too)."""
    locator: str
    """Where the record is, for people: ``"line 12"`` or ``"record 3 (line 40)"``."""
    compound: Compound | None
    reason: str = ""
    """Why ``compound`` is None."""


def parse_smiles(smiles: str) -> Chem.Mol:
    """The sanitised molecule of ``smiles``; raises ``UnreadableMolecule`` with RDKit's reason
    (syntax error, unclosed ring, valence, kekulisation...) or for a molecule with no atoms."""
    text = smiles.strip()
    if not text:
        raise UnreadableMolecule("empty SMILES")
    molecule, reason = read_quietly(
        lambda: Chem.MolFromSmiles(text), f"RDKit could not parse SMILES {text!r}"
    )
    if molecule is None:
        raise UnreadableMolecule(reason)
    if molecule.GetNumAtoms() == 0:
        raise UnreadableMolecule(f"SMILES {text!r} has no atoms")
    return molecule
