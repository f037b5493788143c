"""The built-in task library: every YAML validates, and every template renders every real row."""

from pathlib import Path

import pytest

from instructune.fileio.jsonio import read_jsonl
from instructune.data.render import render_example, render_records
from instructune.data.templates import METRICS, TASKS_DIR, list_tasks, load_task

HELLASWAG_INPUTS = [
    "Multi-choice problem: {context}\n{options_}",
    "Complete the passage.\n\n{context}\n{options_}",
    "How does this following sentence end (see options)?\n\n{context}\n{options_}",
    "What is the most logical completion for the following text (see options)?\n\n{context}\n{options_}",
    "Multi-choice problem: How does this text end?\n\n{context}\n{options_}",
    "Choose from the options on what happens next.\n\n{context}\n{options_}",
    "Complete the following sentence.\n\n{context}\n{options_}",
    "Choose from options: Fill in the remainder of the sentence.\n\n{context}\n{options_}",
    "What is the next event listed in the options is correct?\n\n{context}\n{options_}\nA:",
    "Complete the rest of the sentence by choosing from options.\n\n{context}\n{options_}",
]

# task -> the shared data files it must render, and the field the completion must equal.
REAL_DATA = {
    "hellaswag": ["hellaswag/validation.jsonl"],
    "piqa": ["piqa/validation.jsonl"],
    "dialogsum": ["dialogsum/train.jsonl", "dialogsum/validation.jsonl", "dialogsum/test.jsonl"],
    "dialogsum_reverse": ["dialogsum/train.jsonl", "dialogsum/validation.jsonl", "dialogsum/test.jsonl"],
    "alpaca": ["alpaca/train.jsonl"],
    "support_response": ["bitext_customer_support/train.jsonl"],
    "support_intent": ["bitext_customer_support/train.jsonl"],
}
GOLD = {
    "piqa": lambda r: r["sol2"] if r["label"] else r["sol1"],
    "hellaswag": lambda r: r["endings"][r["label"]],
    "dialogsum": lambda r: r.get("summary", r.get("summary1")),
    "dialogsum_reverse": lambda r: r["dialogue"],
    "alpaca": lambda r: r["output"],
    "support_response": lambda r: r["response"],
    "support_intent": lambda r: r["intent"],
}

DOLLY_CATEGORIES = ["open_qa", "general_qa", "classification", "closed_qa", "information_extraction",
                    "summarization", "brainstorming", "creative_writing"]
DOLLY_ROWS = [
    {"instruction": f"Do the {category} thing.", "context": context, "response": "Done.", "category": category}
    for category in DOLLY_CATEGORIES for context in ("", "Some {reference} text.")
]
BOOLQ_ROWS = [
    {"question": "is the sky blue", "passage": "The sky is blue on clear days.", "answer": True},
    {"question": "do fish fly", "passage": "Most fish swim; few glide.", "answer": False},
    {"question": "is it {braced}", "passage": "Yes it is.", "answer": "yes"},
]


@pytest.fixture(scope="module")
def rows_by_file(shared_data):
    cache: dict[str, list[dict]] = {}

    def rows(name: str) -> list[dict]:
        if name not in cache:
            cache[name] = read_jsonl(shared_data / name)
        return cache[name]

    return rows


class TestLibrary:
    @pytest.mark.parametrize("name", list_tasks())
    def test_every_task_validates_with_enough_templates(self, name):
        task = load_task(name)
        assert task.name == name and task.metric in METRICS and task.description
        # Instruction tasks carry many phrasings; an lm-eval benchmark task carries the harness's one prompt.
        assert len(task.templates) >= 8 or (task.eval_mode == "lm-eval" and len(task.templates) == 1)

    def test_every_yaml_is_listed(self):
        assert sorted(path.stem for path in Path(TASKS_DIR).rglob("*.yaml")) == list_tasks()

    def test_hellaswag_has_exactly_the_ten_given_templates(self):
        task = load_task("hellaswag")
        assert [t.input for t in task.templates] == HELLASWAG_INPUTS
        assert {t.target for t in task.templates} == {"{answer}"}

    def test_support_tasks_use_bitext_column_names(self):
        assert set(load_task("support_response").fields) == {"instruction", "intent", "response"}
        assert load_task("support_intent").metric == "exact_match"


@pytest.mark.parametrize("name", sorted(REAL_DATA))
def test_every_template_renders_every_real_row(name, rows_by_file):
    task = load_task(name)
    for file_name in REAL_DATA[name]:
        rows = rows_by_file(file_name)
        if name == "piqa" or name == "hellaswag":
            rows = [row for row in rows if "label" in row]
        for index in range(len(task.templates)):
            examples = render_records(task, rows, template=index)
            assert len(examples) == len(rows)
            for row, example in zip(rows, examples):
                assert example["prompt"].strip() and example["completion"] == GOLD[name](row)


@pytest.mark.parametrize("name", sorted(REAL_DATA))
def test_sampling_covers_templates_on_real_rows(name, rows_by_file):
    task = load_task(name)
    rows = rows_by_file(REAL_DATA[name][0])[:2000]
    assert {e["template"] for e in render_records(task, rows, seed=3)} == set(range(len(task.templates)))


def test_dolly_renders_every_category_with_and_without_context():
    task = load_task("dolly")
    for row in DOLLY_ROWS:
        for index in range(len(task.templates)):
            assert render_example(task, row, index)["completion"] == "Done."
    for example, row in zip(render_records(task, DOLLY_ROWS), DOLLY_ROWS):
        assert ("{reference}" in example["prompt"]) == bool(row["context"])
    used = {e["template"] for e in render_records(task, DOLLY_ROWS, template="all")}
    assert used == set(range(len(task.templates)))


def test_boolq_answers_yes_or_no():
    task = load_task("boolq")
    for index in range(len(task.templates)):
        examples = render_records(task, BOOLQ_ROWS, template=index)
        assert [e["completion"] for e in examples] == ["yes", "no", "yes"]
        assert [e["label"] for e in examples] == [1, 0, 1]
        assert examples[0]["options"] == ["no", "yes"]
