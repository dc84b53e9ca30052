"""Intervals and comparisons against published figures (Newcombe 1998's worked examples) and
hand computations."""

from __future__ import annotations

import math

import pytest

from pipeline.evaluation import stats


def test_wilson_interval_matches_newcombes_example():
    # Newcombe (1998), Statistics in Medicine 17:857, method 3 for 81/263: 0.2553 to 0.3662
    low, high = stats.wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # at 0 and n the bound is exactly the share, the other bound the Wilson one
    assert stats.wilson(0, 10) == [0.0, pytest.approx(0.2775, abs=1e-4)]
    assert stats.wilson(10, 10) == [pytest.approx(0.7225, abs=1e-4), 1.0]
    assert stats.wilson(0, 0) is None
    assert stats.rate(3, 4) == {"rate": 0.75, "k": 3, "n": 4, "ci95": stats.wilson(3, 4)}
    with pytest.raises(ValueError):
        stats.wilson(5, 4)


def test_paired_difference_matches_newcombes_example_and_mcnemar():
    # Newcombe (1998), Statistics in Medicine 17:2635, table II example (a): cells 36, 12, 2, 0
    # (both right, only the first right, only the second right, neither); method 10: 0.0569 to 0.3404
    base = [True] * 36 + [False] * 12 + [True] * 2
    tuned = [True] * 36 + [True] * 12 + [False] * 2
    c = stats.paired(base, tuned)
    assert c["delta"] == pytest.approx(0.2)
    assert [round(x, 4) for x in c["ci95"]] == [0.0569, 0.3404]
    # McNemar's exact test: 2 of 14 discordant pairs, two-sided binomial: 2 * (1 + 14 + 91) / 2**14
    assert c["p_value"] == pytest.approx(2 * (1 + 14 + 91) / 2 ** 14)
    assert c["significant"] and (c["tuned_only"], c["base_only"], c["n"]) == (12, 2, 50)
    # the same items, the models swapped: the mirror image
    m = stats.paired(tuned, base)
    assert m["delta"] == pytest.approx(-0.2) and [round(x, 4) for x in m["ci95"]] == [-0.3404, -0.0569]
    assert "significantly worse" in stats.describe("x", m) and "significantly better" in stats.describe("x", c)


def test_no_difference_is_not_significant():
    same = [True, False, True, True, False]
    c = stats.paired(same, same)
    assert c["delta"] == 0 and c["p_value"] == 1.0 and not c["significant"]
    assert c["ci95"][0] <= 0 <= c["ci95"][1]
    one_flip = stats.paired([False] * 10, [True] + [False] * 9)
    assert one_flip["p_value"] == 1.0 and not one_flip["significant"]  # 1 of 1 discordant pair
    assert stats.paired([], []) is None
    with pytest.raises(ValueError):
        stats.paired([True], [True, False])
    assert "no significant difference" in stats.describe("think", c)


def test_unpaired_difference_and_fisher():
    # Newcombe (1998) method 10 for independent proportions, 56/70 vs 48/80: 0.0524 to 0.3339
    c = stats.unpaired(56, 70, 48, 80)
    assert [round(x, 4) for x in c["ci95"]] == [0.0524, 0.3339]
    # Fisher's tea-tasting table: 3 of 4 vs 1 of 4, two-sided p = 34/70
    assert stats.fisher_two_sided(3, 4, 1, 4) == pytest.approx(34 / 70)
    assert stats.fisher_two_sided(4, 4, 0, 4) == pytest.approx(2 / 70)
    assert stats.unpaired(1, 2, 0, 0) is None
    assert math.isclose(stats.binomial_two_sided(0, 5), 2 / 32)
    assert stats.binomial_two_sided(0, 0) == 1.0


def test_detectable_difference_solves_connors_sample_size():
    # Connor (1987): n = (1.96 sqrt(psi) + 0.84 sqrt(psi - d^2))^2 / d^2; psi 0.3, d 0.1: 233 pairs
    n = (stats.Z95 * math.sqrt(0.3) + stats.Z80 * math.sqrt(0.3 - 0.01)) ** 2 / 0.01
    assert round(n) == 233
    assert stats.detectable_difference(math.ceil(n), 0.3) == pytest.approx(0.1, abs=1e-3)
    # fewer items, a larger difference; no discordant pair, nothing to detect
    assert stats.detectable_difference(55, 0.3) > 0.2 and stats.detectable_difference(55, 0.0) is None


def test_paired_mean_is_the_normal_interval_of_the_differences():
    base, tuned = [0.1, 0.2, 0.5, 0.3], [0.3, 0.2, 1.0, 0.5]
    c = stats.paired_mean(base, tuned)
    diffs = [0.2, 0.0, 0.5, 0.2]
    sd = math.sqrt(sum((d - 0.225) ** 2 for d in diffs) / 3)
    assert c["delta"] == pytest.approx(0.225) and c["ci95"][0] == pytest.approx(0.225 - stats.Z95 * sd / 2)
    assert c["p_value"] == pytest.approx(math.erfc(0.225 / (sd / 2) / math.sqrt(2))) and c["significant"]
    assert stats.paired_mean([], []) is None and not stats.paired_mean([0.5, 0.5], [0.5, 0.5])["significant"]
    assert stats.paired_mean([0.5], [0.1]) is None  # one item: no spread to test a difference against
