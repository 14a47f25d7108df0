"""Stream SD files (plain or gzip'd): one record at a time, each parsed by RDKit's
``ForwardSDMolSupplier`` (sanitised, explicit hydrogens removed).

Records are split on ``$$$$`` lines here rather than inside RDKit, so that every record's number and
first line are known: a record RDKit rejects becomes an entry with RDKit's reason, and reading goes
on with the next one. A record's id is its title line, or an SD property when one is named.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator

from rdkit import Chem

from medserve.clinical.chemistry.compound import Compound, LibraryEntry
from medserve.clinical.chemistry.rdkit_errors import read_quietly

RECORD_END = b"$$$$"
_LINE = re.compile(r"\b(line) ?(\d+)")
MAX_RECORD_BYTES = 16 * 1024 * 1024
"""A record longer than this is not kept in memory: it is skipped as unreadable."""


def read_sdf(lines: Iterable[bytes], id_property: str | None = None) -> Iterator[LibraryEntry]:
    """Entries of an SD file given as its binary lines (RDKit reads bytes; titles may be any encoding)."""
    index = 0
    block: list[bytes] = []
    size = 0
    start = 1
    for number, line in enumerate(lines, start=1):
        if not block and size == 0:
            start = number
        if line.rstrip() == RECORD_END:
            yield _record(index, start, block, size, id_property)
            index += 1
            block, size = [], 0
            continue
        size += len(line)
        if size <= MAX_RECORD_BYTES:
            block.append(line)
        else:
            block.clear()
    if size > MAX_RECORD_BYTES or any(line.strip() for line in block):
        yield _record(index, start, block, size, id_property)


def _record(index: int, start: int, block: list[bytes], size: int, id_property: str | None) -> LibraryEntry:
    locator = f"record {index + 1} (line {start})"
    if size > MAX_RECORD_BYTES:
        return LibraryEntry(index, locator, None, f"record is larger than {MAX_RECORD_BYTES} bytes")
    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in block) + RECORD_END + b"\n"

    def read() -> Chem.Mol | None:
        molecule: Chem.Mol | None = next(iter(Chem.ForwardSDMolSupplier(io.BytesIO(data))), None)
        return molecule

    molecule, reason = read_quietly(read, "RDKit could not read the molfile block")
    if molecule is None:
        # RDKit counts lines from the record's start; say the file's line instead.
        reason = _LINE.sub(lambda match: f"{match[1]} {start - 1 + int(match[2])}", reason)
        return LibraryEntry(index, locator, None, reason)
    if molecule.GetNumAtoms() == 0:
        return LibraryEntry(index, locator, None, "the record has no atoms")
    return LibraryEntry(index, locator, Compound(_identifier(molecule, id_property), molecule))


def _identifier(molecule: Chem.Mol, id_property: str | None) -> str | None:
    name = id_property if id_property is not None else "_Name"
    if not molecule.HasProp(name):
        return None
    value = str(molecule.GetProp(name)).strip()
    return value or None
