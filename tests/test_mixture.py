"""Task mixing: proportional with cap (T5/FLAN), temperature, explicit weights; determinism; report."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructune.data.mixture import STRATEGIES, MixtureConfig, mix, mixing_rates
from instructune.errors import InstructuneError


def tasks(**sizes):
    return {name: [{"task": name, "i": i} for i in range(size)] for name, size in sizes.items()}


class TestMixingRates:
    def test_proportional_with_cap_matches_t5(self):
        # T5 (Raffel et al. 2020, sec. 3.5.2): r_m = min(e_m, K) / sum_n min(e_n, K).
        assert mixing_rates({"a": 900, "b": 100, "c": 50}, cap=300) == {"a": 300 / 450, "b": 100 / 450, "c": 50 / 450}

    def test_temperature_one_is_proportional_and_high_temperature_is_uniform(self):
        sizes = {"a": 900, "b": 100}
        assert mixing_rates(sizes, strategy="temperature", temperature=1.0) == pytest.approx(mixing_rates(sizes))
        flat = mixing_rates(sizes, strategy="temperature", temperature=1e6)
        assert flat["a"] == pytest.approx(0.5, abs=1e-4)

    def test_temperature_two_is_square_root(self):
        rates = mixing_rates({"a": 400, "b": 100}, strategy="temperature", temperature=2.0)
        assert rates == pytest.approx({"a": 20 / 30, "b": 10 / 30})

    def test_weights(self):
        assert mixing_rates({"a": 10, "b": 10}, strategy="weights", weights={"a": 3, "b": 1}) == {"a": 0.75, "b": 0.25}

    def test_unknown_strategy_lists_allowed(self):
        with pytest.raises(InstructuneError, match="allowed: proportional, temperature, weights"):
            mixing_rates({"a": 1}, strategy="uniform")

    def test_weights_must_cover_tasks(self):
        with pytest.raises(InstructuneError, match="no weight for task 'b'"):
            mixing_rates({"a": 1, "b": 1}, strategy="weights", weights={"a": 1})
        with pytest.raises(InstructuneError, match="unknown task 'z'"):
            mixing_rates({"a": 1}, strategy="weights", weights={"a": 1, "z": 1})


class TestMix:
    def test_cap_limits_each_task_without_repeats(self):
        mixed, report = mix(tasks(a=900, b=100), cap=300)
        assert report.counts == {"a": 300, "b": 100} and len(mixed) == 400
        a_items = [e["i"] for e in mixed if e["task"] == "a"]
        assert len(set(a_items)) == 300  # drawn without replacement
        assert report.proportions == {"a": 0.75, "b": 0.25}

    def test_total_and_upsampling_report_passes(self):
        mixed, report = mix(tasks(a=10, b=10), strategy="weights", weights={"a": 3, "b": 1}, total=40)
        assert report.counts == {"a": 30, "b": 10}
        assert report.passes["a"] == 3.0
        a_items = [e["i"] for e in mixed if e["task"] == "a"]
        assert sorted(a_items) == sorted(list(range(10)) * 3)  # whole passes before any repeat

    def test_deterministic_and_seeded(self):
        first, _ = mix(tasks(a=50, b=30), cap=40, seed=7)
        again, _ = mix(tasks(a=50, b=30), cap=40, seed=7)
        other, _ = mix(tasks(a=50, b=30), cap=40, seed=8)
        assert first == again and first != other

    def test_a_smaller_count_draws_a_subset_of_a_larger_one(self):
        # configs/multitask: the mixture's share of a task is a subset of that task's single-task run.
        single, _ = mix(tasks(a=100), total=60, seed=0)
        mixture, _ = mix({**tasks(a=100), **tasks(b=30)}, strategy="weights", weights={"a": 15, "b": 10}, total=25)
        assert {e["i"] for e in mixture if e["task"] == "a"} < {e["i"] for e in single}

    def test_tasks_are_interleaved(self):
        mixed, _ = mix(tasks(a=100, b=100))
        assert {e["task"] for e in mixed[:20]} == {"a", "b"}

    def test_report_dict(self):
        _, report = mix(tasks(a=3, b=1), total=4)
        info = report.to_dict()
        assert info["total"] == 4 and info["tasks"]["a"] == {"available": 3, "rate": 0.75, "examples": 3,
                                                              "proportion": 0.75, "passes": 1.0}
        assert "a" in report.format()

    def test_empty_mixture(self):
        with pytest.raises(InstructuneError, match="no tasks"):
            mix({})


@settings(max_examples=100, deadline=None)
@given(sizes=st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 200), min_size=1),
       strategy=st.sampled_from(["proportional", "temperature"]), cap=st.one_of(st.none(), st.integers(1, 150)),
       total=st.one_of(st.none(), st.integers(0, 500)), temperature=st.floats(0.5, 5))
def test_counts_sum_to_total_and_follow_rates(sizes, strategy, cap, total, temperature):
    mixed, report = mix(tasks(**sizes), strategy=strategy, cap=cap, total=total, temperature=temperature)
    expected_total = total if total is not None else sum(min(s, cap) if cap else s for s in sizes.values())
    assert len(mixed) == report.total == expected_total
    for name, count in report.counts.items():
        assert abs(count - report.rates[name] * expected_total) < 1  # largest-remainder rounding
        assert sum(e["task"] == name for e in mixed) == count


class TestMixtureConfig:
    def test_unknown_strategy(self):
        with pytest.raises(ValueError, match="allowed: " + ", ".join(STRATEGIES)):
            MixtureConfig(tasks=[{"task": "piqa", "data": "x.jsonl"}], strategy="uniform")

    def test_unknown_key(self):
        with pytest.raises(ValueError, match="limitt"):
            MixtureConfig(tasks=[{"task": "piqa", "data": "x.jsonl", "limitt": 3}])

    def test_duplicate_names(self):
        with pytest.raises(ValueError, match="share a name"):
            MixtureConfig(tasks=[{"task": "piqa", "data": "x.jsonl"}, {"task": "piqa", "data": "y.jsonl"}])
