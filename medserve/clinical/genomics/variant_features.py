"""Features of one ALT allele of a VCF record, in a fixed order (``FEATURE_NAMES``), float32.

A record with several ALT alleles gives one ``VariantAllele`` per ALT, each scored on its own (its
allele depth, genotype and type); a record whose ALT is ``.`` gives one allele 0, which cannot be
scored. FORMAT values come from the one sample the reader kept. A field that is absent or ``.``
takes the neutral value below and sets its ``*_present`` indicator to 0:

====  ==========================  ==========================================================  =======
col   name                        value                                                       neutral
====  ==========================  ==========================================================  =======
0     qual                        QUAL                                                        0
1     qual_present
2     depth                       FORMAT/DP, else INFO/DP, else the sum of FORMAT/AD          0
3     depth_present
4     allele_balance              AD[allele] / sum(AD) (FORMAT/AD)                            0.5
5     alt_depth                   AD[allele]                                                  0
6     allele_depth_present        FORMAT/AD present with a non-zero total
7     fisher_strand               INFO/FS (Phred-scaled Fisher strand test)                   0
8     fisher_strand_present
9     strand_odds_ratio           INFO/SOR, else SOR of FORMAT/ADF+ADR (REF, allele) or SB    ln 2
10    strand_odds_ratio_present
11    genotype_quality            FORMAT/GQ                                                   0
12    genotype_quality_present
13    mapping_quality             INFO/MQ (RMS mapping quality)                               0
14    mapping_quality_present
15    is_het                      GT holds the allele and a different allele
16    is_hom_alt                  every GT allele is this allele (no missing calls)
17    is_snv                      REF and ALT are single bases
18    is_indel                    REF and ALT lengths differ
19    indel_length                len(ALT) - len(REF) for indels, else 0
20    is_transition               SNV A<->G or C<->T
21    is_transversion             SNV between a purine and a pyrimidine
22    gc_fraction                 G+C fraction of the reference's 21 bp window at POS         0.5
23    homopolymer_run             longest one-base run covering POS or POS+1 in that window   1
24    context_present             a reference was given and matched REF
====  ==========================  ==========================================================  =======

An allele cannot be featurised (the reason is returned) when it is ``.``, ``*``, symbolic or a
breakend, when a field the features read is not a number or has the wrong number of values, when GT
names an allele the record does not have, or when a reference is given and the contig is not in it
or its bases differ from REF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medserve.clinical.genomics.sequence_context import (
    ReferenceGenome,
    gc_fraction,
    homopolymer_run,
    reference_windows,
)
from medserve.clinical.genomics.strand_bias import BALANCED_SOR, strand_odds_ratio
from medserve.clinical.genomics.variant_record import VariantAllele, VariantRecord, is_sequence_allele

FEATURE_NAMES: tuple[str, ...] = (
    "qual",
    "qual_present",
    "depth",
    "depth_present",
    "allele_balance",
    "alt_depth",
    "allele_depth_present",
    "fisher_strand",
    "fisher_strand_present",
    "strand_odds_ratio",
    "strand_odds_ratio_present",
    "genotype_quality",
    "genotype_quality_present",
    "mapping_quality",
    "mapping_quality_present",
    "is_het",
    "is_hom_alt",
    "is_snv",
    "is_indel",
    "indel_length",
    "is_transition",
    "is_transversion",
    "gc_fraction",
    "homopolymer_run",
    "context_present",
)
FEATURE_COUNT = len(FEATURE_NAMES)
COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}
"""Feature name to column."""

NEUTRAL_ALLELE_BALANCE = 0.5
NEUTRAL_GC_FRACTION = 0.5
NEUTRAL_HOMOPOLYMER_RUN = 1.0

_TRANSITIONS = frozenset({frozenset("AG"), frozenset("CT")})
_MISSING = float("nan")


class FeatureError(ValueError):
    """An allele that cannot be featurised; the message says why."""


def variant_features(
    alleles: Sequence[VariantAllele], reference: ReferenceGenome | None = None
) -> tuple[np.ndarray, list[str | None]]:
    """The ``(len(alleles), FEATURE_COUNT)`` float32 features and, per allele, None or the reason it
    cannot be featurised (its row is then all zeros)."""
    count = len(alleles)
    raw = np.full((count, 12), _MISSING, dtype=np.float64)
    flags = np.zeros((count, 7), dtype=np.float32)
    errors: list[str | None] = [None] * count
    for i, allele in enumerate(alleles):
        try:
            raw[i], flags[i] = _allele_values(allele)
        except FeatureError as exc:
            errors[i] = str(exc)
    features = np.zeros((count, FEATURE_COUNT), dtype=np.float32)
    qual, depth, ad_allele, ad_total, fs, sor, gq, mq = (raw[:, j] for j in range(8))
    counts = raw[:, 8:12]

    def put(name: str, values: np.ndarray, neutral: float) -> None:
        present = ~np.isnan(values)
        features[:, COLUMN[name]] = np.where(present, values, neutral)
        if f"{name}_present" in COLUMN:
            features[:, COLUMN[f"{name}_present"]] = present

    put("qual", qual, 0.0)
    put("depth", depth, 0.0)
    has_ad = ~np.isnan(ad_total) & (np.nan_to_num(ad_total) > 0)
    features[:, COLUMN["allele_balance"]] = np.where(
        has_ad, ad_allele / np.where(has_ad, ad_total, 1.0), NEUTRAL_ALLELE_BALANCE
    )
    features[:, COLUMN["alt_depth"]] = np.where(has_ad, ad_allele, 0.0)
    features[:, COLUMN["allele_depth_present"]] = has_ad
    put("fisher_strand", fs, 0.0)
    from_counts = np.isnan(sor) & ~np.isnan(counts).any(axis=1)
    if from_counts.any():
        chosen = counts[from_counts]
        sor[from_counts] = strand_odds_ratio(chosen[:, 0], chosen[:, 1], chosen[:, 2], chosen[:, 3])
    put("strand_odds_ratio", sor, BALANCED_SOR)
    put("genotype_quality", gq, 0.0)
    put("mapping_quality", mq, 0.0)
    start = COLUMN["is_het"]
    features[:, start : start + flags.shape[1]] = flags
    _context(alleles, reference, features, errors)
    features[[i for i, error in enumerate(errors) if error is not None]] = 0.0
    return features, errors


def _context(
    alleles: Sequence[VariantAllele],
    reference: ReferenceGenome | None,
    features: np.ndarray,
    errors: list[str | None],
) -> None:
    gc, run, present = COLUMN["gc_fraction"], COLUMN["homopolymer_run"], COLUMN["context_present"]
    features[:, gc] = NEUTRAL_GC_FRACTION
    features[:, run] = NEUTRAL_HOMOPOLYMER_RUN
    if reference is None or not alleles:
        return
    records = [allele.record for allele in alleles]
    windows, problems = reference_windows(
        reference, [r.chrom for r in records], [r.pos for r in records], [r.ref for r in records]
    )
    for i, problem in enumerate(problems):
        if problem is not None and errors[i] is None:
            errors[i] = problem
    features[:, gc] = gc_fraction(windows, NEUTRAL_GC_FRACTION)
    features[:, run] = homopolymer_run(windows)
    features[:, present] = 1.0


def _allele_values(allele: VariantAllele) -> tuple[list[float], list[float]]:
    """(qual, depth, AD[allele], AD total, FS, SOR, GQ, MQ, REF fwd, REF rev, ALT fwd, ALT rev) with
    NaN for missing, and the 7 indicator features from ``is_het`` to ``is_transversion``."""
    record, k = allele.record, allele.allele
    if k == 0:
        raise FeatureError("the record has no ALT allele (ALT is '.')")
    alt = allele.alt
    if not is_sequence_allele(alt):
        raise FeatureError(f"ALT {alt[:40]!r} is not a base string; only sequence alleles are scored")
    info, sample = record.info, record.sample
    alleles = len(record.alts) + 1
    ad = _counts(sample.get("AD"), "FORMAT/AD", alleles)
    depth = _number(sample.get("DP"), "FORMAT/DP")
    if math.isnan(depth):
        depth = _number(info.get("DP"), "INFO/DP")
    if math.isnan(depth) and ad is not None:
        depth = float(sum(ad))
    strand = _strand_counts(sample, alleles, k)
    values = [
        _MISSING if record.qual is None else record.qual,
        depth,
        _MISSING if ad is None else float(ad[k]),
        _MISSING if ad is None else float(sum(ad)),
        _number(info.get("FS"), "INFO/FS"),
        _number(info.get("SOR"), "INFO/SOR"),
        _number(sample.get("GQ"), "FORMAT/GQ"),
        _number(info.get("MQ"), "INFO/MQ"),
        *strand,
    ]
    return values, _allele_flags(record, k, alt)


def _allele_flags(record: VariantRecord, k: int, alt: str) -> list[float]:
    calls = _genotype(record.sample.get("GT"), len(record.alts))
    called = [c for c in calls if c is not None]
    het = k in called and any(c != k for c in called)
    hom = bool(called) and len(called) == len(calls) and all(c == k for c in called)
    ref = record.ref
    snv = len(ref) == 1 and len(alt) == 1
    indel = len(ref) != len(alt)
    known = snv and ref in "ACGT" and alt in "ACGT" and ref != alt
    transition = known and frozenset((ref, alt)) in _TRANSITIONS
    return [
        float(het),
        float(hom),
        float(snv),
        float(indel),
        float(len(alt) - len(ref)) if indel else 0.0,
        float(transition),
        float(known and not transition),
    ]


def _strand_counts(sample: dict[str, str], alleles: int, k: int) -> list[float]:
    forward = _counts(sample.get("ADF"), "FORMAT/ADF", alleles)
    reverse = _counts(sample.get("ADR"), "FORMAT/ADR", alleles)
    if forward is not None and reverse is not None:
        return [float(forward[0]), float(reverse[0]), float(forward[k]), float(reverse[k])]
    table = _counts(sample.get("SB"), "FORMAT/SB", 4)
    if table is not None:  # GATK's SB: REF fwd, REF rev, ALT fwd, ALT rev (all ALTs together)
        return [float(x) for x in table]
    return [_MISSING] * 4


def _number(text: str | None, what: str) -> float:
    if text is None or text in (".", ""):
        return _MISSING
    try:
        value = float(text)
    except ValueError:
        raise FeatureError(f"{what} {text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise FeatureError(f"{what} {text[:40]!r} is not a finite number")
    return value


def _counts(text: str | None, what: str, expected: int) -> list[int] | None:
    """Non-negative integer counts; None when absent or any is ``.``."""
    if text is None or text in (".", ""):
        return None
    parts = text.split(",")
    if len(parts) != expected:
        raise FeatureError(f"{what} {text[:40]!r} has {len(parts)} value(s); expected {expected}")
    if "." in parts:
        return None
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise FeatureError(f"{what} {text[:40]!r} is not a list of integers") from None
    if min(values) < 0:
        raise FeatureError(f"{what} {text[:40]!r} has a negative count")
    return values


def _genotype(text: str | None, alts: int) -> list[int | None]:
    """GT alleles (None for ``.``); empty when there is no GT."""
    if text is None or text in (".", ""):
        return []
    calls: list[int | None] = []
    for part in text.replace("|", "/").split("/"):
        if part == ".":
            calls.append(None)
            continue
        if not part.isdigit():
            raise FeatureError(f"FORMAT/GT {text[:40]!r} is not a genotype")
        number = int(part)
        if number > alts:
            raise FeatureError(f"FORMAT/GT {text[:40]!r} names allele {number}; the record has {alts} ALT(s)")
        calls.append(number)
    return calls
