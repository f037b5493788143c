"""Paired statistics: bootstrap intervals cover the truth at their nominal rate, the exact test equals references."""

import itertools

import numpy as np
import pytest

from instructune.errors import InstructuneError
from instructune.evaluate.stats import (
    binomial_two_sided_p,
    is_binary,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_difference,
)

# scipy.stats.binomtest(k, n).pvalue (scipy 1.17.1, two-sided, p = 1/2); scipy is not a dependency.
SCIPY_BINOMTEST = {(9, 10): 0.021484375, (1, 11): 0.01171875, (3, 4): 0.625, (86, 236): 3.7159361395713866e-05,
                   (40, 100): 0.05688793364098089, (0, 7): 0.015625, (12, 30): 0.36159460805356514,
                   (480, 1000): 0.2174482932041415, (4700, 10_000): 2.076033695920612e-09}


def _coverage(draw, truth: float, *, trials: int = 300, n_items: int = 100) -> float:
    """Share of simulated data sets whose 95% interval contains the true mean difference."""
    rng = np.random.default_rng(1234)
    hits = 0
    for trial in range(trials):
        before, after = draw(rng, n_items)
        low, high = paired_bootstrap_ci(before, after, n_resamples=1000, seed=trial)
        hits += low <= truth <= high
    return hits / trials


class TestPairedBootstrapCI:
    def test_covers_the_true_difference_of_skewed_scores(self):
        # ROUGE-like scores in [0, 1]: Beta(2, 5) before (mean 2/7), then + 0.05 and noise on each item.
        def draw(rng, n):
            before = rng.beta(2, 5, n)
            return before, before + 0.05 + rng.normal(0, 0.1, n)

        # 300 data sets of 100 items: coverage within about 2.5 standard errors (0.013) of 0.95.
        assert 0.92 <= _coverage(draw, 0.05) <= 0.99

    def test_covers_the_true_difference_of_accuracies(self):
        # Each item: before right with p 0.6; the tuned run loses 15% of items and gains 5% (true change -0.10).
        def draw(rng, n):
            u = rng.random(n)
            before = (rng.random(n) < 0.6).astype(float)
            after = np.where(u < 0.15, 0.0, np.where(u < 0.20, 1.0, before))
            return before, after

        truth = 0.05 * 0.4 - 0.15 * 0.6
        assert 0.92 <= _coverage(draw, truth) <= 0.99

    def test_seeded(self):
        rng = np.random.default_rng(0)
        before, after = rng.random(40), rng.random(40)
        assert paired_bootstrap_ci(before, after, seed=3) == paired_bootstrap_ci(before, after, seed=3)
        assert paired_bootstrap_ci(before, after, seed=3) != paired_bootstrap_ci(before, after, seed=4)

    def test_constant_change_has_a_point_interval(self):
        assert paired_bootstrap_ci([0.1, 0.2, 0.3], [0.3, 0.4, 0.5]) == (0.2, 0.2)

    def test_many_items_resample_in_chunks(self):
        rng = np.random.default_rng(0)
        before = rng.random(50_000)
        after = before + rng.normal(0.01, 0.1, 50_000)
        low, high = paired_bootstrap_ci(before, after, n_resamples=200)
        # Standard error 0.1 / sqrt(50,000) = 0.00045: the interval is about +-0.0009 around the mean.
        mean = float(np.mean(after - before))
        assert low < mean < high and high - low == pytest.approx(2 * 1.96 * 0.1 / 50_000**0.5, rel=0.25)

    def test_bad_input_raises(self):
        with pytest.raises(InstructuneError, match="one pair per item"):
            paired_bootstrap_ci([1, 0], [1])
        with pytest.raises(InstructuneError, match="between 0 and 1"):
            paired_bootstrap_ci([1, 0], [1, 1], confidence=95)
        with pytest.raises(InstructuneError, match="no items"):
            paired_bootstrap_ci([], [])


class TestBinomialTwoSidedP:
    @pytest.mark.parametrize(("successes", "trials"), sorted(SCIPY_BINOMTEST))
    def test_equals_scipy_binomtest(self, successes, trials):
        assert binomial_two_sided_p(successes, trials) == pytest.approx(SCIPY_BINOMTEST[successes, trials], rel=1e-12)

    def test_hand_computed(self):
        # 9 of 10: P(X <= 1) + P(X >= 9) = 2 * (1 + 10) / 1024.
        assert binomial_two_sided_p(9, 10) == 22 / 1024
        assert binomial_two_sided_p(5, 10) == 1.0 and binomial_two_sided_p(0, 0) == 1.0

    def test_thousands_of_trials_do_not_underflow(self):
        assert binomial_two_sided_p(5000, 10_000) == 1.0
        assert 0 < binomial_two_sided_p(9_000, 20_000) < 1e-40  # 2**20000 overflows a float


class TestMcnemarExact:
    @pytest.mark.parametrize(("lost", "gained", "ties"), [(0, 0, 5), (1, 4, 3), (6, 1, 0), (2, 9, 10), (5, 5, 2)])
    def test_equals_enumerating_every_relabelling(self, lost, gained, ties):
        # Reference by brute force: under "no change" each discordant item is lost or gained with
        # probability 1/2; p = share of the 2**n equally likely outcomes at least as unbalanced.
        discordant = lost + gained
        observed = abs(gained - lost)
        outcomes = list(itertools.product((-1, 1), repeat=discordant))
        reference = sum(abs(sum(o)) >= observed for o in outcomes) / len(outcomes)
        before = [1] * lost + [0] * gained + [1] * ties
        after = [0] * lost + [1] * gained + [1] * ties
        assert mcnemar_exact(before, after) == pytest.approx(reference, rel=1e-12)

    def test_only_discordant_items_count(self):
        both_right = [1] * 50
        assert mcnemar_exact([1, 1, 1, 0] + both_right, [0, 0, 0, 1] + both_right) == mcnemar_exact(
            [1, 1, 1, 0], [0, 0, 0, 1])

    def test_non_binary_scores_raise(self):
        with pytest.raises(InstructuneError, match="0/1"):
            mcnemar_exact([0.5, 1], [1, 1])


class TestPairedDifference:
    def test_binary_scores_use_the_exact_test(self):
        result = paired_difference([1] * 10 + [0] * 10, [0] + [1] * 19)
        assert result["test"] == "exact McNemar"
        assert result["p_value"] == binomial_two_sided_p(10, 11) and result["significant"]
        assert result["n"] == 20 and result["ci_low"] <= 0.45 <= result["ci_high"]

    def test_continuous_scores_use_the_interval(self):
        before = [0.1 * (i % 7) for i in range(30)]
        small = paired_difference(before, [b + (0.01 if i % 2 else -0.01) for i, b in enumerate(before)])
        large = paired_difference(before, [b + 0.2 for b in before])
        assert small["test"] == large["test"] == "paired bootstrap" and small["p_value"] is None
        assert small["ci_low"] < 0 < small["ci_high"] and small["significant"] is False
        assert large["significant"] is True

    def test_too_few_items_for_a_bootstrap_verdict(self):
        assert paired_difference([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])["significant"] is None

    def test_no_change_is_rarely_significant(self):
        # Same accuracy before and after, items reshuffled at random: the 5% test fires on at most ~5%.
        rng = np.random.default_rng(7)
        fired = sum(
            paired_difference((rng.random(100) < 0.6).astype(float), (rng.random(100) < 0.6).astype(float),
                              n_resamples=200)["significant"]
            for _ in range(300)
        )
        assert fired / 300 <= 0.08


class TestIsBinary:
    def test_values(self):
        assert is_binary([0, 1.0, True]) and not is_binary([0, 0.5])
