"""One VCF data line as a ``VariantRecord``: the fixed columns checked and parsed, INFO and the chosen
sample's FORMAT values kept as raw text for the features to read; ``split_alleles`` makes one
``VariantAllele`` (the unit that is scored) per ALT.

htslib accepts lines that are not valid VCF and guesses silently (a QUAL of ``xx`` becomes 0, an ALT
of ``X`` is kept, a missing REF becomes ``.``), so the columns are checked here first, with a reason
that names the column; the reader then lets htslib parse the line too (what the annotated-VCF writer
will do), so a line accepted here is one that can be written back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from medserve.clinical.genomics.vcf_header import VcfHeader

_BASES = re.compile(r"^[ACGTNacgtn]+$")
_BASE_ALLELES = re.compile(r"^[ACGTNacgtn]+(?:,[ACGTNacgtn]+)*$")
_SYMBOLIC = re.compile(r"^<[^<>]+>$")
_SINGLE_BREAKEND = re.compile(r"^(?:\.[ACGTNacgtn]+|[ACGTNacgtn]+\.)$")
_POSITION = re.compile(r"^[0-9]+$")


class MalformedRecord(ValueError):
    """A data line that is not a valid VCF record; the message says which column is wrong and why."""


@dataclass(frozen=True, slots=True)
class VariantRecord:
    """The parts of a VCF record that variant scoring reads."""

    chrom: str
    pos: int
    """1-based position of the first REF base."""
    id: str
    ref: str
    alts: tuple[str, ...]
    """ALT alleles in order; empty when ALT is ``.`` (a reference-only record)."""
    qual: float | None
    """QUAL, or None when ``.``."""
    info: dict[str, str] = field(default_factory=dict)
    """INFO key to raw value; flags map to ``""``."""
    sample: dict[str, str] = field(default_factory=dict)
    """FORMAT key to the chosen sample's raw value (``.`` when missing); empty without samples."""


@dataclass(frozen=True, slots=True)
class VariantAllele:
    """One ALT allele of a record: the unit that is scored."""

    record: VariantRecord
    allele: int
    """1-based ALT number; 0 for a record without ALT alleles."""

    @property
    def alt(self) -> str:
        """The ALT allele (``.`` for allele 0)."""
        return self.record.alts[self.allele - 1] if self.allele else "."


def split_alleles(record: VariantRecord) -> list[VariantAllele]:
    """One ``VariantAllele`` per ALT of ``record`` (one allele 0 when ALT is ``.``)."""
    return [VariantAllele(record, k) for k in range(1, len(record.alts) + 1)] or [VariantAllele(record, 0)]


def is_sequence_allele(allele: str) -> bool:
    """Whether ``allele`` is a plain base string (not ``*``, symbolic or a breakend)."""
    return bool(_BASES.match(allele))


def parse_record(text: str, header: VcfHeader, sample_column: int | None) -> VariantRecord:
    """Parse one data line (no line end) under ``header``, keeping the FORMAT values of the sample in
    0-based column ``sample_column`` (None: no sample values).

    Raises ``MalformedRecord`` for a wrong column count, an empty or undeclared CHROM (when the
    header declares contigs), a POS that is not a non-negative integer, a REF that is not bases, an
    ALT allele that is neither bases, ``*``, symbolic nor a breakend, a QUAL that is not a finite
    number, an INFO entry without a key, or more sample values than FORMAT keys.
    """
    columns = text.split("\t")
    if len(columns) != len(header.columns):
        raise MalformedRecord(
            f"has {len(columns)} tab-separated column(s); the header's #CHROM line has {len(header.columns)}"
        )
    chrom, pos, ident, ref, alt, qual, _filter, info = columns[:8]
    if not chrom:
        raise MalformedRecord("CHROM is empty")
    if header.contigs and chrom not in header.contigs:
        raise MalformedRecord(f"CHROM {chrom!r} is not a contig declared in the header")
    if not _POSITION.match(pos):
        raise MalformedRecord(f"POS {pos[:40]!r} is not a non-negative integer")
    if not _BASES.match(ref):
        raise MalformedRecord(f"REF {ref[:40]!r} is not a string of bases A, C, G, T, N")
    alts = _alts(alt)
    return VariantRecord(
        chrom=chrom,
        pos=int(pos),
        id=ident,
        ref=ref.upper(),
        alts=alts,
        qual=_qual(qual),
        info=_info(info),
        sample=_sample(columns, sample_column, header),
    )


def _alts(alt: str) -> tuple[str, ...]:
    if _BASE_ALLELES.match(alt):
        return tuple(alt.upper().split(","))
    if alt == ".":
        return ()
    alleles = tuple(alt.split(","))
    for allele in alleles:
        if not (
            _BASES.match(allele)
            or allele == "*"
            or _SYMBOLIC.match(allele)
            or _SINGLE_BREAKEND.match(allele)
            or "[" in allele
            or "]" in allele
        ):
            raise MalformedRecord(
                f"ALT allele {allele[:40]!r} is not a base string, '*', a symbolic <ID> or a breakend"
            )
    return tuple(a.upper() if _BASES.match(a) else a for a in alleles)


def _qual(qual: str) -> float | None:
    if qual == ".":
        return None
    try:
        value = float(qual)
    except ValueError:
        raise MalformedRecord(f"QUAL {qual[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise MalformedRecord(f"QUAL {qual[:40]!r} is not a finite number")
    return value


def _info(info: str) -> dict[str, str]:
    if info == ".":
        return {}
    values: dict[str, str] = {}
    for entry in info.split(";"):
        if not entry:
            continue
        key, _, value = entry.partition("=")
        if not key:
            raise MalformedRecord(f"INFO entry {entry[:40]!r} has no key")
        values[key] = value
    return values


def _sample(columns: list[str], sample_column: int | None, header: VcfHeader) -> dict[str, str]:
    if sample_column is None:
        return {}
    keys = columns[8].split(":")
    values = columns[sample_column].split(":")
    if len(values) == len(keys):
        return dict(zip(keys, values))
    if len(values) > len(keys):
        raise MalformedRecord(
            f"sample {header.columns[sample_column]!r} has {len(values)} values for the "
            f"{len(keys)} FORMAT key(s) {columns[8]!r}"
        )
    # VCF allows trailing FORMAT values to be dropped: they are missing.
    return {key: values[i] if i < len(values) else "." for i, key in enumerate(keys)}
