"""Generation metrics against hand-computed values and against rouge-score itself."""

import pytest
from rouge_score import rouge_scorer

from instructune.data.render import extra_references
from instructune.data.templates import load_task
from instructune.errors import InstructuneError
from instructune.evaluate.metrics import (
    exact_match, generation_item_scores, generation_metrics, normalize_answer, rouge_scores, token_f1,
)


class TestNormalizeAnswer:
    def test_squad_normalisation(self):
        assert normalize_answer("  The Cat, sat!  ") == "cat sat"
        assert normalize_answer("An apple a day") == "apple day"

    def test_exact_match_ignores_case_punctuation_articles(self):
        assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
        assert exact_match("Eiffel", "eiffel tower") == 0.0


class TestTokenF1:
    def test_hand_computed(self):
        # "cat sat" vs "cat sat down": 2 shared, precision 2/2, recall 2/3 -> F1 0.8
        assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)

    def test_repeated_tokens_count_once_per_match(self):
        # prediction "cat cat", reference "cat": 1 shared, P 1/2, R 1/1 -> 2/3
        assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)

    def test_empty(self):
        assert token_f1("", "") == 1.0
        assert token_f1("", "cat") == 0.0


class TestRougeScores:
    def test_known_prediction(self):
        # 3 of 6 reference unigrams, all 3 predicted: P 1, R 1/2 -> 2/3.
        # 2 of 5 reference bigrams, both predicted: P 1, R 2/5 -> 4/7.
        scores = rouge_scores("the cat sat", ["the cat sat on the mat"])
        assert scores["rouge1"] == pytest.approx(2 / 3)
        assert scores["rouge2"] == pytest.approx(4 / 7)
        assert scores["rougeL"] == pytest.approx(2 / 3)

    def test_stemming(self):
        # Stemmed: "cats"->"cat", "running"->"run", "stopped"->"stop": 4 of 6 predicted tokens match all 4.
        scores = rouge_scores("The cats are running.\nThey stop.", ["cat run\nthey stopped"])
        assert scores["rouge1"] == pytest.approx(0.8)

    def test_lsum_splits_sentences_at_newlines(self):
        # Sentences swapped: the longest common subsequence over the whole text is 2 of 4 tokens,
        # but sentence by sentence every reference token is matched.
        scores = rouge_scores("alpha beta\ngamma delta", ["gamma delta\nalpha beta"])
        assert scores["rougeL"] == pytest.approx(0.5)
        assert scores["rougeLsum"] == pytest.approx(1.0)

    def test_multi_reference_matches_rouge_score_score_multi(self):
        references = ["a dog ran in the park", "the cat sat on the mat", "cats sit"]
        prediction = "the cat sat quietly"
        expected = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
        expected = expected.score_multi(references, prediction)
        scores = rouge_scores(prediction, references)
        assert scores == pytest.approx({key: value.fmeasure for key, value in expected.items()})


class TestGenerationMetrics:
    def test_averages_over_predictions(self):
        metrics = generation_metrics(["the cat sat", "Paris"], ["the cat sat on the mat", "paris"])
        assert metrics["rouge1"] == pytest.approx((2 / 3 + 1.0) / 2)
        assert metrics["exact_match"] == pytest.approx(0.5)
        assert metrics["f1"] == pytest.approx((2 / 3 + 1.0) / 2)  # "cat sat" vs "cat sat on mat": P 1, R 1/2
        assert "rouge1_first_ref" not in metrics

    def test_best_reference_and_first_reference(self):
        metrics = generation_metrics(["the cat sat"], [["a dog ran", "the cat sat on the mat"]])
        assert metrics["rouge1"] == pytest.approx(2 / 3)
        assert metrics["rouge1_first_ref"] == 0.0
        assert set(metrics) >= {"rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "f1", "rougeLsum_first_ref"}

    def test_three_protocols_against_rouge_score(self):
        predictions = ["#Person1# asks #Person2# about the trip.", "They plan a party on Friday."]
        references = [["#Person1# and #Person2# talk about a trip.", "#Person2# tells #Person1# about a trip.",
                       "A talk about travel."],
                      ["They are planning a Friday party.", "Friends plan a party.", "A party is planned for Friday."]]
        metrics = generation_metrics(predictions, references)
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
        for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            per_item = [[scorer.score(ref, pred)[key].fmeasure for ref in refs] for pred, refs in zip(predictions, references)]
            assert metrics[key] == pytest.approx(sum(max(s) for s in per_item) / 2)
            assert metrics[f"{key}_first_ref"] == pytest.approx(sum(s[0] for s in per_item) / 2)
            assert metrics[f"{key}_mean_ref"] == pytest.approx(sum(sum(s) / 3 for s in per_item) / 2)

    def test_mean_over_references_is_the_one_row_per_reference_table(self):
        # The Hugging Face copy of DialogSum test holds one row per reference; scoring it row by row
        # with a single reference each is the mean-over-references protocol.
        predictions = ["the cat sat", "a dog barked loudly"]
        references = [["the cat sat on the mat", "a cat sits", "cats"], ["the dog barked", "dogs bark", "a loud dog"]]
        flat = generation_metrics([p for p, refs in zip(predictions, references) for _ in refs],
                                  [ref for refs in references for ref in refs])
        assert generation_metrics(predictions, references)["rouge1_mean_ref"] == pytest.approx(flat["rouge1"])

    def test_repeated_reference_counts_once_per_row(self):
        # DialogSum test_19: summary2 == summary3. The mean over references is over the 3 rows, by hand
        # with rouge-score; best of 3 and the first reference do not change.
        record = {"dialogue": "#Person1#: Can I help you? #Person2#: I'd like a new phone.",
                  "summary1": "#Person1# helps #Person2# to choose a new phone.",
                  "summary2": "#Person2# wants to buy a new mobile phone from #Person1#.",
                  "summary3": "#Person2# wants to buy a new mobile phone from #Person1#."}
        references = extra_references(load_task("dialogsum"), record, 0)
        prediction = "#Person2# buys a new phone with a camera."
        metrics = generation_metrics([prediction], [references])
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
        rows = [scorer.score(record[f"summary{k}"], prediction) for k in (1, 2, 3)]
        for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            values = [row[key].fmeasure for row in rows]
            assert metrics[f"{key}_mean_ref"] == pytest.approx(sum(values) / 3)
            assert metrics[f"{key}_mean_ref"] != pytest.approx((values[0] + values[1]) / 2)
            assert metrics[key] == pytest.approx(max(values))
            assert metrics[f"{key}_first_ref"] == pytest.approx(values[0])

    def test_mismatched_lengths_raise(self):
        with pytest.raises(InstructuneError, match="2 predictions but 1 references"):
            generation_metrics(["a", "b"], ["a"])

    def test_empty_reference_list_raises(self):
        with pytest.raises(InstructuneError, match="reference 0"):
            generation_metrics(["a"], [[]])


class TestGenerationItemScores:
    def test_one_dict_per_prediction_averaging_to_the_metrics(self):
        predictions = ["the cat sat", "Paris", "no idea"]
        references = [["a dog ran", "the cat sat on the mat"], ["paris"], ["London"]]
        items = generation_item_scores(predictions, references)
        assert [item["exact_match"] for item in items] == [0.0, 1.0, 0.0]
        assert items[0]["rouge1"] == pytest.approx(2 / 3) and items[0]["rouge1_first_ref"] == 0.0
        assert items[0]["rouge1_mean_ref"] == pytest.approx(1 / 3)
        metrics = generation_metrics(predictions, references)
        assert {key: sum(item[key] for item in items) / 3 for key in metrics} == pytest.approx(metrics)
