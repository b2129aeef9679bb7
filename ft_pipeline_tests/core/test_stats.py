"""Tests of the significance tests used by the pattern report."""

import pytest
from scipy.stats import chi2_contingency, fisher_exact

from ft_pipeline.core.stats import compare_arms, difference_ci95, holm, rate, sample_size_per_arm, two_proportion_test


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


def test_compare_arms_over_three_arms_names_the_best_when_it_beats_every_other():
    result = compare_arms({"a": (20, 100), "b": (25, 100), "c": (60, 100)}, 0.05)
    assert result["winner"] == "c" and result["status"] == "winner" and result["sample_size"] is None
    # the deciding comparison is the best arm against its closest rival, Holm-corrected over the three pairs
    assert result["comparison"] == "c - b" and result["difference"] == pytest.approx(0.35)
    assert result["omnibus_p_value"] == pytest.approx(chi2_contingency([[20, 80], [25, 75], [60, 40]], correction=False).pvalue)
    assert [c["comparison"] for c in result["comparisons"]] == ["b - a", "c - a", "c - b"]
    raw = [c["p_value"] for c in result["comparisons"]]
    assert [c["p_holm"] for c in result["comparisons"]] == pytest.approx(holm(raw))
    assert result["p_value"] == result["comparisons"][2]["p_holm"]


def test_three_arms_where_only_one_pair_differs_have_no_false_winner():
    # c beats a clearly, but not b: the omnibus test is significant, and yet nothing beats every other arm
    result = compare_arms({"a": (40, 100), "b": (50, 100), "c": (60, 100)}, 0.05)
    assert result["omnibus_p_value"] < 0.05
    significant = [c["comparison"] for c in result["comparisons"] if c["significant"]]
    assert significant == ["c - a"]
    assert result["winner"] is None and result["status"] == "inconclusive"
    size = result["sample_size"]
    assert size["comparison"] == "c - b" and size["alpha"] == pytest.approx(0.05 / 3)
    assert size["n_per_arm"] == sample_size_per_arm(0.6, 0.5, 0.05 / 3) and size["additional_per_arm"] == size["n_per_arm"] - 100


def test_every_arm_is_compared_with_the_control():
    result = compare_arms({"control": (50, 100), "x": (70, 100), "y": (52, 100)}, 0.05)
    assert result["control"] == "control"
    assert {c["comparison"] for c in result["comparisons"]} == {"x - control", "y - control", "y - x"}


def test_holm_and_sample_size_match_textbook_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    # Fleiss: 0.5 against 0.6 at alpha 0.05 with power 0.8 needs about 388 per arm
    assert sample_size_per_arm(0.5, 0.6, 0.05) == 388
    assert sample_size_per_arm(0.5, 0.5, 0.05) is None


def test_compare_arms_degenerate_inputs():
    assert compare_arms({"a": (5, 10)}, 0.05)["p_value"] is None
    everything = compare_arms({"a": (10, 10), "b": (10, 10), "c": (10, 10)}, 0.05)
    assert everything["p_value"] == 1.0 and everything["winner"] is None and everything["status"] == "inconclusive"
    assert everything["sample_size"]["n_per_arm"] is None


def test_the_champion_of_a_rollout_is_the_baseline_its_candidate_is_compared_with():
    result = compare_arms({"candidate": (70, 100), "champion": (50, 100)}, 0.05)
    assert result["control"] == "champion" and result["comparison"] == "candidate - champion"
    assert result["difference"] == pytest.approx(0.2)
