"""Write a copy of a VCF with each ALT allele's score in an INFO field (``Number=A``, ``Type=Float``).

The writer streams the source again and merges it with the scores by item index: items are numbered
as the variant-scoring workload numbers them (one per ALT allele of each parsed record, one for a
record without ALT, one for a line that could not be parsed). A record gets the field when at least
one of its alleles was scored, ``.`` standing for the others; a record none of whose alleles was
scored is written without it; a line that could not be parsed is left out (it cannot be written as
VCF). An older value of the same INFO field is dropped from every record, and its header line is
replaced. Records pass through htslib (cyvcf2's writer), which writes them in its canonical form.

The output is plain VCF, bgzipped VCF when the file name has a ``.gz`` or ``.bgz`` suffix, or BCF
for ``.bcf`` (suffixes anywhere in the name count, so a temporary ``out.vcf.gz.x1.partial`` is
bgzipped). BCF output needs the contigs declared in the input's header.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medserve.clinical.genomics.variant_record import split_alleles
from medserve.clinical.genomics.vcf_header import check_info_key, with_info_definition
from medserve.clinical.genomics.vcf_reader import VcfSource

DEFAULT_INFO_FIELD = "MEDSERVE_SCORE"
DEFAULT_DESCRIPTION = (
    "Score of each ALT allele from a medserve variant-scoring model (the model's estimate that the "
    "allele is a true variant); '.' where an allele was not scored"
)


@dataclass(frozen=True)
class AnnotationSummary:
    """What ``write_annotated_vcf`` wrote."""

    records: int
    """Records written."""
    annotated: int
    """Records written with the score field."""
    scores: int
    """Scores placed."""


def vcf_write_mode(path: Path) -> str:
    """cyvcf2 writer mode for ``path``: ``"wb"`` (BCF), ``"wz"`` (bgzipped VCF) or ``"w"``."""
    suffixes = {suffix.lower() for suffix in Path(path).suffixes}
    if ".bcf" in suffixes:
        return "wb"
    if suffixes & {".gz", ".bgz"}:
        return "wz"
    return "w"


def open_vcf_writer(path: Path, header_text: str) -> Any:
    """A cyvcf2 ``Writer`` for ``path`` (mode from ``vcf_write_mode``) with the header written."""
    import cyvcf2

    writer = cyvcf2.Writer.from_string(str(path), header_text, mode=vcf_write_mode(path))
    writer.write_header()
    return writer


def write_annotated_vcf(
    source: VcfSource,
    scores: Iterable[tuple[int, float]],
    path: Path,
    *,
    info_field: str = DEFAULT_INFO_FIELD,
    description: str = DEFAULT_DESCRIPTION,
) -> AnnotationSummary:
    """Write ``source`` to ``path`` with ``info_field`` holding the scores.

    ``scores`` gives ``(item index, score)`` in increasing index order (NaN: not scored). Raises
    ``ValueError`` when an index repeats, goes backwards, names a line that could not be parsed, or
    lies beyond the source's last item: the scores are not those of this source.
    """
    check_info_key(info_field)
    header = with_info_definition(source.header, info_field, "A", "Float", description)
    pending = iter(scores)
    upcoming = next(pending, None)
    index = records = annotated = placed = 0
    writer = open_vcf_writer(path, header.text())
    try:
        for read in source.records():
            if upcoming is not None and upcoming[0] < index:
                raise ValueError(
                    f"score for item {upcoming[0]} is out of order or for a line that was not read"
                )
            if read.record is None:
                index += 1
                continue
            alleles = len(split_alleles(read.record))
            values: list[float | None] = [None] * alleles
            while upcoming is not None and upcoming[0] < index + alleles:
                if upcoming[0] < index or values[upcoming[0] - index] is not None:
                    raise ValueError(f"score for item {upcoming[0]} repeats or is out of order")
                values[upcoming[0] - index] = float(upcoming[1])
                upcoming = next(pending, None)
            index += alleles
            scored = bool(read.record.alts) and any(v is not None and math.isfinite(v) for v in values)
            text = _with_info(read.text, info_field, values if scored else None)
            writer.write_record(writer.variant_from_string(text))
            records += 1
            annotated += scored
            placed += sum(v is not None and math.isfinite(v) for v in values) if scored else 0
        if upcoming is not None:
            raise ValueError(f"score for item {upcoming[0]} lies beyond the source's {index} item(s)")
    finally:
        writer.close()
    return AnnotationSummary(records=records, annotated=annotated, scores=placed)


def _with_info(text: str, key: str, values: list[float | None] | None) -> str:
    """The record line with ``key`` removed from INFO and, when ``values``, set to them."""
    columns = text.split("\t")
    info = columns[7]
    entries = [] if info == "." else [e for e in info.split(";") if e and e.partition("=")[0] != key]
    if values is not None:
        entries.append(f"{key}={','.join(_format(v) for v in values)}")
    columns[7] = ";".join(entries) or "."
    return "\t".join(columns)


def _format(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "."
    return f"{value:.6g}"
