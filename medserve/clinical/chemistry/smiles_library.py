"""Stream SMILES libraries: ``.smi`` text (``SMILES [id]`` per line) and CSV/TSV tables.

Blank lines (and ``#`` comment lines in ``.smi``) are not records; every other line or row is, and
takes the next index whether or not its SMILES can be read. Locators give the 1-based line where the
record starts, counting the header line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from typing import TextIO

from medserve.clinical.chemistry.compound import (
    Compound,
    LibraryEntry,
    UnreadableLibrary,
    UnreadableMolecule,
    parse_smiles,
)

SMILES_HEADER_WORDS = ("smiles", "smi", "canonical_smiles", "isomeric_smiles")
"""A ``.smi`` file whose first record starts with one of these words (any case) has a header line;
in a CSV/TSV table without a named SMILES column, the first of these among the headers is used."""

ID_COLUMNS = ("id", "name", "compound_id", "molecule_id", "mol_id", "title")
"""Columns taken (any case, first found) as the compound id when none is named."""


def read_smiles_lines(lines: Iterable[str]) -> Iterator[LibraryEntry]:
    """Entries of a ``.smi`` file: the first whitespace-separated field is the SMILES, the rest of
    the line (if any) its id. A first line starting with a word of ``SMILES_HEADER_WORDS`` is a header."""
    index = 0
    first = True
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split(None, 1)
        if first:
            first = False
            if fields[0].lower() in SMILES_HEADER_WORDS:
                continue
        identifier = fields[1].strip() if len(fields) > 1 else None
        yield _entry(index, f"line {number}", fields[0], identifier)
        index += 1


def delimited_columns(
    header: Sequence[str], smiles_column: str | None, id_column: str | None
) -> tuple[int, int | None]:
    """Field numbers of the SMILES and id columns in a CSV/TSV ``header`` (names match in any case).

    With ``smiles_column`` None the first of ``SMILES_HEADER_WORDS`` present is used; with
    ``id_column`` None the first of ``ID_COLUMNS`` present, or no id. Raises ``UnreadableLibrary``
    when a named column, or any SMILES column, is missing."""
    names = [name.strip().lower() for name in header]
    shown = ", ".join(repr(name.strip()) for name in header) or "none"

    def find(wanted: Sequence[str]) -> int | None:
        for name in wanted:
            if name.lower() in names:
                return names.index(name.lower())
        return None

    smiles_field = find([smiles_column] if smiles_column is not None else SMILES_HEADER_WORDS)
    if smiles_field is None:
        wanted = (
            repr(smiles_column) if smiles_column is not None else "any of " + ", ".join(SMILES_HEADER_WORDS)
        )
        raise UnreadableLibrary(f"no SMILES column ({wanted}) in the header; columns: {shown}")
    id_field = find([id_column] if id_column is not None else ID_COLUMNS)
    if id_field is None and id_column is not None:
        raise UnreadableLibrary(f"no id column {id_column!r} in the header; columns: {shown}")
    return smiles_field, id_field


def read_delimited(
    handle: TextIO, delimiter: str, smiles_column: str | None, id_column: str | None
) -> Iterator[LibraryEntry]:
    """Entries of a CSV/TSV table with a header row (``handle`` opened with ``newline=""``)."""
    reader = csv.reader(handle, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    smiles_field, id_field = delimited_columns(header, smiles_column, id_column)
    index = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield LibraryEntry(index, f"line {start}", None, f"malformed row: {error}")
            index += 1
            continue
        if all(not field.strip() for field in row):
            continue
        if smiles_field >= len(row):
            reason = f"row has {len(row)} fields; the SMILES column is field {smiles_field + 1}"
            yield LibraryEntry(index, f"line {start}", None, reason)
        else:
            identifier = None
            if id_field is not None and id_field < len(row):
                identifier = row[id_field].strip() or None
            yield _entry(index, f"line {start}", row[smiles_field], identifier)
        index += 1


def _entry(index: int, locator: str, smiles: str, identifier: str | None) -> LibraryEntry:
    try:
        molecule = parse_smiles(smiles)
    except UnreadableMolecule as error:
        return LibraryEntry(index, locator, None, str(error))
    return LibraryEntry(index, locator, Compound(identifier, molecule))
