"""The VCF header: its meta-information lines, the ``#CHROM`` column line, samples and contigs.

The header is read as text (VCF 4.x, section 1.4) and checked here; htslib parses the same text again
when records are checked or written (``medserve.clinical.genomics.vcf_reader`` and
``annotated_vcf``). ``with_info_definition`` gives the header of an annotated copy: the input's
header with one ``##INFO`` line added (or replacing an earlier definition of the same ID).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

FIXED_COLUMNS: tuple[str, ...] = ("#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")
"""The eight mandatory columns of the ``#CHROM`` line, in order."""

_CONTIG_ID = re.compile(r"^##contig=<(?:.*,)?ID=([^,>]+)")
_INFO_ID = re.compile(r"^##INFO=<(?:.*,)?ID=([^,>]+)")
_INFO_KEY = re.compile(r"^[A-Za-z_][0-9A-Za-z_.]*$")


class VcfFormatError(ValueError):
    """The file is not a VCF or BCF file that can be read (bad header, unknown format, bad sample)."""


@dataclass(frozen=True)
class VcfHeader:
    """A parsed VCF header."""

    meta: tuple[str, ...]
    """The ``##`` lines, in order, without line ends."""
    columns: tuple[str, ...]
    """The ``#CHROM`` line split on tabs: the 8 fixed columns, then ``FORMAT`` and the samples."""
    contigs: frozenset[str]
    """IDs of the ``##contig`` lines (empty when the header declares none)."""

    @property
    def samples(self) -> tuple[str, ...]:
        """Sample names, in column order (empty for a sites-only VCF)."""
        return self.columns[9:]

    def text(self) -> str:
        """The header as VCF text, ending with a newline."""
        return "\n".join((*self.meta, "\t".join(self.columns))) + "\n"


def parse_header(lines: Iterable[str], *, where: str) -> VcfHeader:
    """Parse header lines (``##`` lines then the ``#CHROM`` line, line ends allowed).

    Raises ``VcfFormatError`` naming ``where`` when the first line is not ``##fileformat=VCF...``,
    the ``#CHROM`` line is missing or its columns are wrong, or a sample name repeats.
    """
    meta: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if number == 1 and not line.startswith("##fileformat=VCF"):
            raise VcfFormatError(f"{where}: not a VCF file: the first line is not '##fileformat=VCF...'")
        if line.startswith("##"):
            meta.append(line)
            continue
        if not line.startswith("#CHROM"):
            raise VcfFormatError(
                f"{where}: line {number}: expected the '#CHROM' header line before any record"
            )
        return _header(meta, line, number, where)
    raise VcfFormatError(f"{where}: the header has no '#CHROM' line")


def _header(meta: list[str], line: str, number: int, where: str) -> VcfHeader:
    columns = tuple(line.split("\t"))
    if columns[:8] != FIXED_COLUMNS:
        raise VcfFormatError(
            f"{where}: line {number}: the '#CHROM' line must start with the tab-separated columns "
            f"{' '.join(FIXED_COLUMNS)}; it has {' '.join(columns[:8])!r}"
        )
    if len(columns) > 8 and columns[8] != "FORMAT":
        raise VcfFormatError(f"{where}: line {number}: column 9 must be FORMAT, not {columns[8]!r}")
    samples = columns[9:]
    repeated = sorted({name for name in samples if samples.count(name) > 1})
    if repeated:
        raise VcfFormatError(f"{where}: sample name(s) {', '.join(repeated)} appear more than once")
    contigs = frozenset(match.group(1) for text in meta if (match := _CONTIG_ID.match(text)))
    return VcfHeader(meta=tuple(meta), columns=columns, contigs=contigs)


def check_info_key(key: str) -> str:
    """Return ``key`` when it is a valid INFO key (VCF 4.3: ``[A-Za-z_][0-9A-Za-z_.]*``), else
    raise ``ValueError``."""
    if not _INFO_KEY.match(key):
        raise ValueError(
            f"{key!r} is not a valid INFO key (a letter or '_', then letters, digits, '_' or '.')"
        )
    return key


def with_info_definition(header: VcfHeader, key: str, number: str, kind: str, description: str) -> VcfHeader:
    """``header`` with ``##INFO=<ID=key,...>`` as its last meta line; an earlier definition of
    ``key`` is dropped (records must then drop their old ``key`` values too)."""
    check_info_key(key)
    escaped = description.replace("\\", "\\\\").replace('"', '\\"')
    definition = f'##INFO=<ID={key},Number={number},Type={kind},Description="{escaped}">'
    kept = tuple(line for line in header.meta if _defined_info(line) != key)
    return VcfHeader(meta=(*kept, definition), columns=header.columns, contigs=header.contigs)


def _defined_info(line: str) -> str | None:
    match = _INFO_ID.match(line)
    return match.group(1) if match else None
