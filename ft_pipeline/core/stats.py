"""Significance tests for rates: two-proportion z-test, confidence intervals, A/B arm comparison."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

Z95 = NormalDist().inv_cdf(0.975)


def rate(successes: int, n: int) -> float | None:
    """successes / n, or None when there is nothing to divide by."""
    return successes / n if n else None


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Pooled two-sided z-test of x1/n1 against x2/n2; returns (z, p_value)."""
    if not n1 or not n2:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        # Both samples all successes or all failures: no evidence of a difference.
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, 2 * NormalDist().cdf(-abs(z))


def difference_ci95(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Wald 95% interval of x2/n2 - x1/n1 (unpooled standard error)."""
    p1, p2 = x1 / n1, x2 / n2
    half = Z95 * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return p2 - p1 - half, p2 - p1 + half


def compare_arms(arms: dict[str, tuple[int, int]], significance: float) -> dict:
    """Compare the acceptance of experiment arms ({variant: (accepted, n)}): chi-square, Fisher's exact test
    for two arms when an expected count is under 5; the winner is the best arm when p < significance."""
    from scipy.stats import chi2_contingency, fisher_exact

    arms = {name: arms[name] for name in sorted(arms) if arms[name][1] > 0}
    summary = {name: {"n": n, "acceptance_rate": x / n} for name, (x, n) in arms.items()}
    result: dict[str, Any] = {
        "arms": summary,
        "difference": None,
        "comparison": None,
        "ci95": None,
        "p_value": None,
        "test": None,
        "winner": None,
    }
    if len(arms) < 2:
        return result
    table = [[x, n - x] for x, n in arms.values()]
    total = sum(x for x, _ in arms.values()), sum(n - x for x, n in arms.values())
    grand = sum(total)
    expected_min = min(n * col / grand for _, n in arms.values() for col in total)
    if len(arms) == 2 and expected_min < 5:
        test, p_value = "fisher", float(fisher_exact(table).pvalue)
    elif min(total) == 0:
        # Every arm all accepted (or none): chi-square is undefined and there is no difference.
        test, p_value = "chi2", 1.0
    else:
        test, p_value = "chi2", float(chi2_contingency(table, correction=False).pvalue)
    ordered = sorted(arms, key=lambda name: summary[name]["acceptance_rate"])
    if len(arms) == 2:
        base, other = list(arms)
    else:
        base, other = ordered[0], ordered[-1]
    (x1, n1), (x2, n2) = arms[base], arms[other]
    result.update(
        difference=x2 / n2 - x1 / n1,
        comparison=f"{other} - {base}",
        ci95=list(difference_ci95(x1, n1, x2, n2)),
        p_value=p_value,
        test=test,
        winner=ordered[-1] if p_value < significance else None,
    )
    return result
