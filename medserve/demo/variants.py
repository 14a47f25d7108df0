"""Seeded synthetic variant calls: a one-sample VCF of true variants and sequencing artefacts over a
``synthetic_genome``, with the truth written apart (a TSV the features never read).

About 60 % of the records are true variants: SNVs with a transition/transversion ratio near 2.1,
small indels, a few multi-allelic sites (``1/2``); heterozygous allele fractions near 0.5 (some mosaic
ones lower), homozygous near 1; balanced strands; mapping quality near 60. The rest are artefacts,
each with one main mechanism and sometimes a second trait:

* ``low_allele_fraction``: ALT reads are 5-35 % of the depth (mis-mapped paralogues, errors);
* ``strand_bias``: ~93 % of ALT reads on one strand;
* ``low_mapping_quality``: MQ 15-42;
* ``homopolymer_context``: at or in a planted homopolymer or tandem repeat, mostly one-base indels
  of the run (polymerase slippage).

Other artefacts fall on low-complexity sequence more often than chance too, have a Ti/Tv near 0.8
and more often an inflated depth (collapsed repeats). QUAL follows the ALT depth and MQ, GQ the
smaller allele depth; FS and SOR are computed from the simulated strand counts. A few records lack
INFO/FS and SOR (6 %), MQ (3 %), GQ (2 %) or QUAL (1 %). The distributions overlap, so a scorer
cannot be perfect. FORMAT is ``GT:AD:DP:GQ:ADF:ADR``; the sample is ``SYNTHETIC_1``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medserve.clinical.genomics.annotated_vcf import open_vcf_writer, vcf_write_mode
from medserve.clinical.genomics.strand_bias import fisher_strand, strand_odds_ratio
from medserve.demo.genome import (
    HOMOPOLYMER,
    SyntheticGenome,
    synthetic_genome,
    write_reference,
)

MECHANISMS: tuple[str, ...] = (
    "true_variant",
    "low_allele_fraction",
    "strand_bias",
    "low_mapping_quality",
    "homopolymer_context",
)
"""The truth TSV's ``mechanism`` values; the first is the only true one."""
TRUE_FRACTION = 0.6
SAMPLE_NAME = "SYNTHETIC_1"
TRUTH_COLUMNS: tuple[str, ...] = ("chrom", "pos", "ref", "alt", "truth", "mechanism")
"""One TSV row per ALT allele, in VCF order; ``truth`` is 1 for a true variant, 0 for an artefact."""

_TRANSITION = {"A": "G", "G": "A", "C": "T", "T": "C"}
_HEADER_LINES = (
    '##INFO=<ID=DP,Number=1,Type=Integer,Description="Total read depth">',
    '##INFO=<ID=MQ,Number=1,Type=Float,Description="RMS mapping quality">',
    '##INFO=<ID=FS,Number=1,Type=Float,Description="Phred-scaled Fisher exact test of strand bias">',
    '##INFO=<ID=SOR,Number=1,Type=Float,Description="Symmetric odds ratio of strand bias">',
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">',
    '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">',
    '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">',
    '##FORMAT=<ID=ADF,Number=R,Type=Integer,Description="Allelic depths on the forward strand">',
    '##FORMAT=<ID=ADR,Number=R,Type=Integer,Description="Allelic depths on the reverse strand">',
)


def write_example_genomics(out_dir: Path, n: int = 2000, seed: int = 0) -> list[Path]:
    """Write an example input for a variant-scoring job to ``out_dir``: ``reference.fa`` (+ ``.fai``),
    ``variants.vcf.gz`` with ``n`` records and ``truth.tsv``; returns their paths in that order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_synthetic_calls(out_dir, n, seed, vcf_name="variants.vcf.gz")


def write_synthetic_calls(out_dir: Path, n: int, seed: int, *, vcf_name: str = "variants.vcf") -> list[Path]:
    """A synthetic genome and ``n`` variant records in ``out_dir``: ``[reference.fa, reference.fa.fai,
    <vcf_name>, truth.tsv]``. The same ``n`` and ``seed`` give the same files."""
    if n < 1:
        raise ValueError(f"the number of variants must be at least 1, not {n}")
    rng = np.random.default_rng(seed)
    genome = synthetic_genome(max(100_000, 60 * n), rng)
    paths = write_reference(genome, Path(out_dir) / "reference.fa")
    vcf, truth = Path(out_dir) / vcf_name, Path(out_dir) / "truth.tsv"
    write_synthetic_vcf(genome, n, rng, vcf, truth, seed=seed)
    return [*paths, vcf, truth]


def write_synthetic_vcf(
    genome: SyntheticGenome,
    n: int,
    rng: np.random.Generator,
    vcf_path: Path,
    truth_path: Path,
    *,
    seed: int = 0,
) -> None:
    """Write ``n`` records over ``genome`` to ``vcf_path`` (plain, ``.gz`` bgzipped or ``.bcf``) and
    their truth to ``truth_path``."""
    names = list(genome.sequences)
    sizes = np.array([genome.sequences[name].size for name in names], dtype=np.float64)
    counts = rng.multinomial(n, sizes / sizes.sum())
    header = _header(genome, seed)
    with open(truth_path, "w", encoding="utf-8") as truth, _line_sink(vcf_path, header) as write:
        truth.write("\t".join(TRUTH_COLUMNS) + "\n")
        for name, count in zip(names, counts.tolist()):
            for line, rows in _contig_records(genome, name, count, rng):
                write(line)
                truth.writelines("\t".join(row) + "\n" for row in rows)


def _header(genome: SyntheticGenome, seed: int) -> str:
    contigs = [f"##contig=<ID={name},length={seq.size}>" for name, seq in genome.sequences.items()]
    columns = "\t".join(
        ("#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", SAMPLE_NAME)
    )
    lines = [
        "##fileformat=VCFv4.2",
        f"##source=medserve synthetic variant calls (seed {seed}; not real data)",
        "##reference=reference.fa",
        *contigs,
        '##FILTER=<ID=PASS,Description="All filters passed">',
        *_HEADER_LINES,
        columns,
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _line_sink(path: Path, header: str) -> Iterator[Callable[[str], None]]:
    """A function writing one record line: to a text file, or through htslib for bgzipped VCF and BCF."""
    if vcf_write_mode(path) == "w":
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(header)

            def write_text(line: str) -> None:
                handle.write(line + "\n")

            yield write_text
        return
    writer = open_vcf_writer(path, header)
    try:

        def write_record(line: str) -> None:
            writer.write_record(writer.variant_from_string(line))

        yield write_record
    finally:
        writer.close()


def _contig_records(
    genome: SyntheticGenome, chrom: str, count: int, rng: np.random.Generator
) -> Iterator[tuple[str, list[tuple[str, ...]]]]:
    """(VCF line, truth rows) of ``count`` records on ``chrom``, in position order."""
    if count == 0:
        return
    sequence, planted = genome.sequences[chrom], genome.low_complexity[chrom]
    truth = rng.random(count) < TRUE_FRACTION
    mechanism = np.where(truth, 0, rng.choice([1, 2, 3, 4], size=count, p=[0.3, 0.25, 0.2, 0.25]))
    near = (mechanism == 4) | ((mechanism > 0) & (rng.random(count) < 0.35)) | (rng.random(count) < 0.05)
    element = rng.integers(planted.starts.size, size=count)
    slip = (mechanism == 4) & (rng.random(count) < 0.6)  # a one-step indel of the run
    offset = np.where(slip, -1, rng.integers(0, planted.lengths[element]))
    start = np.where(near, planted.starts[element] + offset, rng.integers(15, sequence.size - 30, size=count))
    start = _distinct(start, sequence.size, rng)
    order = np.argsort(start, kind="stable")
    truth, mechanism, slip, start, element = (
        truth[order],
        mechanism[order],
        slip[order],
        start[order],
        element[order],
    )
    homopolymer = planted.kinds[element] == HOMOPOLYMER
    kind = rng.choice(3, size=count, p=[0.86, 0.07, 0.07])  # SNV, deletion, insertion
    kind = np.where(slip, np.where(rng.random(count) < 0.5, 1, 2), kind)
    multi = truth & (kind == 0) & (rng.random(count) < 0.04)
    transition = rng.random(count) < np.where(truth, 0.68, 0.45)
    values = _numbers(truth, mechanism, multi, rng)
    for i in range(count):
        shape = _Shape(int(kind[i]), bool(slip[i]), bool(homopolymer[i]), bool(multi[i]), bool(transition[i]))
        ref, alts = _alleles(genome, chrom, int(start[i]), shape, rng)
        pos = int(start[i]) + 1
        label = MECHANISMS[int(mechanism[i])]
        rows: list[tuple[str, ...]] = [
            (chrom, str(pos), ref, alt, "1" if truth[i] else "0", label) for alt in alts
        ]
        yield _line(chrom, pos, ref, alts, values, i), rows


def _distinct(start: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``start`` with repeated positions moved to fresh random ones."""
    start = start.copy()
    while True:
        _, first = np.unique(start, return_index=True)
        repeated = np.setdiff1d(np.arange(start.size), first)
        if repeated.size == 0:
            return start
        start[repeated] = rng.integers(15, size - 30, size=repeated.size)


class _Shape(NamedTuple):
    kind: int
    """0 SNV, 1 deletion, 2 insertion."""
    slip: bool
    """A one-step indel of the low-complexity run after the anchor."""
    homopolymer: bool
    multi: bool
    transition: bool


def _alleles(
    genome: SyntheticGenome, chrom: str, start: int, shape: _Shape, rng: np.random.Generator
) -> tuple[str, list[str]]:
    kind, slip, homopolymer, multi, transition = shape
    base = genome.bases(chrom, start, start + 1)
    if kind == 0:
        others = [b for b in "ACGT" if b != base and b != _TRANSITION[base]]
        alt = _TRANSITION[base] if transition else others[int(rng.integers(2))]
        if not multi:
            return base, [alt]
        second = [b for b in "ACGT" if b not in (base, alt)][int(rng.integers(2))]
        return base, [alt, second]
    length = (1 if homopolymer else int(rng.integers(2, 4))) if slip else int(min(rng.geometric(0.5), 8))
    if kind == 1:  # deletion of the bases after the anchor
        return genome.bases(chrom, start, start + 1 + length), [base]
    if slip:  # insertion copying the run that follows the anchor
        return base, [base + genome.bases(chrom, start + 1, start + 1 + length)]
    inserted = "".join("ACGT"[j] for j in rng.integers(4, size=length))
    return base, [base + inserted]


def _numbers(
    truth: np.ndarray, mechanism: np.ndarray, multi: np.ndarray, rng: np.random.Generator
) -> dict[str, Any]:
    """Depths, strand counts, qualities and missing-field masks, one entry per record."""
    count = truth.size
    artefact = ~truth
    hom = np.where(truth & ~multi, rng.random(count) < 0.38, rng.random(count) < 0.06) & ~multi
    depth = rng.negative_binomial(8, 8 / (8 + 35), size=count) + 4
    depth = np.where(artefact & (rng.random(count) < 0.2), (depth * 2.2).astype(np.int64), depth)
    mosaic = rng.random(count) < 0.05
    fraction = np.select(
        [truth & (hom | multi), truth & mosaic, truth, hom, mechanism == 1, mechanism == 2, mechanism == 3],
        [
            np.full(count, 0.985),
            rng.beta(3, 9, count),
            rng.beta(40, 40, count),
            np.full(count, 0.9),
            rng.beta(2, 9, count),
            rng.beta(4, 6, count),
            rng.beta(5, 6, count),
        ],
        rng.beta(3, 7, count),
    )
    alt = np.clip(rng.binomial(depth, fraction), np.where(multi, 2, 1), None)
    depth = np.maximum(depth, alt)
    ref = depth - alt
    first = np.where(multi, np.clip(rng.binomial(alt, 0.5), 1, np.maximum(alt - 1, 1)), alt)
    side = np.where(rng.random(count) < 0.5, 0.93, 0.07)
    mild = np.where(rng.random(count) < 0.5, 0.82, 0.18)
    strand = np.where(mechanism == 2, side, rng.beta(30, 30, count))
    strand = np.where(
        (artefact & (mechanism != 2) & (rng.random(count) < 0.25)) | (truth & (rng.random(count) < 0.02)),
        mild,
        strand,
    )
    ref_fwd = rng.binomial(ref, rng.beta(30, 30, count))
    first_fwd = rng.binomial(first, strand)
    second_fwd = rng.binomial(alt - first, strand)
    duplicated_region = truth & (rng.random(count) < 0.06)
    second_trait = rng.random(count) < 0.2
    mq = np.select(
        [duplicated_region, truth, mechanism == 3, second_trait],
        [rng.uniform(38, 55, count), 60 - rng.exponential(1.0, count), rng.uniform(15, 42, count)]
        + [rng.uniform(30, 50, count)],
        60 - rng.exponential(3.0, count),
    )
    mq = np.clip(mq, 0, 60)
    qual = alt * rng.uniform(2.8, 4.4, count) * (mq / 60) ** 2 * np.where(hom, 1.2, 1.0)
    qual = qual + rng.normal(0, 5, count)
    gq = np.where(hom, 3.0 * alt - 3.0 * ref, 3.0 * np.minimum(ref, alt)) + rng.normal(0, 5, count)
    alt_fwd = first_fwd + second_fwd
    return {
        "multi": multi,
        "gt": np.where(multi, "1/2", np.where(hom, "1/1", "0/1")),
        "depth": depth,
        "ad": np.stack([ref, first, alt - first], axis=1),
        "fwd": np.stack([ref_fwd, first_fwd, second_fwd], axis=1),
        "rev": np.stack([ref - ref_fwd, first - first_fwd, alt - first - second_fwd], axis=1),
        "qual": np.clip(qual, 1, 5000),
        "gq": np.clip(np.rint(gq), 0, 99).astype(np.int64),
        "mq": mq,
        "fs": fisher_strand(ref_fwd, ref - ref_fwd, alt_fwd, alt - alt_fwd),
        "sor": strand_odds_ratio(ref_fwd, ref - ref_fwd, alt_fwd, alt - alt_fwd),
        "no_strand": rng.random(count) < 0.06,
        "no_mq": rng.random(count) < 0.03,
        "no_gq": rng.random(count) < 0.02,
        "no_qual": rng.random(count) < 0.01,
    }


def _line(chrom: str, pos: int, ref: str, alts: list[str], v: dict[str, Any], i: int) -> str:
    width = 3 if v["multi"][i] else 2

    def listed(key: str) -> str:
        return ",".join(str(x) for x in v[key][i, :width].tolist())

    info = [f"DP={int(v['depth'][i])}"]
    if not v["no_mq"][i]:
        info.append(f"MQ={v['mq'][i]:.2f}")
    if not v["no_strand"][i]:
        info.append(f"FS={v['fs'][i]:.3f};SOR={v['sor'][i]:.3f}")
    qual = "." if v["no_qual"][i] else f"{v['qual'][i]:.2f}"
    gq = "." if v["no_gq"][i] else str(int(v["gq"][i]))
    sample = f"{v['gt'][i]}:{listed('ad')}:{int(v['depth'][i])}:{gq}:{listed('fwd')}:{listed('rev')}"
    return "\t".join(
        (
            chrom,
            str(pos),
            ".",
            ref,
            ",".join(alts),
            qual,
            "PASS",
            ";".join(info),
            "GT:AD:DP:GQ:ADF:ADR",
            sample,
        )
    )
