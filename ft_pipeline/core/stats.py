"""Significance tests for rates: two-proportion z-test, confidence intervals, sample sizes, multi-arm experiment comparison."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

Z95 = NormalDist().inv_cdf(0.975)
# Power the sample size of an inconclusive experiment is computed for.
POWER = 0.8


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


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: each compares with the significance level directly."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def sample_size_per_arm(p1: float, p2: float, alpha: float, power: float = POWER) -> int | None:
    """Records per arm a two-sided two-proportion test at `alpha` needs to detect p1 against p2 with `power`;
    None when the rates are equal (no effect to detect)."""
    if p1 == p2:
        return None
    z_alpha, z_power = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    mean = (p1 + p2) / 2
    spread = z_alpha * math.sqrt(2 * mean * (1 - mean)) + z_power * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(spread**2 / (p1 - p2) ** 2)


def _table_test(arms: list[tuple[int, int]]) -> tuple[str, float]:
    """Test of equal acceptance across arms [(accepted, n)]: Fisher's exact test for two arms when an expected count
    is under 5, else the uncorrected chi-square test (for two arms, the pooled two-proportion z-test)."""
    from scipy.stats import chi2_contingency, fisher_exact

    table = [[x, n - x] for x, n in arms]
    total = sum(x for x, _ in arms), sum(n - x for x, n in arms)
    if min(total) == 0:
        # Every arm all accepted (or none): chi-square is undefined and there is no difference.
        return "chi2", 1.0
    expected_min = min(n * col / sum(total) for _, n in arms for col in total)
    if len(arms) == 2 and expected_min < 5:
        return "fisher", float(fisher_exact(table).pvalue)
    return "chi2", float(chi2_contingency(table, correction=False).pvalue)


CONTROL_NAMES = ("control", "champion")


def compare_arms(arms: dict[str, tuple[int, int]], significance: float) -> dict:
    """Compare the acceptance of experiment arms ({variant: (accepted, n)}): every pair of arms (so every arm against
    the control, `control`, `champion` or else the first by name) with Holm's correction; the winner is the arm that beats every
    other arm significantly, else the result is inconclusive with the sample size the observed difference needs."""
    arms = {name: arms[name] for name in sorted(arms) if arms[name][1] > 0}
    summary = {name: {"n": n, "acceptance_rate": x / n} for name, (x, n) in arms.items()}
    result: dict[str, Any] = {
        "arms": summary,
        "control": None,
        "difference": None,
        "comparison": None,
        "ci95": None,
        "p_value": None,
        "omnibus_p_value": None,
        "test": None,
        "comparisons": [],
        "winner": None,
        "status": None,
        "sample_size": None,
    }
    if len(arms) < 2:
        return result
    names = list(arms)
    # the arm in service is the baseline: `control`, or the champion of a staged rollout, else the first by name
    control = next((name for name in CONTROL_NAMES if name in arms), names[0])
    # the control first in each of its pairs, so a difference reads as "arm - control"
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    pairs = [(b, a) if b == control else (a, b) for a, b in pairs]
    raw = [_table_test([arms[a], arms[b]]) for a, b in pairs]
    adjusted = holm([p for _, p in raw])
    comparisons: list[dict[str, Any]] = []
    for (a, b), (test, p_value), p_holm in zip(pairs, raw, adjusted):
        (x1, n1), (x2, n2) = arms[a], arms[b]
        comparisons.append(
            {
                "comparison": f"{b} - {a}",
                "arms": [a, b],
                "difference": x2 / n2 - x1 / n1,
                "ci95": list(difference_ci95(x1, n1, x2, n2)),
                "test": test,
                "p_value": p_value,
                "p_holm": p_holm,
                "significant": p_holm < significance,
            }
        )
    best = max(names, key=lambda name: (summary[name]["acceptance_rate"], -names.index(name)))
    against_best = [c for c in comparisons if best in c["arms"]]
    top = summary[best]["acceptance_rate"]
    beats_all = all(c["significant"] for c in against_best) and all(
        summary[name]["acceptance_rate"] < top for name in names if name != best
    )
    # the comparison that decides: the best arm against its closest rival
    rival = max((x for x in names if x != best), key=lambda name: summary[name]["acceptance_rate"])
    deciding = next(c for c in against_best if rival in c["arms"])
    omnibus_test, omnibus_p = _table_test(list(arms.values()))
    result.update(
        control=control,
        difference=deciding["difference"],
        comparison=deciding["comparison"],
        ci95=deciding["ci95"],
        p_value=deciding["p_holm"],
        omnibus_p_value=omnibus_p,
        test=deciding["test"] if len(arms) == 2 else f"pairwise {deciding['test']}, Holm-corrected ({omnibus_test} omnibus)",
        comparisons=comparisons,
        winner=best if beats_all else None,
        status="winner" if beats_all else "inconclusive",
    )
    if not beats_all:
        # Holm's strictest level, alpha / number of pairs, so the estimate holds whichever rank the pair ends up with
        alpha = significance / len(pairs)
        needed = sample_size_per_arm(summary[best]["acceptance_rate"], summary[rival]["acceptance_rate"], alpha)
        have = min(arms[best][1], arms[rival][1])
        result["sample_size"] = {
            "comparison": f"{best} - {rival}",
            "observed_difference": summary[best]["acceptance_rate"] - summary[rival]["acceptance_rate"],
            "alpha": alpha,
            "power": POWER,
            "n_per_arm": needed,
            "additional_per_arm": None if needed is None else max(0, needed - have),
        }
    return result
