"""Latency statistics and the confidence intervals the stopping rule and the gates decide on.

Percentiles use numpy's default "linear" method (Hyndman & Fan type 7: interpolate between the two
order statistics around (n - 1) * q), so a reader can reproduce any figure with `np.percentile`.

Quantile confidence intervals are distribution-free: if K counts the samples at or below the true
p-quantile q_p, K ~ Binomial(n, p), and for a continuous latency distribution

    P(X_(l) <= q_p <= X_(u)) = P(l <= K <= u - 1) = F(u - 1) - F(l - 1),   F = Binomial(n, p) CDF.

We put at most alpha/2 in each tail. For a high quantile and few samples no u <= n exists: the
interval has no upper bound yet, which is exactly the "not enough samples" signal that MLPerf
LoadGen's early-stopping estimate uses (p99 at 95% needs 0.99^n <= 0.025, i.e. n >= 368).

A ratio of two quantiles gets its interval from the two marginal intervals, each at confidence
1 - alpha/2 (Bonferroni), so the joint coverage is at least 1 - alpha whether or not the two series
are independent. That ignores the pairing of interleaved rounds and is therefore conservative, but
it is exact, deterministic, cheap for 100k samples, and the same rule works for a baseline bench
recorded on another day, where there is no pairing at all.

When two series were timed in the same interleaved rounds (one bench, one batch, neither target
dropped: equal lengths), `paired_ratio_ci` uses the pairing instead: the per-round ratios
r_i = a_i / b_i cancel whatever drift the two calls of a round shared, and the interval for their
median is again an exact order-statistic interval, now of r. The estimand is the median per-round
ratio rather than the ratio of medians; for a model that is uniformly X times slower both are X.
"""
from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np

QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}


def percentile(x, q: float) -> float:
    """The q-th percentile (0..100) by numpy's "linear" method."""
    return float(np.percentile(np.asarray(x, dtype=np.float64), q, method="linear"))


def summarize(latencies_ms, batch: int) -> dict:
    """p50/p90/p95/p99, mean, std (sample std, ddof=1) in ms; throughput in samples/s.

    Throughput is batch / mean latency: the rate of a single stream issuing calls back to back,
    which is what these timings measure (not a concurrent server's capacity)."""
    x = np.asarray(latencies_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latencies to summarize")
    out = {f"{k}_ms": float(np.percentile(x, 100 * p, method="linear")) for k, p in QUANTILES.items()}
    mean = float(x.mean())
    out.update(mean_ms=mean, std_ms=float(x.std(ddof=1)) if x.size > 1 else 0.0,
               throughput=batch * 1000.0 / mean if mean > 0 else float("inf"), samples=int(x.size))
    return out


@lru_cache(maxsize=256)
def _binom_cdf(n: int, p: float) -> np.ndarray:
    """F[k] = P(K <= k) for K ~ Binomial(n, p), k = 0..n, in log space so n = 10^6 does not underflow."""
    k = np.arange(n + 1, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(n - k[1:] + 1) - np.log(k[1:]))])
    log_pmf = log_comb + k * math.log(p) + (n - k) * math.log1p(-p)
    cdf = np.cumsum(np.exp(log_pmf - log_pmf.max())) * math.exp(log_pmf.max())
    return np.minimum(cdf / cdf[-1], 1.0)  # renormalise away the rounding drift of the cumulative sum


def quantile_ci_indices(n: int, p: float, confidence: float = 0.95) -> tuple[int | None, int | None]:
    """1-based order-statistic indices (l, u) with P(X_(l) <= q_p <= X_(u)) >= confidence.

    l is None when even X_(1) is not a low enough bound, u is None when X_(n) is not high enough
    (too few samples for that quantile)."""
    if not 0 < p < 1 or not 0 < confidence < 1:
        raise ValueError("need 0 < p < 1 and 0 < confidence < 1")
    if n < 1:
        return None, None
    tail = (1 - confidence) / 2
    cdf = _binom_cdf(n, p)
    low = int(np.searchsorted(cdf, tail, side="right"))  # number of k with F(k) <= tail; l = that count
    first = int(np.searchsorted(cdf, 1 - tail, side="left"))  # smallest k with F(k) >= 1 - tail; u = k + 1
    return (low if low >= 1 else None), (first + 1 if first + 1 <= n else None)


def quantile_ci(x, p: float, confidence: float = 0.95, *, sorted_x: bool = False) -> tuple[float | None, float | None]:
    """Distribution-free interval for the p-quantile of the population `x` was drawn from."""
    xs = np.asarray(x, dtype=np.float64) if sorted_x else np.sort(np.asarray(x, dtype=np.float64))
    lo, hi = quantile_ci_indices(xs.size, p, confidence)
    return (None if lo is None else float(xs[lo - 1])), (None if hi is None else float(xs[hi - 1]))


def mean_ci(x, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Normal-approximation interval for the mean (latencies are skewed: trust it for large n only)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return None, None
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def all_cis(latencies_ms, confidence: float = 0.95) -> dict[str, list]:
    """{"p50": [lo, hi], "p90": ..., "p95": ..., "p99": ..., "mean": ...} (None where a bound does not exist)."""
    xs = np.sort(np.asarray(latencies_ms, dtype=np.float64))
    out = {k: list(quantile_ci(xs, p, confidence, sorted_x=True)) for k, p in QUANTILES.items()}
    out["mean"] = list(mean_ci(xs, confidence))
    return out


def ci_tight(x, p: float, rel_width: float, confidence: float = 0.95) -> bool:
    """The stopping test: both bounds exist and (hi - lo) / estimate <= rel_width."""
    xs = np.sort(np.asarray(x, dtype=np.float64))
    lo, hi = quantile_ci(xs, p, confidence, sorted_x=True)
    if lo is None or hi is None:
        return False
    if hi == lo:  # a constant series (a fake clock) is as tight as it gets
        return True
    est = float(np.percentile(xs, 100 * p, method="linear"))
    return est > 0 and (hi - lo) / est <= rel_width


def ratio_ci(num, den, p: float = 0.5, confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(estimate, lo, hi) for quantile_p(num) / quantile_p(den), each marginal interval at
    1 - alpha/2 (see the module docstring); a bound is None when a marginal bound is missing."""
    a, b = np.sort(np.asarray(num, dtype=np.float64)), np.sort(np.asarray(den, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        raise ValueError("ratio_ci needs two non-empty series")
    est_a, est_b = (float(np.percentile(s, 100 * p, method="linear")) for s in (a, b))
    marginal = 1 - (1 - confidence) / 2
    a_lo, a_hi = quantile_ci(a, p, marginal, sorted_x=True)
    b_lo, b_hi = quantile_ci(b, p, marginal, sorted_x=True)
    lo = a_lo / b_hi if a_lo is not None and b_hi else None
    hi = a_hi / b_lo if a_hi is not None and b_lo else None
    return (est_a / est_b if est_b else float("inf")), lo, hi


def paired_ratio_ci(num, den, p: float = 0.5, confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(estimate, lo, hi) for the p-quantile of the per-round ratios num_i / den_i of two series
    timed in the same interleaved rounds (see the module docstring)."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if a.size == 0 or a.size != b.size:
        raise ValueError("paired_ratio_ci needs two series of the same non-zero length (one per round)")
    r = np.sort(a / b)
    lo, hi = quantile_ci(r, p, confidence, sorted_x=True)
    return float(np.percentile(r, 100 * p, method="linear")), lo, hi


PAIRED, UNPAIRED = "median of per-round ratios", "ratio of quantiles"


def quantile_ratio(num, den, p: float, confidence: float, same_rounds: bool) -> tuple[float, float | None, float | None, str]:
    """(estimate, lo, hi, method) for num over den at quantile p: paired (`paired_ratio_ci`) when
    the two were timed in the same rounds (`same_rounds`, equal lengths, the median), else
    `ratio_ci`. The one rule `edgekd gate` decides on and `edgekd bench` reports with."""
    if same_rounds and p == 0.5 and len(num) == len(den) and min(den) > 0:
        return (*paired_ratio_ci(num, den, p, confidence), PAIRED)
    return (*ratio_ci(num, den, p, confidence), UNPAIRED)
