import json
import re
import string

import pytest

from instructune.data.support import (
    generate_support_records,
    support_conversations,
    support_splits,
    write_support_data,
)
from instructune.data.support_intents import INTENTS
from instructune.errors import InstructuneError

BITEXT_COLUMNS = {"instruction", "intent", "category", "response"}


def _slots(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field}


class TestIntents:
    def test_twelve_to_sixteen_intents_with_several_phrasings(self):
        assert 12 <= len(INTENTS) <= 16
        assert len({intent.name for intent in INTENTS}) == len(INTENTS)
        assert all(len(intent.phrasings) >= 6 for intent in INTENTS)

    def test_every_phrasing_gives_the_slots_its_answer_uses(self):
        for intent in INTENTS:
            for phrasing in intent.phrasings:
                assert _slots(intent.response) <= _slots(phrasing), (intent.name, phrasing)
            assert _slots(intent.response) <= _slots(intent.follow_up), intent.name
            assert all(not _slots(opener) for opener in intent.openers), intent.name

    def test_answers_are_short(self):
        for intent in INTENTS:
            assert len(intent.response.split()) < 60, intent.name


class TestGenerateSupportRecords:
    def test_bitext_columns_and_size(self):
        records = generate_support_records(600, seed=0)
        assert len(records) == 600
        assert all(set(r) == BITEXT_COLUMNS for r in records)
        assert all(isinstance(v, str) and v for r in records for v in r.values())

    def test_same_seed_same_data_other_seed_other_data(self):
        assert generate_support_records(100, seed=3) == generate_support_records(100, seed=3)
        assert generate_support_records(100, seed=3) != generate_support_records(100, seed=4)

    def test_all_intents_present_and_balanced(self):
        records = generate_support_records(160, seed=0)
        counts = {intent.name: 0 for intent in INTENTS}
        for r in records:
            counts[r["intent"]] += 1
        assert set(counts.values()) == {160 // len(INTENTS)}

    def test_category_is_fixed_per_intent(self):
        category_of = {intent.name: intent.category for intent in INTENTS}
        assert all(r["category"] == category_of[r["intent"]] for r in generate_support_records(200))

    def test_messages_are_unique(self):
        messages = [r["instruction"] for r in generate_support_records(600)]
        assert len(set(messages)) == len(messages)

    def test_answers_repeat_the_details_the_customer_gave(self):
        for r in generate_support_records(600):
            order_numbers = re.findall(r"#\d{5}", r["response"])
            emails = re.findall(r"[\w.]+@[\w.]+\w", r["response"])
            for value in order_numbers + emails:
                assert value in r["instruction"], r
        track = next(r for r in generate_support_records(50) if r["intent"] == "track_order")
        assert re.search(r"#\d{5}", track["response"]).group() in track["instruction"]

    def test_rejects_a_non_positive_count(self):
        with pytest.raises(InstructuneError, match="positive integer"):
            generate_support_records(0)


class TestSupportSplits:
    def test_sizes(self):
        splits = support_splits(600, seed=0)
        assert {k: len(v) for k, v in splits.items()} == {"train": 480, "validation": 60, "test": 60}

    def test_no_held_out_message_in_train(self):
        splits = support_splits(600, seed=0)
        train = {r["instruction"] for r in splits["train"]}
        assert not train & {r["instruction"] for r in splits["test"]}
        assert not train & {r["instruction"] for r in splits["validation"]}

    def test_held_out_messages_use_phrasings_unseen_in_train(self):
        splits = support_splits(600, seed=0)
        train_phrasings = {_phrasing(r) for r in splits["train"]}
        for split in ("validation", "test"):
            assert not train_phrasings & {_phrasing(r) for r in splits[split]}

    def test_all_intents_in_every_split(self):
        names = {intent.name for intent in INTENTS}
        for records in support_splits(600, seed=1).values():
            assert {r["intent"] for r in records} == names

    def test_deterministic(self):
        assert support_splits(200, seed=5) == support_splits(200, seed=5)
        assert support_splits(200, seed=5)["test"] != support_splits(200, seed=6)["test"]

    def test_rejects_fractions_that_leave_no_training_data(self):
        with pytest.raises(InstructuneError, match="validation_fraction \\+ test_fraction"):
            support_splits(100, validation_fraction=0.5, test_fraction=0.5)


class TestWriteSupportData:
    def test_writes_three_jsonl_files(self, tmp_path):
        paths = write_support_data(tmp_path / "support", n=100, seed=0)
        assert set(paths) == {"train", "validation", "test"}
        rows = [json.loads(line) for line in paths["test"].read_text(encoding="utf-8").splitlines()]
        assert rows == support_splits(100, seed=0)["test"]


class TestSupportConversations:
    def test_roles_alternate_and_end_with_the_assistant(self):
        conversations = support_conversations(100, seed=0)
        assert len(conversations) == 100
        for conversation in conversations:
            roles = [m["role"] for m in conversation["messages"]]
            assert len(roles) in (4, 6)
            assert roles == ["user", "assistant"] * (len(roles) // 2)
            assert all(m["content"] for m in conversation["messages"])

    def test_final_answer_uses_the_detail_given_in_the_second_turn(self):
        for conversation in support_conversations(50, seed=0):
            messages = conversation["messages"]
            for order in re.findall(r"#\d{5}", messages[3]["content"]):
                assert order in messages[2]["content"]
                assert order not in messages[0]["content"]

    def test_deterministic_and_has_three_turn_chats(self):
        assert support_conversations(30, seed=2) == support_conversations(30, seed=2)
        assert support_conversations(30, seed=2) != support_conversations(30, seed=3)
        assert any(len(c["messages"]) == 6 for c in support_conversations(30, seed=2))


def _matches(phrasing: str, message: str) -> bool:
    pattern = re.escape(phrasing.lower())
    pattern = re.sub(r"\\\{\w+\\\}", ".+", pattern)
    return re.search(pattern, message.lower()) is not None


def _phrasing(record: dict) -> str:
    intent = next(i for i in INTENTS if i.name == record["intent"])
    matching = [p for p in intent.phrasings if _matches(p, record["instruction"])]
    # The most specific (longest fixed text) phrasing that matches is the one used.
    return max(matching, key=lambda p: len(re.sub(r"\{\w+\}", "", p)))
