"""Template engine: validation at load, rendering, seeded choice, options and few-shot."""

import json
import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructune.data.render import extra_references, format_options, render_example, render_records
from instructune.data.templates import Options, Task, Template, list_tasks, load_task
from instructune.errors import InstructuneError


def qa_task(**overrides) -> Task:
    spec = dict(
        name="qa", kind="generation", fields=["question", "answer"], metric="rouge",
        templates=[Template("Q: {question}", "{answer}"), Template("Answer this: {question}", "{answer}"),
                   Template("{question}\nA:", "{answer}")],
    )
    spec.update(overrides)
    return Task(**spec)


def mc_task(**overrides) -> Task:
    spec = dict(
        name="mc", kind="multiple_choice", fields=["context", "endings", "label"], metric="accuracy",
        mapping={"ctx": "context"}, options=Options(field="endings", label="label"),
        templates=[Template("Finish: {context}\n{options_}", "{answer}"),
                   Template("{context}\n{options_}\nA:", "{answer}")],
    )
    spec.update(overrides)
    return Task(**spec)


MC_RECORD = {"ctx": "A man sits on a roof. He", "endings": ["flies.", "sings.", "pulls shingles."], "label": 2}


class TestValidation:
    def test_unknown_placeholder_names_task_template_and_placeholder(self):
        templates = [Template("Q: {question}", "{answer}"), Template("Q: {qestion}", "{answer}")]
        with pytest.raises(InstructuneError, match=r"task 'qa' template 1: unknown placeholder \{qestion\}"):
            qa_task(templates=templates)

    def test_options_placeholder_needs_options(self):
        with pytest.raises(InstructuneError, match=r"template 0: unknown placeholder \{options_\}"):
            qa_task(templates=[Template("{question}\n{options_}", "{answer}")])

    def test_empty_target(self):
        with pytest.raises(InstructuneError, match="task 'qa' template 0: empty target"):
            qa_task(templates=[Template("Q: {question}", "  ")])

    def test_duplicated_template(self):
        templates = [Template("Q: {question}", "{answer}"), Template("X {question}", "{answer}"),
                     Template("Q: {question}", "{answer}")]
        with pytest.raises(InstructuneError, match="template 2: duplicates template 0"):
            qa_task(templates=templates)

    def test_format_spec_rejected(self):
        with pytest.raises(InstructuneError, match="template 0: .*format spec"):
            qa_task(templates=[Template("Q: {question!r}", "{answer}")])

    def test_multiple_choice_needs_options(self):
        with pytest.raises(InstructuneError, match="needs options"):
            mc_task(options=None)

    def test_unknown_task_lists_builtins(self):
        with pytest.raises(InstructuneError, match="unknown task 'nope'; built-in tasks: alpaca"):
            load_task("nope")

    @pytest.mark.parametrize("file_name, templates, error", [
        ("t.yaml", "  - {input: '{q}', target: '{a}', tagret: x}\n", r"t\.yaml: templates\.0\.tagret: unknown key$"),
        ("reviews.yaml", "  - {input: '{q}', target: '{a}'}\n  - {input: '{q} {z}', target: '{a}'}\n",
         r"task 'reviews' template 1: unknown placeholder \{z\}"),
    ], ids=["unknown-key-names-file-and-key", "placeholder-error-names-file-task"])
    def test_yaml_error_names_where(self, tmp_path, file_name, templates, error):
        path = tmp_path / file_name
        path.write_text("kind: generation\nmetric: rouge\nfields: [q, a]\ntemplates:\n" + templates)
        with pytest.raises(InstructuneError, match=error):
            load_task(path)


class TestUserYaml:
    def test_user_task_renders(self, tmp_path):
        path = tmp_path / "sentiment.yaml"
        path.write_text(
            "description: review sentiment\nkind: classification\nmetric: accuracy\n"
            "fields: [review, stars]\nmapping: {text: review}\n"
            "options: {choices: [negative, positive], label: stars, style: letters}\n"
            "templates:\n  - input: \"Review: {review}\\n{options_}\"\n    target: \"{answer}\"\n")
        task = load_task(str(path))
        assert task.name == "sentiment" and task.kind == "classification"
        example = render_example(task, {"text": "Great {fun}!", "stars": "positive"}, 0)
        assert example["prompt"] == "Review: Great {fun}!\nOPTIONS:\n(A) negative\n(B) positive"
        assert (example["completion"], example["label"], example["options"]) == ("positive", 1, ["negative", "positive"])


class TestRenderExample:
    def test_multiple_choice_has_options_label_and_answer(self):
        example = render_example(mc_task(), MC_RECORD, 0)
        assert example == {
            "prompt": "Finish: A man sits on a roof. He\nOPTIONS:\n- flies.\n- sings.\n- pulls shingles.",
            "completion": "pulls shingles.", "task": "mc", "template": 0,
            "options": ["flies.", "sings.", "pulls shingles."], "label": 2,
        }

    def test_without_options_drops_block_and_its_line_break(self):
        example = render_example(mc_task(), MC_RECORD, 1, with_options=False)
        assert example["prompt"] == "A man sits on a roof. He\nA:"
        assert example["options"] == ["flies.", "sings.", "pulls shingles."]

    def test_template_flag_hides_options(self):
        templates = [Template("Finish: {context}\n{options_}", "{answer}", show_options=False)]
        assert render_example(mc_task(templates=templates), MC_RECORD, 0)["prompt"] == "Finish: A man sits on a roof. He"

    @pytest.mark.parametrize("label", [2, "2", "pulls shingles.", "PULLS SHINGLES."])
    def test_label_forms(self, label):
        assert render_example(mc_task(), {**MC_RECORD, "label": label}, 0)["label"] == 2

    def test_bool_label_against_choices(self):
        task = Task(name="yn", kind="classification", fields=["q", "a"], metric="accuracy",
                    options=Options(choices=("no", "yes"), label="a"), templates=[Template("{q}\n{options_}", "{answer}")])
        assert render_example(task, {"q": "Is ice cold?", "a": True}, 0)["completion"] == "yes"
        assert render_example(task, {"q": "Is fire cold?", "a": False}, 0)["label"] == 0

    def test_bad_label(self):
        with pytest.raises(InstructuneError, match="label 7 is out of range for 3 options"):
            render_example(mc_task(), {**MC_RECORD, "label": 7}, 0)

    def test_missing_field_names_task_template_field_and_column(self):
        with pytest.raises(InstructuneError, match=r"task 'mc' template 1: record lacks field 'context' \(raw column 'ctx'\)"):
            render_example(mc_task(), {"endings": ["a"], "label": 0}, 1)

    def test_optional_field_renders_empty(self):
        task = qa_task(fields=["question", "answer", "hint"], optional=["hint"],
                       templates=[Template("{question} {hint}", "{answer}")])
        assert render_example(task, {"question": "Why?", "answer": "So."}, 0)["prompt"] == "Why? "

    def test_mapping_prefers_mapped_column_then_own_name(self):
        task = qa_task(mapping={"answer1": "answer"})
        assert render_example(task, {"question": "q", "answer1": "first", "answer": "own"}, 0)["completion"] == "first"
        assert render_example(task, {"question": "q", "answer": "own"}, 0)["completion"] == "own"

    def test_unknown_template_index(self):
        with pytest.raises(InstructuneError, match=r"template 5 does not exist \(0..2\)"):
            render_example(qa_task(), {"question": "q", "answer": "a"}, 5)


class TestFormatOptions:
    def test_styles(self):
        assert format_options(["a", "b"]) == "OPTIONS:\n- a\n- b"
        assert format_options(["a", "b"], style="numbers", header="") == "1. a\n2. b"
        with pytest.raises(InstructuneError, match="dash, letters, numbers"):
            format_options(["a"], style="bullets")


RECORDS = [{"question": f"question {i}?", "answer": f"answer {i}"} for i in range(60)]


class TestRenderRecords:
    def test_all_gives_one_example_per_template(self):
        examples = render_records(qa_task(), RECORDS[:4], template="all")
        assert [e["template"] for e in examples] == [0, 1, 2] * 4

    def test_fixed_index(self):
        assert {e["template"] for e in render_records(qa_task(), RECORDS, template=1)} == {1}
        assert {e["template"] for e in render_records(qa_task(), RECORDS, template="2")} == {2}

    def test_bad_template_choice(self):
        with pytest.raises(InstructuneError, match="expected one of sample, all"):
            render_records(qa_task(), RECORDS, template="random")

    def test_sample_uses_every_template_and_depends_on_seed(self):
        first = [e["template"] for e in render_records(qa_task(), RECORDS, seed=0)]
        assert set(first) == {0, 1, 2}
        assert first == [e["template"] for e in render_records(qa_task(), RECORDS, seed=0)]
        assert first != [e["template"] for e in render_records(qa_task(), RECORDS, seed=1)]

    def test_when_conditions_pick_applicable_templates(self):
        task = load_task("alpaca")
        records = [{"instruction": "Say hi", "input": "", "output": "Hi"},
                   {"instruction": "Add", "input": "1+1", "output": "2"}] * 30
        for example in render_records(task, records, template="all"):
            uses_input = "input" in task.templates[example["template"]].placeholders()
            assert uses_input == ("1+1" in example["prompt"])

    def test_row_error_names_file_and_line(self, tmp_path):
        path = tmp_path / "rows.jsonl"
        rows = [RECORDS[0], {"question": "no answer"}]
        path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
        with pytest.raises(InstructuneError, match=rf"task 'qa' template 0: record lacks field 'answer' at {path}:2"):
            render_records(qa_task(), rows, template=0, source=path)

    def test_dataset_input(self):
        import datasets

        examples = render_records(qa_task(), datasets.Dataset.from_list(RECORDS[:3]), template=0)
        assert examples[2]["prompt"] == "Q: question 2?"

    def test_fast_enough(self):
        task = load_task("alpaca")
        records = [{"instruction": f"Task {i}", "input": "" if i % 2 else f"x{i}", "output": "y"} for i in range(20_000)]
        start = time.perf_counter()
        assert len(render_records(task, records)) == 20_000
        assert time.perf_counter() - start < 3.0


class TestFewShot:
    def test_k_exemplars_excluding_the_example_itself(self):
        examples = render_records(qa_task(), RECORDS, template=0, num_fewshot=3, fewshot_separator="\n###\n")
        for record, example in zip(RECORDS, examples):
            parts = example["prompt"].split("\n###\n")
            assert len(parts) == 4
            assert parts[-1] == f"Q: {record['question']}"
            assert all(record["question"] not in part for part in parts[:-1])
            assert all(part.startswith("Q: question ") and "\nanswer " in part for part in parts[:-1])

    def test_char_budget(self):
        examples = render_records(qa_task(), RECORDS, template=0, num_fewshot=5, max_fewshot_tokens=60)
        for example in examples:
            prefix = example["prompt"].rsplit("Q: ", 1)[0]
            assert len(prefix) <= 60
            assert prefix.count("Q: ") == 2  # each exemplar costs 28-29 chars with the separator

    def test_token_budget(self, tokenizer):
        examples = render_records(qa_task(), RECORDS, template=0, num_fewshot=5, max_fewshot_tokens=30, tokenizer=tokenizer)
        for example in examples:
            prefix = example["prompt"].rsplit("Q: ", 1)[0]
            assert len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) <= 30

    def test_stable_under_reordering(self):
        forward = render_records(qa_task(), RECORDS, num_fewshot=2)
        backward = render_records(qa_task(), RECORDS[::-1], num_fewshot=2)[::-1]
        assert forward == backward


# --- property tests -------------------------------------------------------------------------------

any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
braced_text = st.lists(st.sampled_from(["{", "}", "{question}", "{0}", "{{", "x", " ", "\n", "é"]), max_size=12).map("".join)
field_text = st.one_of(any_text, braced_text)


@settings(max_examples=150, deadline=None)
@given(question=field_text, answer=field_text)
def test_field_values_render_literally(question, answer):
    task = qa_task()
    for index, template in enumerate(task.templates):
        example = render_example(task, {"question": question, "answer": answer}, index)
        assert example["prompt"] == template.input.replace("{question}", question)
        assert example["completion"] == answer


@settings(max_examples=60, deadline=None)
@given(records=st.lists(st.fixed_dictionaries({"question": field_text, "answer": field_text}), min_size=1, max_size=30),
       seed=st.integers(0, 2**32), permutation_seed=st.randoms(use_true_random=False))
def test_seeded_choice_is_stable_under_reordering(records, seed, permutation_seed):
    task = qa_task()
    choice = {json.dumps(r, sort_keys=True): e["template"] for r, e in zip(records, render_records(task, records, seed=seed))}
    shuffled = list(records)
    permutation_seed.shuffle(shuffled)
    for record, example in zip(shuffled, render_records(task, shuffled, seed=seed)):
        assert example["template"] == choice[json.dumps(record, sort_keys=True)]


@settings(max_examples=60, deadline=None)
@given(endings=st.lists(field_text, min_size=2, max_size=5), data=st.data())
def test_answer_is_gold_option(endings, data):
    label = data.draw(st.integers(0, len(endings) - 1))
    example = render_example(mc_task(), {"ctx": "c", "endings": endings, "label": label}, 0)
    assert example["completion"] == endings[label] and example["label"] == label
    assert example["prompt"].endswith(format_options(endings))


def test_list_tasks_has_the_library():
    assert {"hellaswag", "piqa", "dialogsum", "dialogsum_reverse", "alpaca", "dolly", "support_response",
            "support_intent", "boolq"} <= set(list_tasks())
    assert all(set(name) <= set(string.ascii_lowercase + "_") for name in list_tasks())


class TestExtraReferences:
    """Numbered target columns (DialogSum test's summary1..3) give one reference per column."""

    RECORD = {"dialogue": "#Person1#: Hi.", "summary1": "They greet.", "summary2": "A greeting.",
              "summary3": "They greet.", "topic1": "hello", "topic2": "greeting", "topic3": "hi"}

    def test_one_reference_per_column_duplicates_kept(self):
        # DialogSum test_114 repeats summary1 as summary3: both rows count (issue 28).
        assert extra_references(load_task("dialogsum"), self.RECORD, 0) == ["They greet.", "A greeting.", "They greet."]

    def test_groups_the_target_does_not_read_give_none(self):
        # dialogsum_reverse's target is the dialogue: summary1..3 and topic1..3 only change the prompt.
        assert extra_references(load_task("dialogsum_reverse"), self.RECORD, 1) == []

    def test_without_numbered_columns(self):
        assert extra_references(load_task("dialogsum"), {"dialogue": "...", "summary": "S"}, 0) == []


class TestLmEvalTasks:
    """hellaswag_lmeval and piqa_lmeval: lm-evaluation-harness 0.4's prompts and HellaSwag clean-up."""

    def test_hellaswag_cleanup_as_the_harness(self):
        from instructune.data.render import clean_hellaswag_text

        # The harness's rule (tasks/hellaswag/utils.py): strip, " [title]" -> ". ", drop [tags], fold "  " once.
        assert clean_hellaswag_text(" Wash hands [title] Use soap. [step] Rub  well. ") == "Wash hands. Use soap. Rub well."
        assert clean_hellaswag_text("a   b") == "a  b"  # one pass, as str.replace
        assert clean_hellaswag_text("[header] Do it [substeps] now") == " Do it  now".replace("  ", " ")

    def test_every_named_preprocess_has_a_cleanup(self):
        from instructune.data import render
        from instructune.data.templates import PREPROCESSORS

        assert set(render._CLEANUPS) == set(PREPROCESSORS)

    def test_hellaswag_prompt_is_activity_label_and_cleaned_context(self):
        task = load_task("hellaswag_lmeval")
        record = {"activity_label": "Roof shingle removal", "ctx": "A man is on a roof [title] he",
                  "endings": ["falls [step] down.", "pulls  shingles."], "label": 1}
        example = render_example(task, record, 0)
        assert task.eval_mode == "lm-eval" and len(task.templates) == 1
        assert example["prompt"] == "Roof shingle removal: A man is on a roof. he"
        assert example["options"] == ["falls  down.".replace("  ", " "), "pulls shingles."]

    def test_piqa_prompt_is_the_harness_question_answer(self):
        example = render_example(load_task("piqa_lmeval"), {"goal": "Open a jar", "sol1": "Twist ", "sol2": "Bite",
                                                            "label": 0}, 0)
        assert example["prompt"] == "Question: Open a jar\nAnswer:"
        assert example["options"] == ["Twist ", "Bite"]  # options are not stripped: the harness scores them as given

    def test_instruction_tasks_default_to_instruct_mode(self):
        assert load_task("hellaswag").eval_mode == "instruct" and load_task("hellaswag").preprocess is None

    def test_bad_eval_mode_names_the_modes(self, tmp_path):
        path = tmp_path / "t.yaml"
        path.write_text("kind: generation\nfields: [q]\nmetric: rouge\neval_mode: harness\n"
                        "templates: [{input: '{q}', target: '{q}'}]\n")
        with pytest.raises(InstructuneError, match="eval_mode"):
            load_task(path)
