"""A compound library on disk: its format (from the file name or given), checked when opened by
reading only its beginning, then streamed entry by entry.

Formats: ``smi`` (``.smi``, ``.smiles``, ``.ism``), ``csv``, ``tsv`` and ``sdf`` (``.sdf``, ``.sd``),
each optionally gzip-compressed (``.gz``; compression is recognised by content, not by name).
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from medserve.clinical.chemistry.compound import LibraryEntry, UnreadableLibrary
from medserve.clinical.chemistry.sdf_library import RECORD_END, read_sdf
from medserve.clinical.chemistry.smiles_library import delimited_columns, read_delimited, read_smiles_lines

HEAD_BYTES = 64 * 1024
"""How much of the (decompressed) file is read to check it when the library is opened."""

_GZIP_MAGIC = b"\x1f\x8b"


class LibraryFormat(StrEnum):
    """File formats of compound libraries."""

    SMILES = "smi"
    CSV = "csv"
    TSV = "tsv"
    SDF = "sdf"


_SUFFIXES: dict[str, LibraryFormat] = {
    ".smi": LibraryFormat.SMILES,
    ".smiles": LibraryFormat.SMILES,
    ".ism": LibraryFormat.SMILES,
    ".csv": LibraryFormat.CSV,
    ".tsv": LibraryFormat.TSV,
    ".sdf": LibraryFormat.SDF,
    ".sd": LibraryFormat.SDF,
}


def format_of(path: Path) -> LibraryFormat | None:
    """The format a file name implies (``.gz`` looked through), or None."""
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return _SUFFIXES.get(suffixes[-1]) if suffixes else None


@dataclass(frozen=True)
class CompoundLibrary:
    """A checked library; ``entries()`` streams it, the same entries every time."""

    path: Path
    format: LibraryFormat
    compressed: bool
    smiles_column: str | None = None
    """CSV/TSV: the SMILES column (None: the first of ``SMILES_HEADER_WORDS`` found)."""
    id_column: str | None = None
    """CSV/TSV: the id column (None: the first of ``ID_COLUMNS`` found, else no ids)."""
    id_property: str | None = None
    """SDF: the SD property holding the id (None: the record's title line)."""

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        library_format: str | None = None,
        smiles_column: str | None = None,
        id_column: str | None = None,
        id_property: str | None = None,
    ) -> CompoundLibrary:
        """Check that ``path`` can be read as a library; raises ``UnreadableLibrary`` saying why not
        (missing, unknown format, not gzip despite its magic, binary, no SMILES column, not an SD file)."""
        path = Path(path)
        if not path.exists():
            raise UnreadableLibrary(f"{path}: no such file")
        if not path.is_file():
            raise UnreadableLibrary(f"{path}: not a regular file")
        chosen = _chosen_format(path, library_format)
        try:
            with open(path, "rb") as raw:
                compressed = raw.read(2) == _GZIP_MAGIC
        except OSError as error:
            raise UnreadableLibrary(f"{path}: cannot be read: {error.strerror or error}") from None
        library = cls(path, chosen, compressed, smiles_column, id_column, id_property)
        library._check(_head(path, compressed))
        return library

    def entries(self) -> Iterator[LibraryEntry]:
        """Every record in file order, each a compound or the reason it could not be read."""
        with self._binary() as binary:
            if self.format is LibraryFormat.SDF:
                yield from read_sdf(binary, self.id_property)
                return
            newline = "" if self.format in (LibraryFormat.CSV, LibraryFormat.TSV) else None
            text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline=newline)
            if self.format is LibraryFormat.SMILES:
                yield from read_smiles_lines(text)
            else:
                yield from read_delimited(text, self._delimiter, self.smiles_column, self.id_column)

    @property
    def _delimiter(self) -> str:
        return "\t" if self.format is LibraryFormat.TSV else ","

    def _binary(self) -> BinaryIO:
        if self.compressed:
            return gzip.open(self.path, "rb")  # type: ignore[return-value]  # GzipFile is a BinaryIO
        return open(self.path, "rb")

    def _check(self, head: bytes) -> None:
        where = f"{self.path}"
        if b"\x00" in head:
            raise UnreadableLibrary(f"{where}: binary content, not a {self.format.value} text file")
        if self.format in (LibraryFormat.CSV, LibraryFormat.TSV):
            text = head.decode("utf-8-sig", errors="replace")
            header = next(csv.reader(io.StringIO(text), delimiter=self._delimiter), None)
            if header is None:
                raise UnreadableLibrary(f"{where}: empty {self.format.value} file (no header row)")
            try:
                delimited_columns(header, self.smiles_column, self.id_column)
            except UnreadableLibrary as error:
                raise UnreadableLibrary(f"{where}: {error}") from None
        elif self.format is LibraryFormat.SDF and head.strip():
            lines = [line.strip() for line in head.splitlines()]
            if not any(line == RECORD_END or line.endswith((b"V2000", b"V3000")) for line in lines):
                raise UnreadableLibrary(
                    f"{where}: does not look like an SD file (no V2000/V3000 counts line and no "
                    f"'$$$$' in its first {len(head)} bytes)"
                )


def _chosen_format(path: Path, library_format: str | None) -> LibraryFormat:
    known = ", ".join(member.value for member in LibraryFormat)
    if library_format is not None:
        try:
            return LibraryFormat(library_format.lower())
        except ValueError:
            raise UnreadableLibrary(
                f"unknown library format {library_format!r}; expected one of {known}"
            ) from None
    detected = format_of(path)
    if detected is None:
        raise UnreadableLibrary(
            f"{path}: cannot tell the library format from the file name; expected a name ending in "
            f"{', '.join(_SUFFIXES)} (optionally .gz), or name the format ({known})"
        )
    return detected


def _head(path: Path, compressed: bool) -> bytes:
    """The first ``HEAD_BYTES`` of the content; raises ``UnreadableLibrary`` for corrupt gzip."""
    try:
        if compressed:
            with gzip.open(path, "rb") as handle:
                return handle.read(HEAD_BYTES)
        with open(path, "rb") as handle:
            return handle.read(HEAD_BYTES)
    except (OSError, EOFError, zlib.error) as error:
        kind = "gzip data" if compressed else "file"
        raise UnreadableLibrary(f"{path}: unreadable {kind}: {error}") from None
