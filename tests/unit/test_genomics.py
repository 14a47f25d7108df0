"""Genomics: VCF/VCF.gz/BCF reading with malformed lines as failures, variant features on hand-written
records, the annotated-VCF writer, the synthetic calls, the ``variant_scorer`` example model and the
``variant_scoring`` workload end to end with onnxruntime."""

from __future__ import annotations

import gzip
import math
import sys
from pathlib import Path

import cyvcf2
import numpy as np
import pytest
from scipy.stats import fisher_exact

from medserve.clinical.genomics.annotated_vcf import open_vcf_writer, write_annotated_vcf
from medserve.clinical.genomics.sequence_context import ReferenceGenome, gc_fraction, homopolymer_run
from medserve.clinical.genomics.strand_bias import BALANCED_SOR, fisher_strand, strand_odds_ratio
from medserve.clinical.genomics.variant_features import COLUMN, FEATURE_COUNT, FEATURE_NAMES, variant_features
from medserve.clinical.genomics.variant_record import split_alleles
from medserve.clinical.genomics.vcf_reader import VcfSource
from medserve.demo.variants import (
    MECHANISMS,
    TRUTH_COLUMNS,
    write_example_genomics,
    write_synthetic_calls,
)
from medserve.jobs.workload import Item, SourceError
from medserve.jobs.workloads.genomics import VariantScoringWorkload

CHR1 = "ACGTACGTACGGGGGGTACCATATATATATCCCCCAAAAAGCGCGCGCGCTTTTTTTTTT"
CHR2 = "ACGT" * 10
HEADER = [
    "##fileformat=VCFv4.2",
    "##contig=<ID=chr1,length=60>",
    "##contig=<ID=chr2,length=40>",
    '##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">',
    '##INFO=<ID=MQ,Number=1,Type=Float,Description="Mapping quality">',
    '##INFO=<ID=FS,Number=1,Type=Float,Description="Fisher strand">',
    '##INFO=<ID=SOR,Number=1,Type=Float,Description="Strand odds ratio">',
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allele depths">',
    '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">',
    '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">',
    '##FORMAT=<ID=ADF,Number=R,Type=Integer,Description="Forward allele depths">',
    '##FORMAT=<ID=ADR,Number=R,Type=Integer,Description="Reverse allele depths">',
    '##FORMAT=<ID=SB,Number=4,Type=Integer,Description="Strand counts">',
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\tS2",
]


def row(*columns: str) -> str:
    return "\t".join(columns)


# Line numbers count from 1 with the 15 header lines; records start at line 16.
GOOD = {
    16: row("chr1", "5", "rs5", "A", "G", "50", "PASS", "DP=30;MQ=59.5;FS=1.5;SOR=0.8", "GT:AD:DP:GQ",
            "0/1:13,7:20:45", "1/1:0,25:25:80"),
    17: row("chr1", "16", ".", "G", "C,A", "40", "PASS", "DP=50", "GT:AD:DP:GQ:ADF:ADR",
            "1/2:2,30,18:50:60:1,20,3:1,10,15", "0/0:30,0,0:30:99:15,0,0:15,0,0"),
    18: row("chr2", "8", ".", "T", "TA", "30", "PASS", "DP=12;SOR=1.2;FS=3.0;MQ=40", "GT:AD:GQ:SB",
            "./1:5,7:20:3,2,6,1", "0/1:6,6:30:3,3,3,3"),
    19: row("chr2", "12", ".", "T", "G", ".", "PASS", ".", "GT:AD:GQ:SB", "0/1:.:.:4,4,1,9", "0/0:.:.:."),
    20: row("chr1", "30", ".", "T", ".", "10", "PASS", "DP=5", "GT", "0/0", "0/0"),
    21: row("chr1", "35", ".", "C", "<DEL>,A", "20", "PASS", "DP=10", "GT:AD", "0/2:5,0,5", "0/0:10,0,0"),
    22: row("chr1", "41", ".", "G", "A", "60", "PASS", "DP=x", "GT:AD", "0/1:3,3", "0/0:6,0"),
    23: row("chr1", "52", ".", "T", "C", "50", "PASS", "DP=10", "GT:AD", "0/3:5,5", "0/0:10,0"),
    32: row("chr1", "55", ".", "T", "TT", "35", "PASS", "DP=22;MQ=60", "GT:AD:DP:GQ", "0/1:10,12:22:50",
            "0/1:11,11:22:50"),
}  # fmt: skip
MALFORMED = {
    24: (row("chr1", "abc", ".", "A", "G", "50", "PASS", "DP=1", "GT", "0/1", "0/1"), "POS 'abc'"),
    25: (row("chr1", "7", ".", "G", "A", "50", "PASS", "DP=1", "GT", "0/1"), "10 tab-separated column"),
    26: (row("chrX", "9", ".", "A", "G", "50", "PASS", "DP=1", "GT", "0/1", "0/1"), "CHROM 'chrX' is not"),
    27: (row("chr1", "9", ".", "A", "G", "high", "PASS", "DP=1", "GT", "0/1", "0/1"), "QUAL 'high'"),
    28: (row("chr1", "9", ".", "A", "X", "50", "PASS", "DP=1", "GT", "0/1", "0/1"), "ALT allele 'X'"),
    29: (row("chr1", "9", ".", "A", "G", "50", "PASS", "DP=1", "GT:AD", "0/1:x,1", "0/0:1,0"), "htslib"),
    31: (row("chr1", "10", ".", "C", "T", "50", "PASS", "DP=1", "GT:GQ", "0/1:5:7", "0/0:9"), "3 values"),
    33: ("chr1\t58\t.\tT\tC\t5", "6 tab-separated column"),
}  # fmt: skip
LAST_LINE = 33


def vcf_text() -> str:
    lines = list(HEADER)
    for number in range(16, LAST_LINE + 1):
        if number in GOOD:
            lines.append(GOOD[number])
        elif number in MALFORMED:
            lines.append(MALFORMED[number][0])
        else:
            lines.append("")  # line 30: blank, skipped without an ordinal
    return "\n".join(lines)  # the truncated last line has no line end


@pytest.fixture()
def vcf(tmp_path: Path) -> Path:
    path = tmp_path / "calls.vcf"
    path.write_text(vcf_text(), encoding="utf-8")
    return path


@pytest.fixture()
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "ref.fa"
    path.write_text(f">chr1\n{CHR1[:30]}\n{CHR1[30:]}\n>chr2\n{CHR2}\n", encoding="ascii")
    return path


def good_only(tmp_path: Path, lines: list[int]) -> Path:
    path = tmp_path / "good.vcf"
    path.write_text("\n".join([*HEADER, *(GOOD[n] for n in lines)]) + "\n", encoding="utf-8")
    return path


# -- reading --------------------------------------------------------------------------------------


def test_malformed_lines_become_failures_with_their_line_numbers(vcf: Path) -> None:
    reads = list(VcfSource(vcf).records())
    assert [r.ordinal for r in reads] == list(range(len(reads)))
    by_line = {int(r.locator.split()[1]): r for r in reads}
    assert set(by_line) == set(GOOD) | set(MALFORMED)  # line 30 (blank) takes no ordinal
    for number, (_, reason) in MALFORMED.items():
        assert by_line[number].record is None and reason in str(by_line[number].error), number
    for number in GOOD:
        assert by_line[number].record is not None and by_line[number].error is None, number
    record = by_line[17].record
    assert record is not None
    assert (record.chrom, record.pos, record.id, record.ref, record.alts, record.qual) == (
        "chr1", 16, ".", "G", ("C", "A"), 40.0,
    )  # fmt: skip
    assert record.info == {"DP": "50"} and record.sample["AD"] == "2,30,18"


def test_plain_gzip_and_bcf_read_alike(tmp_path: Path, vcf: Path) -> None:
    compressed = tmp_path / "calls.vcf.gz"
    compressed.write_bytes(gzip.compress(vcf.read_bytes()))
    plain, zipped = list(VcfSource(vcf).records()), list(VcfSource(compressed).records())
    assert plain == zipped
    # BCF holds only valid records (DP=x would be stored as missing): compare those.
    lines = [16, 17, 18, 19, 20, 21, 23, 32]
    text = good_only(tmp_path, lines)
    bcf = tmp_path / "calls.bcf"
    writer = open_vcf_writer(bcf, VcfSource(text).header.text())
    for number in lines:
        writer.write_record(writer.variant_from_string(GOOD[number]))
    writer.close()
    source = VcfSource(bcf, sample="S2")
    assert source.format == "bcf" and source.header.samples == ("S1", "S2")
    from_bcf = list(source.records())
    from_text = list(VcfSource(text, sample="S2").records())
    assert [r.locator for r in from_bcf] == [f"record {i}" for i in range(1, len(lines) + 1)]
    for a, b in zip(from_bcf, from_text):
        assert a.record is not None and b.record is not None
        assert (a.record.chrom, a.record.pos, a.record.ref, a.record.alts, a.record.qual) == (
            b.record.chrom, b.record.pos, b.record.ref, b.record.alts, b.record.qual,
        )  # fmt: skip
        assert a.record.sample == b.record.sample


def test_a_truncated_gzip_stream_ends_with_one_failure(tmp_path: Path) -> None:
    source = tmp_path / "many.vcf"
    body = "".join(GOOD[16].replace("\t5\t", f"\t{p}\t") + "\n" for p in range(1, 3001))
    source.write_text("\n".join(HEADER) + "\n" + body, encoding="utf-8")
    broken = tmp_path / "broken.vcf.gz"
    data = gzip.compress(source.read_bytes())
    broken.write_bytes(data[: len(data) // 2])
    reads = list(VcfSource(broken).records())
    assert all(r.record is not None for r in reads[:-2]) and 0 < len(reads) < 3000
    assert reads[-1].record is None and "cannot be read past line" in str(reads[-1].error)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"chrom,pos\nchr1,5\n", "not a VCF or BCF file"),
        (b"##fileformat=VCFv4.2\n##INFO=<ID=DP>\nchr1\t5\n", "expected the '#CHROM' header line"),
        (b"##fileformat=VCFv4.2\n#CHROM\tPOS\tREF\n", "must start with the tab-separated columns"),
        (gzip.compress(b"not a vcf at all"), "gzip-compressed data"),
    ],
)
def test_unreadable_sources_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "source.vcf"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        VariantScoringWorkload(path, {})


def test_missing_file_unknown_sample_and_bad_options(tmp_path: Path, vcf: Path, reference: Path) -> None:
    with pytest.raises(SourceError, match="cannot be read"):
        VariantScoringWorkload(tmp_path / "absent.vcf", {})
    with pytest.raises(SourceError, match="sample 'S9' is not in the file"):
        VariantScoringWorkload(vcf, {"sample": "S9"})
    with pytest.raises(ValueError, match="unknown option"):
        VariantScoringWorkload(vcf, {"samples": "S1"})
    with pytest.raises(ValueError, match="not a valid INFO key"):
        VariantScoringWorkload(vcf, {"info_field": "1 score"})
    with pytest.raises(ValueError, match="is not a file"):
        VariantScoringWorkload(vcf, {"reference": "nowhere.fa"})
    other = tmp_path / "other.fa"
    other.write_text(">1\nACGT\n", encoding="ascii")
    with pytest.raises(ValueError, match="none of the VCF's contigs"):
        VariantScoringWorkload(vcf, {"reference": str(other)})
    workload = VariantScoringWorkload(vcf, {"reference": reference.name, "sample": "S2"})  # beside the VCF
    assert workload.reference is not None and workload.source.sample == "S2"


# -- features -------------------------------------------------------------------------------------


def features_of(
    path: Path, reference: Path | None, sample: str | None = None
) -> dict[str, tuple[dict[str, float], str | None]]:
    source = VcfSource(path, sample=sample)
    alleles = [a for r in source.records() if r.record is not None for a in split_alleles(r.record)]
    genome = ReferenceGenome(reference) if reference is not None else None
    matrix, errors = variant_features(alleles, genome)
    assert matrix.shape == (len(alleles), FEATURE_COUNT) and matrix.dtype == np.float32
    keys = [f"{a.record.chrom}:{a.record.pos}:{a.alt}" for a in alleles]
    return {
        key: ({name: float(matrix[i, j]) for j, name in enumerate(FEATURE_NAMES)}, errors[i])
        for i, key in enumerate(keys)
    }


def expect(values: dict[str, float], **expected: float) -> None:
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name


def test_features_of_hand_written_records(vcf: Path, reference: Path) -> None:
    f = features_of(vcf, reference)
    snv, error = f["chr1:5:G"]
    assert error is None
    expect(
        snv,
        qual=50,
        qual_present=1,
        depth=20,
        depth_present=1,
        allele_balance=0.35,
        alt_depth=7,
        allele_depth_present=1,
        fisher_strand=1.5,
        fisher_strand_present=1,
        strand_odds_ratio=0.8,
        strand_odds_ratio_present=1,
        genotype_quality=45,
        genotype_quality_present=1,
        mapping_quality=59.5,
        mapping_quality_present=1,
        is_het=1,
        is_hom_alt=0,
        is_snv=1,
        is_indel=0,
        indel_length=0,
        is_transition=1,
        is_transversion=0,
        gc_fraction=10 / 15,
        homopolymer_run=1,
        context_present=1,
    )
    # Multi-allelic 1/2: each ALT has its own depth, balance and strand table (SOR from ADF/ADR).
    first, second = f["chr1:16:C"][0], f["chr1:16:A"][0]
    expect(
        first,
        allele_balance=30 / 50,
        alt_depth=30,
        is_het=1,
        is_transversion=1,
        is_transition=0,
        strand_odds_ratio=sor_by_hand(1, 1, 20, 10),
        strand_odds_ratio_present=1,
        fisher_strand_present=0,
        mapping_quality_present=0,
        gc_fraction=11 / 21,
        homopolymer_run=6,
    )
    expect(
        second,
        allele_balance=18 / 50,
        alt_depth=18,
        is_het=1,
        is_transition=1,
        strand_odds_ratio=sor_by_hand(1, 1, 3, 15),
    )
    # INFO/DP when FORMAT/DP is absent; INFO/SOR wins over SB; a half-missing genotype is neither.
    insertion = f["chr2:8:TA"][0]
    expect(
        insertion,
        depth=12,
        allele_balance=7 / 12,
        strand_odds_ratio=1.2,
        fisher_strand=3.0,
        mapping_quality=40,
        is_het=0,
        is_hom_alt=0,
        is_snv=0,
        is_indel=1,
        indel_length=1,
        is_transition=0,
        is_transversion=0,
        gc_fraction=0.5,
    )
    # Missing QUAL, AD and GQ take neutral values; SOR comes from FORMAT/SB.
    sparse = f["chr2:12:G"][0]
    expect(
        sparse,
        qual=0,
        qual_present=0,
        depth=0,
        depth_present=0,
        allele_balance=0.5,
        allele_depth_present=0,
        genotype_quality_present=0,
        strand_odds_ratio=sor_by_hand(4, 4, 1, 9),
        is_transversion=1,
    )
    # No strand information at all: neutral FS and SOR (a balanced table's ln 2), flagged absent.
    homopolymer = f["chr1:55:TT"][0]
    expect(
        homopolymer,
        homopolymer_run=10,
        gc_fraction=6 / 16,
        indel_length=1,
        is_indel=1,
        fisher_strand=0,
        fisher_strand_present=0,
        strand_odds_ratio=math.log(2),
        strand_odds_ratio_present=0,
    )


def sor_by_hand(rf: int, rr: int, af: int, ar: int) -> float:
    rf, rr, af, ar = rf + 1, rr + 1, af + 1, ar + 1
    ratio = (rf * ar) / (af * rr)
    return (
        math.log(ratio + 1 / ratio)
        + math.log(min(rf, rr) / max(rf, rr))
        - math.log(min(af, ar) / max(af, ar))
    )


def test_alleles_that_cannot_be_featurised_say_why(vcf: Path, reference: Path) -> None:
    f = features_of(vcf, reference)
    assert "no ALT allele" in str(f["chr1:30:."][1])
    assert "not a base string" in str(f["chr1:35:<DEL>"][1]) and f["chr1:35:A"][1] is None
    assert "INFO/DP 'x' is not a number" in str(f["chr1:41:A"][1])
    assert "names allele 3" in str(f["chr1:52:C"][1])
    assert all(v == 0 for v in f["chr1:41:A"][0].values())


def test_the_sample_option_and_reference_checks(tmp_path: Path, vcf: Path, reference: Path) -> None:
    second = features_of(vcf, None, sample="S2")["chr1:5:G"][0]
    expect(
        second,
        depth=25,
        allele_balance=1.0,
        is_het=0,
        is_hom_alt=1,
        genotype_quality=80,
        gc_fraction=0.5,
        homopolymer_run=1,
        context_present=0,
    )
    wrong = tmp_path / "wrong.fa"
    wrong.write_text(f">chr1\n{'C' * 60}\n", encoding="ascii")
    f = features_of(vcf, wrong)
    assert "differs from the reference 'C' at chr1:5" in str(f["chr1:5:G"][1])
    assert "contig 'chr2' is not in the reference" in str(f["chr2:8:TA"][1])


def test_a_sites_only_vcf_with_crlf_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "sites.vcf"
    lines = [
        *HEADER[:7],
        "\t".join(HEADER[-1].split("\t")[:8]),
        row("chr1", "5", ".", "A", "C", "9", ".", "DP=4"),
    ]
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    source = VcfSource(path)
    assert source.sample is None and source.header.samples == ()
    (read,) = list(source.records())
    assert read.record is not None and read.record.sample == {} and read.text.endswith("DP=4")
    values = features_of(path, None)["chr1:5:C"][0]
    expect(values, qual=9, depth=4, allele_depth_present=0, is_het=0, is_hom_alt=0, is_transversion=1)


def test_sequence_context_and_strand_statistics() -> None:
    windows = np.frombuffer(b"NNNNNNNNNNAAAAGGCCNNNACGTACGTACGTACGTACGTA", dtype=np.uint8).reshape(2, 21)
    assert gc_fraction(windows).tolist() == pytest.approx([4 / 8, 10 / 21])
    assert homopolymer_run(windows).tolist() == [4.0, 1.0]
    rng = np.random.default_rng(3)
    tables = rng.integers(0, 40, size=(200, 4))
    expected = [-10 * math.log10(fisher_exact([[a, b], [c, d]])[1]) for a, b, c, d in tables]
    assert fisher_strand(*tables.T) == pytest.approx(np.maximum(expected, 0), abs=1e-6)
    assert strand_odds_ratio(*np.array([[20, 20, 10, 10]]).T)[0] == pytest.approx(BALANCED_SOR)
    assert strand_odds_ratio(*np.array([[20, 20, 19, 1]]).T)[0] > 2


# -- annotated VCF --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["scored.vcf", "scored.vcf.gz", ".scored.vcf.gz.x1y2.partial", "scored.bcf"])
def test_annotated_vcf_round_trip(tmp_path: Path, vcf: Path, reference: Path, name: str) -> None:
    workload = VariantScoringWorkload(vcf, {"reference": str(reference), "info_field": "QSCORE"})
    entries = list(workload.items())
    items = [e for e in entries if isinstance(e, Item)]
    _, kept, failures = workload.featurise(items)
    scores = {item.index: (item.index + 1) / 100 for item in kept}
    table = workload.rows(kept, {"score": np.array([[scores[i.index]] for i in kept], dtype=np.float32)})
    out = tmp_path / name
    assert workload.write_sink(iter([table.slice(0, 3), table.slice(3)]), "vcf", out, {})
    assert workload.write_sink(iter([]), "parquet", out, {}) is False
    if ".gz" in name:
        assert out.read_bytes()[:2] == b"\x1f\x8b"
    written = cyvcf2.VCF(str(out))
    definition = written.get_header_type("QSCORE")
    assert (definition["Number"], definition["Type"]) == ("A", "Float")
    originals = {(v.CHROM, v.POS): v for v in cyvcf2.VCF(str(good_only(tmp_path, sorted(GOOD))))}
    records = list(written)
    assert [(v.CHROM, v.POS) for v in records] == list(originals)  # malformed lines are left out
    got = {(v.CHROM, v.POS): v.INFO.get("QSCORE") for v in records}
    assert got[("chr1", 5)] == pytest.approx(0.01)
    assert got[("chr1", 16)] == pytest.approx((0.02, 0.03))
    assert got[("chr1", 35)][0] is None and got[("chr1", 35)][1] == pytest.approx(0.08)  # <DEL> unscored
    for unscored in (("chr1", 30), ("chr1", 41), ("chr1", 52)):
        assert got[unscored] is None
    assert {f.index for f in failures} == {5, 6, 8, 9}
    for v in records:
        original = originals[(v.CHROM, v.POS)]
        assert (v.REF, v.ALT, v.ID, v.QUAL, v.FILTER) == (
            original.REF,
            original.ALT,
            original.ID,
            original.QUAL,
            original.FILTER,
        )
        assert dict(original.INFO) == {k: val for k, val in dict(v.INFO).items() if k != "QSCORE"}
        assert v.genotypes == original.genotypes
        if "AD" in original.FORMAT:
            assert v.format("AD").tolist() == original.format("AD").tolist()


def test_scores_that_do_not_belong_to_the_source_are_refused(tmp_path: Path, vcf: Path) -> None:
    source = VcfSource(vcf)
    with pytest.raises(ValueError, match="line that was not read|out of order"):
        write_annotated_vcf(source, iter([(0, 0.5), (10, 0.5)]), tmp_path / "a.vcf")  # index 10: bad POS line
    with pytest.raises(ValueError, match="beyond the source"):
        write_annotated_vcf(source, iter([(99, 0.5)]), tmp_path / "b.vcf")


def test_rescoring_an_annotated_file_replaces_the_old_field(tmp_path: Path, vcf: Path) -> None:
    first = tmp_path / "first.vcf"
    write_annotated_vcf(VcfSource(vcf), iter([(0, 0.25)]), first)
    second = tmp_path / "second.vcf"
    summary = write_annotated_vcf(VcfSource(first), iter([(1, 0.75)]), second)
    assert (summary.records, summary.annotated, summary.scores) == (len(GOOD), 1, 1)
    text = second.read_text(encoding="utf-8")
    assert text.count("##INFO=<ID=MEDSERVE_SCORE") == 1 and "0.25" not in text
    assert [v.INFO.get("MEDSERVE_SCORE") for v in cyvcf2.VCF(str(second))][:2] == [None, (0.75, None)]


# -- synthetic calls ------------------------------------------------------------------------------


def test_synthetic_calls_are_deterministic_and_realistic(tmp_path: Path) -> None:
    def calls(folder: str, seed: int) -> list[Path]:
        (tmp_path / folder).mkdir()
        return write_synthetic_calls(tmp_path / folder, 1500, seed=seed)

    first, again, other = calls("a", 11), calls("b", 11), calls("c", 12)
    assert [p.name for p in first] == ["reference.fa", "reference.fa.fai", "variants.vcf", "truth.tsv"]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, again))
    assert first[2].read_bytes() != other[2].read_bytes()
    truth = [line.split("\t") for line in first[3].read_text(encoding="utf-8").splitlines()]
    assert tuple(truth[0]) == TRUTH_COLUMNS and {t[5] for t in truth[1:]} == set(MECHANISMS)
    source = VcfSource(first[2])
    reads = list(source.records())
    assert len(reads) == 1500 and all(r.record is not None for r in reads)
    alleles = [a for r in reads if r.record is not None for a in split_alleles(r.record)]
    assert [(a.record.chrom, str(a.record.pos), a.record.ref, a.alt) for a in alleles] == [
        tuple(t[:4]) for t in truth[1:]
    ]
    matrix, errors = variant_features(alleles, ReferenceGenome(first[0]))  # every REF matches the FASTA
    assert errors == [None] * len(alleles)
    true = np.array([t[4] == "1" for t in truth[1:]])
    assert 0.5 < true.mean() < 0.7

    def mean(name: str, mask: np.ndarray) -> float:
        return float(matrix[mask, COLUMN[name]].mean())

    snv = matrix[:, COLUMN["is_snv"]] == 1
    ti_tv_true = mean("is_transition", true & snv) / mean("is_transversion", true & snv)
    ti_tv_artefact = mean("is_transition", ~true & snv) / mean("is_transversion", ~true & snv)
    assert ti_tv_true > 1.7 and ti_tv_artefact < 1.2
    assert mean("homopolymer_run", ~true) > mean("homopolymer_run", true) + 1
    assert mean("mapping_quality", ~true) < mean("mapping_quality", true) - 5
    assert mean("strand_odds_ratio", ~true) > mean("strand_odds_ratio", true)
    het = matrix[:, COLUMN["is_het"]] == 1
    assert mean("allele_balance", ~true & het) < mean("allele_balance", true & het) - 0.1


def test_example_job_input(tmp_path: Path) -> None:
    paths = write_example_genomics(tmp_path / "example", n=50, seed=1)
    assert [p.name for p in paths] == ["reference.fa", "reference.fa.fai", "variants.vcf.gz", "truth.tsv"]
    source = VcfSource(paths[2])
    assert source.compressed and source.header.samples == ("SYNTHETIC_1",)
    assert sum(r.record is not None for r in source.records()) == 50
    workload = VariantScoringWorkload(paths[2], {"reference": "reference.fa"})
    items = [e for e in workload.items() if isinstance(e, Item)]
    assert workload.featurise(items)[2] == []


# -- the example model and the workload end to end ------------------------------------------------


def test_a_server_without_cyvcf2_refuses_the_variant_workload_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from medserve.jobs.workloads import open_workload
    from medserve.values.errors import InvalidInput

    monkeypatch.setitem(sys.modules, "cyvcf2", None)  # what an install without it finds
    monkeypatch.delitem(sys.modules, "medserve.jobs.workloads.genomics", raising=False)
    with pytest.raises(InvalidInput) as refused:
        open_workload("variant_scoring", tmp_path / "calls.vcf", {})
    assert "needs cyvcf2 and pyfaidx (pip install 'medserve[jobs]')" in str(refused.value)
    assert "No module named 'cyvcf2'" in str(refused.value)
