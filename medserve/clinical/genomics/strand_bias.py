"""Strand-bias statistics of a variant's 2x2 table of read counts, vectorised over many variants.

The table is (REF forward, REF reverse, ALT forward, ALT reverse), as in FORMAT/SB or in the first and
the allele's entries of FORMAT/ADF and FORMAT/ADR. Both statistics follow GATK's definitions:

* ``strand_odds_ratio`` (SOR): with one pseudo-read added to every cell,
  ``ln(R + 1/R) + ln(min(rf, rr) / max(rf, rr)) - ln(min(af, ar) / max(af, ar))`` where
  ``R = (rf * ar) / (af * rr)``; ``ln 2`` for a balanced table, large when the ALT reads favour one
  strand more than the REF reads do.
* ``fisher_strand`` (FS): ``-10 log10 p`` of Fisher's exact two-sided test of the table; 0 for no
  bias.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln

BALANCED_SOR = math.log(2.0)
"""SOR of a table without strand bias: the neutral value when no strand counts are known."""

_RELATIVE_TOLERANCE = 1e-7
_BLOCK = 1024


def strand_odds_ratio(
    ref_fwd: np.ndarray, ref_rev: np.ndarray, alt_fwd: np.ndarray, alt_rev: np.ndarray
) -> np.ndarray:
    """SOR of each table (float64; counts are non-negative, any numeric dtype)."""
    rf, rr, af, ar = (np.asarray(x, dtype=np.float64) + 1.0 for x in (ref_fwd, ref_rev, alt_fwd, alt_rev))
    ratio = (rf * ar) / (af * rr)
    symmetrical = ratio + 1.0 / ratio
    ref_ratio = np.minimum(rf, rr) / np.maximum(rf, rr)
    alt_ratio = np.minimum(af, ar) / np.maximum(af, ar)
    result: np.ndarray = np.log(symmetrical) + np.log(ref_ratio) - np.log(alt_ratio)
    return result


def fisher_strand(
    ref_fwd: np.ndarray, ref_rev: np.ndarray, alt_fwd: np.ndarray, alt_rev: np.ndarray
) -> np.ndarray:
    """FS of each table: ``-10 log10`` of Fisher's exact two-sided p-value (float64, 0 for no bias).

    The p-value sums the hypergeometric probabilities of every table with the same margins that is
    no more likely than the observed one; work is ``O(n * max(row or column total))``.
    """
    rf, rr, af, ar = (np.asarray(x, dtype=np.int64).ravel() for x in (ref_fwd, ref_rev, alt_fwd, alt_rev))
    blocks = [
        _fisher_block(rf[i : i + _BLOCK], rr[i : i + _BLOCK], af[i : i + _BLOCK], ar[i : i + _BLOCK])
        for i in range(0, rf.size, _BLOCK)
    ]
    return np.concatenate(blocks) if blocks else np.zeros(0)


def _fisher_block(rf: np.ndarray, rr: np.ndarray, af: np.ndarray, ar: np.ndarray) -> np.ndarray:
    ref_total, fwd_total, total = rf + rr, rf + af, rf + rr + af + ar
    low = np.maximum(0, fwd_total - (af + ar))  # the smallest possible REF-forward count
    high = np.minimum(ref_total, fwd_total)
    span = int(np.max(high - low)) + 1
    k = low[:, None] + np.arange(span)[None, :]  # candidate REF-forward counts
    valid = k <= high[:, None]
    k = np.where(valid, k, low[:, None])
    n, m, t = ref_total[:, None], fwd_total[:, None], total[:, None]
    base = _log_choose(t, m)

    def log_probability(x: np.ndarray) -> np.ndarray:
        result: np.ndarray = _log_choose(n, x) + _log_choose(t - n, m - x) - base
        return result

    observed = log_probability(rf[:, None])
    candidates = log_probability(k)
    keep = valid & (candidates <= observed + _RELATIVE_TOLERANCE)
    p = np.clip(np.sum(np.where(keep, np.exp(candidates), 0.0), axis=1), 1e-300, 1.0)
    fs: np.ndarray = np.maximum(-10.0 * np.log10(p), 0.0)
    return fs


def _log_choose(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    result: np.ndarray = gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)
    return result
