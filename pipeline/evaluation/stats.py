"""Intervals and comparisons for the figures a user reads: every rate with its count and a 95% interval.

Wilson intervals for rates; base vs tuned on the same items by Newcombe's paired interval and McNemar's exact test
(a score per item by its paired mean); the difference n items can detect; Fisher's test for shares over different
items. Closed forms only, no resampling: the same counts give the same figures on any machine.

Design: docs/design/metrics.md.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
ALPHA = 0.05


def wilson(k: int, n: int, z: float = Z95) -> list[float] | None:
    """Wilson's score interval for k successes in n trials; None when n is 0."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"{k} successes in {n} trials")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at k = 0 or k = n the bound is exactly 0 or 1; rounding must not move it past the share
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return [low, high]


def rate(k: int, n: int) -> dict:
    """{"rate", "k", "n", "ci95"}; rate and ci95 are None when n is 0."""
    return {"rate": k / n if n else None, "k": k, "n": n, "ci95": wilson(k, n)}


def pct(value) -> str:
    """A rate in percent, one decimal: "25.8%" ("n/a" for None)."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def rate_cell(value, n, ci, k=None) -> str:
    """"25.8% (8/31) [13.7, 43.3]": the rate, its count and its 95% interval, in percent."""
    if value is None or not n:
        return "n/a"
    k = round(value * n) if k is None else k
    interval = f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
    return f"{pct(value)} ({k}/{n}){interval}"


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (McNemar's exact test when
    k and n - k are the discordant pairs)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _verdict(delta: float, low: float, high: float, p: float, n: int, **extra) -> dict:
    return {"delta": delta, "ci95": [low, high], "p_value": p, "significant": p < ALPHA, "n": n, **extra}


def paired(base: list[bool], tuned: list[bool]) -> dict | None:
    """Tuned vs base on the same items: delta (tuned - base), Newcombe's 95% interval, McNemar's
    exact p-value, significant (p < 0.05), and the cell counts. None without items."""
    if len(base) != len(tuned):
        raise ValueError(f"paired comparison of {len(base)} and {len(tuned)} items")
    n = len(base)
    if not n:
        return None
    both = sum(1 for b, t in zip(base, tuned) if b and t)
    tuned_only = sum(1 for b, t in zip(base, tuned) if t and not b)
    base_only = sum(1 for b, t in zip(base, tuned) if b and not t)
    neither = n - both - tuned_only - base_only
    p1, p2 = (both + tuned_only) / n, (both + base_only) / n
    l1, u1 = wilson(both + tuned_only, n)
    l2, u2 = wilson(both + base_only, n)
    margins = (both + tuned_only) * (base_only + neither) * (both + base_only) * (tuned_only + neither)
    phi = (both * neither - tuned_only * base_only) / math.sqrt(margins) if margins else 0.0
    delta = p1 - p2
    down = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    up = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    p = binomial_two_sided(tuned_only, tuned_only + base_only)
    return _verdict(delta, max(-1.0, delta - down), min(1.0, delta + up), p, n, test="mcnemar_exact",
                    tuned_only=tuned_only, base_only=base_only)


def paired_mean(base: list[float], tuned: list[float]) -> dict | None:
    """Tuned vs base, one score each per item: mean difference, the normal 95% interval of the
    paired differences, and its two-sided p-value (n of a hundred or more: the normal
    approximation is close; fewer: read the interval as rough). None with fewer than two items
    (no spread to test against)."""
    if len(base) != len(tuned):
        raise ValueError(f"paired comparison of {len(base)} and {len(tuned)} items")
    n = len(base)
    if n < 2:
        return None
    diffs = [t - b for b, t in zip(base, tuned)]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    p = math.erfc(abs(mean / se) / math.sqrt(2)) if se else (0.0 if mean else 1.0)
    return _verdict(mean, mean - Z95 * se, mean + Z95 * se, p, n, test="paired_normal")


Z80 = 0.8416212335729143  # the 0.8 quantile of the standard normal: 80% power


def detectable_difference(n: int, discordant: float) -> float | None:
    """The smallest paired difference d (tuned - base, a share) that n items detect with McNemar's
    test at 95% and 80% power when a share `discordant` of the pairs differ (Connor 1987:
    n = (Z95 sqrt(psi) + Z80 sqrt(psi - d^2))^2 / d^2, solved for d). None when no pair differs
    or no d up to the discordant share is detectable."""
    if n <= 0 or discordant <= 0:
        return None

    def needed(d: float) -> float:
        return (Z95 * math.sqrt(discordant) + Z80 * math.sqrt(max(0.0, discordant - d * d))) ** 2 / (d * d)

    low, high = 1e-6, discordant
    if needed(high) > n:
        return None
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if needed(mid) > n else (low, mid)
    return high


def fisher_two_sided(k1: int, n1: int, k0: int, n0: int) -> float:
    """Fisher's exact test on the 2x2 table (k1 of n1, k0 of n0): the probability, with the
    margins fixed, of a table no more likely than the one observed."""
    total, successes = n1 + n0, k1 + k0
    if not total:
        return 1.0

    def prob(a: int) -> float:
        return math.comb(n1, a) * math.comb(n0, successes - a) / math.comb(total, successes)

    observed = prob(k1)
    low, high = max(0, successes - n0), min(n1, successes)
    return min(1.0, sum(q for q in map(prob, range(low, high + 1)) if q <= observed * (1 + 1e-9)))


def unpaired(k1: int, n1: int, k0: int, n0: int) -> dict | None:
    """Share k1/n1 (tuned) vs k0/n0 (base) over different items: delta, Newcombe's interval for
    independent proportions, Fisher's exact p-value. None when either share has no items."""
    if not n1 or not n0:
        return None
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson(k1, n1)
    l0, u0 = wilson(k0, n0)
    delta = p1 - p0
    down = math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    up = math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return _verdict(delta, max(-1.0, delta - down), min(1.0, delta + up), fisher_two_sided(k1, n1, k0, n0),
                    n1 + n0, test="fisher_exact", n_tuned=n1, n_base=n0)


def describe(name: str, comparison: dict | None) -> str:
    """One sentence on a comparison, for the report."""
    if comparison is None:
        return f"{name}: nothing to compare"
    low, high = comparison["ci95"]
    change = f"{100 * comparison['delta']:+.1f} points (95% CI {100 * low:+.1f} to {100 * high:+.1f}, p = {comparison['p_value']:.3g})"
    if comparison["significant"]:
        word = "better" if comparison["delta"] > 0 else "worse"
        return f"{name}: tuned is significantly {word}, {change}"
    return f"{name}: no significant difference, {change}"
