"""The ``variant_scoring`` workload: score every ALT allele of a VCF, bgzipped VCF or BCF file.

Options (all optional)::

    sample: NA12878          # whose FORMAT values are read (default: the first sample)
    reference: ref.fa        # FASTA for the sequence-context features (default: none, neutral values);
                             # a relative path is taken from the source's folder
    info_field: MEDSERVE_SCORE   # the INFO field of the ``vcf`` sink
    input_name: features     # the model's input and output tensors
    output_name: score

An item is one ALT allele: a record with n ALT alleles gives n consecutive items (locators
``"line 57 ALT 1"``, ``"line 57 ALT 2"``; ``"line 57"`` alone for one ALT), a record whose ALT is
``.`` gives one item that fails, and a line that is not a valid record gives one failed item with the
reason. Result rows: ``index, chrom, pos, id, ref, alt, score``; ranked by ``score``, higher first.
The ``vcf`` sink is the source annotated with the scores (``medserve.clinical.genomics.annotated_vcf``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from medserve.clinical.genomics.annotated_vcf import DEFAULT_INFO_FIELD, write_annotated_vcf
from medserve.clinical.genomics.sequence_context import ReferenceGenome
from medserve.clinical.genomics.variant_features import variant_features
from medserve.clinical.genomics.variant_record import VariantAllele, split_alleles
from medserve.clinical.genomics.vcf_header import VcfFormatError, check_info_key
from medserve.clinical.genomics.vcf_reader import VcfSource
from medserve.jobs.workload import Item, ItemFailure, SourceError

if importlib.util.find_spec("cyvcf2") is None:  # the reader imports it when it opens a file; a server
    # without it refuses the workload at once, with what to install (jobs/workloads/__init__.py)
    raise ModuleNotFoundError("No module named 'cyvcf2'", name="cyvcf2")

OPTIONS: dict[str, str | None] = {
    "sample": None,
    "reference": None,
    "info_field": DEFAULT_INFO_FIELD,
    "input_name": "features",
    "output_name": "score",
}
"""Every option and its default."""

SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("chrom", pa.string()),
        ("pos", pa.int64()),
        ("id", pa.string()),
        ("ref", pa.string()),
        ("alt", pa.string()),
        ("score", pa.float32()),
    ]
)
"""The result rows."""


class VariantScoringWorkload:
    """Variant scoring over one VCF/BCF file (see the module docstring for the options)."""

    kind = "variant_scoring"
    rank_by: tuple[str, bool] | None = ("score", True)
    path_options: tuple[str, ...] = ("reference",)
    """Options that name files: a spec may resolve them against its own folder before construction."""

    def __init__(self, source: Path, options: Mapping[str, Any]) -> None:
        settings = _options(options)
        self.info_field = check_info_key(settings["info_field"] or DEFAULT_INFO_FIELD)
        self.input_name = settings["input_name"] or "features"
        self.output_name = settings["output_name"] or "score"
        try:
            self.source = VcfSource(Path(source), sample=settings["sample"])
        except VcfFormatError as exc:
            raise SourceError(str(exc)) from None
        except OSError as exc:
            raise SourceError(f"{source} cannot be read: {exc.strerror or exc}") from None
        self.reference: ReferenceGenome | None = None
        if settings["reference"] is not None:
            self.reference = _reference(Path(source), settings["reference"], self.source)

    def items(self) -> Iterator[Item | ItemFailure]:
        """One item per ALT allele of each record, one failure per unreadable line, in file order."""
        index = 0
        for read in self.source.records():
            if read.record is None:
                yield ItemFailure(index, read.locator, read.error or "not a VCF record")
                index += 1
                continue
            alleles = split_alleles(read.record)
            for allele in alleles:
                locator = read.locator if len(alleles) == 1 else f"{read.locator} ALT {allele.allele}"
                yield Item(index, locator, allele)
                index += 1

    def featurise(self, items: Sequence[Item]) -> tuple[dict[str, np.ndarray], list[Item], list[ItemFailure]]:
        """The feature matrix of the alleles that can be featurised; the others are failures."""
        alleles: list[VariantAllele] = []
        for item in items:
            if not isinstance(item.payload, VariantAllele):
                raise TypeError(
                    f"item {item.index} does not hold a variant allele: {type(item.payload).__name__}"
                )
            alleles.append(item.payload)
        matrix, errors = variant_features(alleles, self.reference)
        usable = [error is None for error in errors]
        kept = [item for item, ok in zip(items, usable) if ok]
        failures = [
            ItemFailure(item.index, item.locator, error)
            for item, error in zip(items, errors)
            if error is not None
        ]
        return {self.input_name: np.ascontiguousarray(matrix[np.flatnonzero(usable)])}, kept, failures

    def rows(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> pa.Table:
        """``index, chrom, pos, id, ref, alt, score`` for each scored allele."""
        if self.output_name not in outputs:
            raise ValueError(f"the model gave no output '{self.output_name}' (it gave {', '.join(outputs)})")
        scores = np.asarray(outputs[self.output_name], dtype=np.float32).reshape(len(items), -1)[:, 0]
        alleles: list[VariantAllele] = [item.payload for item in items]
        columns = [
            [item.index for item in items],
            [a.record.chrom for a in alleles],
            [a.record.pos for a in alleles],
            [a.record.id for a in alleles],
            [a.record.ref for a in alleles],
            [a.alt for a in alleles],
            scores,
        ]
        return pa.Table.from_arrays(
            [pa.array(column, type=field.type) for column, field in zip(columns, SCHEMA)], schema=SCHEMA
        )

    def write_sink(
        self, parts: Iterator[pa.Table], sink_format: str, path: Path, options: Mapping[str, Any]
    ) -> bool:
        """``vcf``: the source with each scored allele's score in ``info_field``; other formats are
        left to the runner."""
        if sink_format != "vcf":
            return False
        write_annotated_vcf(self.source, _scores(parts), Path(path), info_field=self.info_field)
        return True


def _options(options: Mapping[str, Any]) -> dict[str, str | None]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; expected some of {', '.join(OPTIONS)}")
    settings = dict(OPTIONS)
    for name, value in options.items():
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"option {name} must be a non-empty string, not {value!r}")
        settings[name] = value
    return settings


def _reference(source: Path, option: str, vcf: VcfSource) -> ReferenceGenome:
    path = Path(option).expanduser()
    if not path.is_absolute():
        path = source.parent / path
        if not path.is_file():
            raise ValueError(
                f"reference {path} is not a file (a relative reference is read from the source's folder)"
            )
    reference = ReferenceGenome(path)  # ValueError when not a readable FASTA
    contigs = vcf.header.contigs
    if contigs and not contigs & set(reference.lengths):
        reference.close()
        shown = ", ".join(sorted(contigs)[:5])
        raise ValueError(f"reference {path} has none of the VCF's contigs ({shown}...); is it the right one?")
    return reference


def _scores(parts: Iterator[pa.Table]) -> Iterator[tuple[int, float]]:
    for table in parts:
        yield from zip(table.column("index").to_pylist(), table.column("score").to_pylist())
