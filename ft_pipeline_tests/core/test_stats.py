"""Tests of the significance tests used by the pattern report."""

import pytest
from scipy.stats import chi2_contingency, fisher_exact

from ft_pipeline.core.stats import compare_arms, difference_ci95, rate, two_proportion_test


def test_two_proportion_test_matches_known_values_and_chi_square():
    z, p = two_proportion_test(45, 100, 30, 100)
    assert z == pytest.approx(2.1909, abs=1e-4)
    assert p == pytest.approx(0.02846, abs=1e-5)
    # The pooled z-test is the uncorrected chi-square test of the 2x2 table.
    assert p == pytest.approx(chi2_contingency([[45, 55], [30, 70]], correction=False).pvalue)


def test_two_proportion_test_without_evidence():
    assert two_proportion_test(0, 0, 3, 10) == (0.0, 1.0)
    assert two_proportion_test(10, 10, 5, 5) == (0.0, 1.0)


def test_rate_and_interval():
    assert rate(1, 4) == 0.25 and rate(0, 0) is None
    low, high = difference_ci95(30, 100, 50, 100)
    assert low < 0.2 < high
    assert high - 0.2 == pytest.approx(0.2 - low)


def test_compare_arms_uses_fisher_for_small_counts():
    result = compare_arms({"a": (1, 8), "b": (7, 8)}, 0.05)
    assert result["test"] == "fisher"
    assert result["p_value"] == pytest.approx(fisher_exact([[1, 7], [7, 1]]).pvalue)
    assert result["winner"] == "b" and result["comparison"] == "b - a"
    assert result["difference"] == pytest.approx(0.75)


def test_compare_arms_chi_square_without_difference_has_no_winner():
    result = compare_arms({"control": (50, 100), "treatment": (52, 100)}, 0.05)
    assert result["test"] == "chi2" and result["p_value"] > 0.05 and result["winner"] is None
    assert result["arms"]["treatment"] == {"n": 100, "acceptance_rate": 0.52}


def test_compare_arms_over_three_arms_names_the_best_when_significant():
    result = compare_arms({"a": (20, 100), "b": (25, 100), "c": (60, 100)}, 0.05)
    assert result["test"] == "chi2" and result["winner"] == "c"
    assert result["comparison"] == "c - a" and result["difference"] == pytest.approx(0.4)
    assert result["p_value"] == pytest.approx(chi2_contingency([[20, 80], [25, 75], [60, 40]], correction=False).pvalue)


def test_compare_arms_degenerate_inputs():
    assert compare_arms({"a": (5, 10)}, 0.05)["p_value"] is None
    everything = compare_arms({"a": (10, 10), "b": (10, 10), "c": (10, 10)}, 0.05)
    assert everything["p_value"] == 1.0 and everything["winner"] is None
