"""Well-formed answers (evaluate/wellformed.py) on hand-made predictions, the Wilson interval against
textbook values, and the measure as eval writes it and compare reads it (a tiny model)."""

import json

import pytest

from instructune import cli
from instructune.evaluate.compare import compare_runs
from instructune.evaluate.wellformed import (
    CHECKS, continues_prompt, prompt_labels, share_interval, shares_markdown, well_formed_scores,
)

DIALOGUE_PROMPT = ("Summarize this dialogue:\n\n#Person1#: Hi, Tom. Are you busy tomorrow afternoon?\n"
                   "#Person2#: I think I am. What's up?")
PIQA_PROMPT = ("Goal: Open a jar\n\nWhich solution works better? Answer with the solution itself.\nOPTIONS:\n"
               "- Twist the lid counterclockwise while holding the jar.\n- Bite the lid until it comes off the jar.")
PIQA_OPTIONS = ["Twist the lid counterclockwise while holding the jar.", "Bite the lid until it comes off the jar."]


def scores(answer, prompt, options=None, new_tokens=10, cap=64):
    return well_formed_scores(answer, prompt, options=options, new_tokens=new_tokens, max_new_tokens=cap)


class TestWellFormedScores:
    @pytest.mark.parametrize("answer, expected", [
        ("Twist the lid counterclockwise while holding the jar.", 1.0),
        ("twist the lid counterclockwise while holding the jar", 1.0),    # normalised: case, punctuation
        ("- Bite the lid until it comes off the jar.", 1.0),              # the option line's dash is punctuation
        ("Twist the lid.", 0.0),                                          # not an option
        ("The first one.", 0.0),
    ])
    def test_an_option_where_options_were_given(self, answer, expected):
        assert scores(answer, PIQA_PROMPT, PIQA_OPTIONS)["well_formed_option"] == expected

    def test_no_options_no_option_check(self):
        assert scores("Tom is busy.", DIALOGUE_PROMPT)["well_formed_option"] == 1.0

    def test_stopped_before_the_cap(self):
        assert scores("Tom is busy.", DIALOGUE_PROMPT, new_tokens=63, cap=64)["well_formed_stop"] == 1.0
        at_cap = scores("Tom is busy.", DIALOGUE_PROMPT, new_tokens=64, cap=64)
        assert at_cap["well_formed_stop"] == 0.0 and at_cap["well_formed"] == 0.0

    @pytest.mark.parametrize("answer", ["", "  \n "])
    def test_an_empty_answer_is_no_answer(self, answer):
        # A model that stops at once (seen after two training steps) answered nothing: not well formed.
        empty = scores(answer, DIALOGUE_PROMPT, new_tokens=0, cap=64)
        assert empty["well_formed_stop"] == 0.0 and empty["well_formed"] == 0.0

    @pytest.mark.parametrize("answer", [
        "#Person1#: Then let's meet on Friday.",                  # a new turn of the dialogue
        "Tom is busy.\n#Person2#: Fine.",                         # ... after a first line
        "Sure. #Person2#: OK then.",                              # a speaker turn inside a line
        "Summarize this dialogue:\nTom is busy.",                 # the prompt's own label opens a line
        "#Person1#: Hi, Tom. Are you busy tomorrow afternoon?",   # a repeated prompt line
        "They talk. Hi, Tom. Are you busy tomorrow afternoon?",
    ])
    def test_continuing_the_prompt(self, answer):
        assert continues_prompt(answer, DIALOGUE_PROMPT)
        assert scores(answer, DIALOGUE_PROMPT)["well_formed"] == 0.0

    @pytest.mark.parametrize("answer", [
        "#Person1# asks whether #Person2# is busy tomorrow; #Person2# is.",   # DialogSum's summaries name speakers
        "Tom is busy tomorrow afternoon.",
        "Note: Tom is busy.",                                                  # a label the prompt never uses
    ])
    def test_answers_that_do_not_continue_it(self, answer):
        assert not continues_prompt(answer, DIALOGUE_PROMPT)
        assert scores(answer, DIALOGUE_PROMPT) == dict.fromkeys((*CHECKS, "well_formed"), 1.0)

    def test_copying_an_option_line_is_no_repetition(self):
        answer = PIQA_OPTIONS[0]
        assert not continues_prompt(answer, PIQA_PROMPT, PIQA_OPTIONS)
        assert continues_prompt(answer + "\nOPTIONS:\n- more", PIQA_PROMPT, PIQA_OPTIONS)
        assert continues_prompt("Goal: Open a bottle", PIQA_PROMPT, PIQA_OPTIONS)

    def test_labels_are_short_line_openers(self):
        prompt = "Customer message: where is it?\nIntent: track_order\n\nWrite the support agent's answer."
        assert prompt_labels(prompt) == {"Customer message", "Intent"}
        assert prompt_labels("This is a long sentence with many words in it: yes") == set()


class TestShareInterval:
    @pytest.mark.parametrize("successes, n, low, high", [
        (81, 263, 0.2553, 0.3662),   # Wilson interval, Newcombe (1998) example 1... as Wikipedia / statsmodels
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
    ])
    def test_wilson_against_reference_values(self, successes, n, low, high):
        bounds = share_interval(successes, n)
        assert bounds == pytest.approx((low, high), abs=1e-4)

    def test_no_items(self):
        assert share_interval(0, 0) == (0.0, 1.0)


def _result(share, n=20):
    return {"tasks": {"t": {"metrics": {"rouge1": 0.3, "well_formed": share}, "n_examples": n}}}


def test_shares_table_lists_each_run():
    table = shares_markdown(["base", "tuned"], [_result(0.1), _result(0.9)])
    assert table.splitlines()[0] == "| task | base | tuned |"
    assert "0.100 [" in table and "0.900 [" in table and "(n=20)" in table
    assert shares_markdown(["a"], [{"tasks": {"piqa": {"metrics": {"acc": 0.5}}}}]) == ""


def test_eval_writes_the_measure_and_compare_tests_it(tmp_path, tiny_llama_dir, capsys):
    # A tiny model on a generation task with options (piqa_generate) and one without (dialogsum), each with its
    # own --max-new-tokens: every item carries the checks, the summary the Wilson interval, and compare pairs them.
    piqa = tmp_path / "piqa.jsonl"
    piqa.write_text("".join(json.dumps({"goal": f"Goal {i}", "sol1": f"do a{i}", "sol2": f"do b{i}", "label": i % 2}) + "\n"
                            for i in range(6)))
    dialogues = tmp_path / "dialogsum.jsonl"
    dialogues.write_text("".join(json.dumps({"dialogue": f"#Person1#: Hi {i}.\n#Person2#: Hello.",
                                             "summary": "They greet."}) + "\n" for i in range(6)))
    outputs = []
    for name in ("a", "b"):
        output = tmp_path / f"{name}.json"
        argv = ["eval", "--model", str(tiny_llama_dir), "--task", "piqa_generate", "--data", str(piqa),
                "--task", "dialogsum", "--data", str(dialogues), "--max-new-tokens", "3", "--max-new-tokens", "5",
                "--engine", "native", "--no-progress", "-o", str(output)]
        assert cli.main(argv) == 0
        outputs.append(output)
    result = json.loads(outputs[0].read_text())
    for task, cap in (("piqa_generate", 3), ("dialogsum", 5)):
        summary = result["tasks"][task]
        assert summary["max_new_tokens"] == cap
        assert {"well_formed", *CHECKS} <= set(summary["metrics"])
        low, high = summary["intervals"]["well_formed"]
        assert 0.0 <= low <= summary["metrics"]["well_formed"] <= high <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "a.predictions.jsonl").read_text().splitlines()]
    assert all(set(row["scores"]) >= {"well_formed", *CHECKS} for row in rows)
    assert "well formed" in capsys.readouterr().out
    compare_runs(outputs, tmp_path / "compare", names=["a", "b"])
    markdown = (tmp_path / "compare" / "comparison.md").read_text()
    assert "| piqa_generate | well_formed |" in markdown and "Well-formed answers" in markdown
