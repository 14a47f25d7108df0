"""Write compounds as an SD file: a 2D depiction from each SMILES, its id as the title line and
its results (rank, prediction, descriptors) as SD properties, so a hit list opens in any
chemistry tool."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from rdkit import Chem
from rdkit.Chem import rdDepictor

from medserve.clinical.chemistry.rdkit_errors import captured_errors

PropertyValue = str | int | float | bool | None


def write_sdf(path: Path, records: Iterable[tuple[str, str | None, Mapping[str, PropertyValue]]]) -> int:
    """Write each ``(smiles, title, properties)`` as an SD record to ``path``; returns how many.

    Properties whose value is None are left out; floats are written with 4 decimals. Raises
    ``ValueError`` naming the SMILES when one cannot be read."""
    written = 0
    writer = Chem.SDWriter(str(path))
    try:
        for smiles, title, properties in records:
            with captured_errors() as errors:
                molecule = Chem.MolFromSmiles(smiles)
            if molecule is None:
                raise ValueError(
                    f"cannot write SMILES {smiles!r} as a molfile: {errors.reason('unreadable')}"
                )
            rdDepictor.Compute2DCoords(molecule)
            molecule.SetProp("_Name", title or "")
            for name, value in properties.items():
                if value is not None:
                    molecule.SetProp(name, _text(value))
            writer.write(molecule)
            written += 1
    finally:
        writer.close()
    return written


def _text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
