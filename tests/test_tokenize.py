"""Tokenization for training: labels on the response only, an exact prompt/response boundary, pad == eos,
malformed rows named by file:line, and a report of what was cut, dropped and skipped."""

import json

import pytest

from instructune.errors import InstructuneError
from instructune.data.tokenize import (
    IGNORE_INDEX,
    describe_report,
    encode_example,
    encode_messages,
    encode_prompt_completion,
    format_prompt,
    prompt_token_ids,
    tokenize_examples,
)

EXAMPLE = {"prompt": "Where is my order?", "completion": "Your order has shipped."}


def labelled(encoded):
    return [token for token, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE_INDEX]


class TestPromptCompletion:
    def test_prompt_masked_completion_labelled(self, tokenizer):
        encoded = encode_prompt_completion(EXAMPLE, tokenizer, 512)
        n_prompt = len(prompt_token_ids(tokenizer, EXAMPLE["prompt"]))
        assert encoded["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert encoded["labels"][n_prompt:] == encoded["input_ids"][n_prompt:]
        completion = tokenizer(EXAMPLE["completion"], add_special_tokens=False)["input_ids"]
        assert labelled(encoded) == completion + [tokenizer.eos_token_id]
        assert not encoded["truncated"]

    def test_real_eos_keeps_its_label_although_pad_is_eos(self, tokenizer):
        assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the SmolLM2 situation
        encoded = encode_prompt_completion(EXAMPLE, tokenizer, 512)
        assert encoded["input_ids"][-1] == tokenizer.eos_token_id
        assert encoded["labels"][-1] == tokenizer.eos_token_id
        # The chat-formatted prompt holds <|im_end|> too (end of the system turn): those stay masked.
        eos_positions = [i for i, t in enumerate(encoded["input_ids"]) if t == tokenizer.eos_token_id]
        assert len(eos_positions) > 1
        assert all(encoded["labels"][i] == IGNORE_INDEX for i in eos_positions[:-1])

    @pytest.mark.parametrize("completion", ["It shipped.", " It shipped.", "\nIt shipped.", "!"])
    def test_boundary_same_as_tokenizing_together(self, tokenizer, completion):
        # (A completion opening with a run of whitespace may merge with the prompt's last "\n" when tokenized
        # together; apart is then the right one, since it matches the prompt ids seen at generation.)
        encoded = encode_prompt_completion({"prompt": "Where?", "completion": completion}, tokenizer, 512)
        text = format_prompt(tokenizer, "Where?") + completion
        together = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert encoded["input_ids"][:-1] == together  # all but the appended EOS
        n_prompt = len(prompt_token_ids(tokenizer, "Where?"))
        assert encoded["input_ids"][:n_prompt] == together[:n_prompt]

    def test_chat_template_wraps_prompt(self, tokenizer):
        text = format_prompt(tokenizer, "Hi")
        assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        assert format_prompt(tokenizer, "Hi", chat_template=False) == "Hi\n"

    def test_truncation_keeps_the_completion(self, tokenizer):
        long_prompt = "Summarize the dialogue. " * 40
        example = {"prompt": long_prompt, "completion": "I have started the refund."}
        encoded = encode_prompt_completion(example, tokenizer, 48)
        assert encoded["truncated"] and len(encoded["input_ids"]) == 48
        completion = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
        assert labelled(encoded) == completion + [tokenizer.eos_token_id]
        assert encoded["input_ids"][-len(completion) - 1:] == completion + [tokenizer.eos_token_id]
        assert encoded["prompt_cut"] > 0 and encoded["answer_cut"] == 0

    def test_a_cut_answer_loses_its_eos_and_the_cut_is_counted(self, tokenizer):
        example = {"prompt": "Hi", "completion": "I have started the refund process for you. " * 8}
        encoded = encode_prompt_completion(example, tokenizer, 40, chat_template=False)
        completion = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
        kept = labelled(encoded)
        assert len(encoded["input_ids"]) == 40 and kept == completion[:len(kept)]
        assert encoded["prompt_cut"] == 0 and encoded["answer_cut"] == len(completion) + 1 - len(kept)


class TestMessages:
    MESSAGES = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "It has shipped."},
        {"role": "user", "content": "I want a refund."},
        {"role": "assistant", "content": "Refund started."},
    ]

    def test_only_assistant_turns_carry_labels(self, tokenizer):
        encoded = encode_messages({"messages": self.MESSAGES}, tokenizer, 512)
        expected = []
        for answer in ("It has shipped.", "Refund started."):
            expected += tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert labelled(encoded) == expected
        # The rendered conversation is tokenized as one text: ids match tokenizing it whole.
        text = tokenizer.apply_chat_template(self.MESSAGES, tokenize=False)
        assert encoded["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]

    def test_user_and_system_text_is_masked(self, tokenizer):
        encoded = encode_messages({"messages": self.MESSAGES}, tokenizer, 512)
        text = tokenizer.decode([t for t, l in zip(encoded["input_ids"], encoded["labels"]) if l == IGNORE_INDEX])
        for turn in self.MESSAGES:
            if turn["role"] != "assistant":
                assert turn["content"] in text
        assert "It has shipped." not in text and "Refund started." not in text

    def test_no_assistant_turn_is_an_error(self, tokenizer):
        with pytest.raises(ValueError, match="no assistant turn"):
            encode_messages({"messages": [{"role": "user", "content": "hi"}]}, tokenizer, 512)

    def test_unknown_role_names_the_turn(self, tokenizer):
        messages = [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"},
                    {"role": "assistant", "content": "ok"}]
        with pytest.raises(ValueError, match="turn 1"):
            encode_messages({"messages": messages}, tokenizer, 512)

    def test_encode_example_dispatches_on_shape(self, tokenizer):
        chat = encode_example({"messages": self.MESSAGES}, tokenizer, 512)
        assert chat == encode_messages({"messages": self.MESSAGES}, tokenizer, 512)
        pair = encode_example(EXAMPLE, tokenizer, 512)
        assert pair == encode_prompt_completion(EXAMPLE, tokenizer, 512)


def write_jsonl(path, rows):
    """One row per line, with a blank line after the first so line numbers differ from row numbers."""
    lines = [json.dumps(row) for row in rows]
    path.write_text("\n".join(lines[:1] + [""] + lines[1:]) + "\n")
    return path


CHAT = [{"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": "It has shipped."}]


class TestMalformedRows:
    """Issue 12 items 2-3: every row-level error names file:LINE, never an AttributeError traceback."""

    @pytest.mark.parametrize("messages, error", [
        ("hi", "'messages' must be a list of turns, got a string"),
        ({"role": "user", "content": "hi"}, "'messages' must be a list of turns, got an object"),
        ([], "'messages' must be a list of turns, got an empty list"),
        (["hi", "there"], "turn 0: expected an object with 'role' and 'content', got a string"),
        ([{"role": "user", "content": "hi"}, None], "turn 1: expected an object with 'role' and 'content', got null"),
        ([{"role": "user", "content": ["hi"]}, CHAT[1]], "turn 0: 'content' must be a string, got a list"),
        ([CHAT[0], {"role": "robot", "content": "x"}],
         "turn 1: unknown role 'robot' (expected one of user, assistant, system, tool)"),
        ([CHAT[0]], "conversation has no assistant turn: nothing to learn from"),
    ])
    def test_bad_messages_name_file_and_line(self, tmp_path, tokenizer, messages, error):
        path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}, {"messages": CHAT}, {"messages": messages}])
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        with pytest.raises(InstructuneError) as caught:
            tokenize_examples(rows, tokenizer, 128, source=path)
        assert str(caught.value) == f"{path}:4: {error}"

    def test_messages_null_and_no_prompt(self, tmp_path, tokenizer):
        path = write_jsonl(tmp_path / "mixed.jsonl", [EXAMPLE, {"messages": None, "prompt": "only a prompt"}])
        with pytest.raises(InstructuneError, match=rf"^{path}:3: expected 'prompt' and 'completion' strings, or 'messages'$"):
            tokenize_examples([EXAMPLE, {"messages": None, "prompt": "only a prompt"}], tokenizer, 128, source=path)

    def test_a_file_mixing_both_shapes_encodes_each_row_by_its_shape(self, tokenizer):
        # datasets gives pair rows of such a file `messages: None`, and chat rows `prompt: None`.
        rows = [{**EXAMPLE, "messages": None}, {"prompt": None, "completion": None, "messages": CHAT}]
        encoded, _ = tokenize_examples(rows, tokenizer, 128)
        assert encoded == [encode_prompt_completion(EXAMPLE, tokenizer, 128), encode_messages({"messages": CHAT}, tokenizer, 128)]

    def test_examples_not_read_from_a_file_are_named_by_index(self, tokenizer):
        with pytest.raises(InstructuneError, match=r"^example 1: 'messages' must be a list of turns, got a string$"):
            tokenize_examples([EXAMPLE, {"messages": "hi"}], tokenizer, 128)


class TestTokenizeReport:
    """Issue 12 items 4-5: empty answers are skipped, cuts are counted apart, and the rows are named."""

    def test_empty_answers_are_skipped_and_named(self, tmp_path, tokenizer):
        rows = [EXAMPLE, {"prompt": "Summarize.", "completion": "  \n"},
                {"messages": [CHAT[0], {"role": "assistant", "content": ""}, *CHAT]}, {"prompt": "Hi", "completion": ""}]
        path = write_jsonl(tmp_path / "data.jsonl", rows)
        encoded, report = tokenize_examples(rows, tokenizer, 128, source=path)
        assert len(encoded) == 1 and report.empty == [1, 2, 3]
        assert report.to_dict()["empty"] == {"count": 3, "first": [f"{path}:3", f"{path}:4", f"{path}:5"]}

    def test_prompt_cut_answer_cut_and_dropped_are_counted_apart(self, tmp_path, tokenizer):
        # The chat-formatted prompt of "Hi" is 40 tokens: a quarter of max_length 160, the prompt's floor.
        long = "Summarize the dialogue. #Person1#: Hello, how are you? " * 12
        rows = [
            EXAMPLE,                                              # fits
            {"prompt": long, "completion": "Fine."},              # prompt cut
            {"prompt": "Hi", "completion": long},                 # answer cut
            {"messages": [{"role": "user", "content": long}, CHAT[1]]},  # cut before its answer: dropped
            {"messages": [CHAT[0], {"role": "assistant", "content": long}]},  # answer cut
        ]
        path = write_jsonl(tmp_path / "data.jsonl", rows)
        encoded, report = tokenize_examples(rows, tokenizer, 160, source=path)
        # The dropped conversation lost the end of its user turn and the whole answer: both cuts.
        assert (report.prompt_cut, report.answer_cut, report.dropped) == ([1, 3], [2, 3, 4], [3])
        assert len(encoded) == 4 and all(len(item["input_ids"]) <= 160 for item in encoded)
        summary = report.to_dict()
        assert summary["dropped"] == {"count": 1, "first": [f"{path}:5"]}
        assert summary["answer_cut"]["first"] == [f"{path}:4", f"{path}:5", f"{path}:6"]
        # Lengths are before cutting: the ones over max_length are exactly the cut examples.
        assert [i for i, n in enumerate(report.lengths) if n > 160] == [1, 2, 3, 4]
        assert describe_report(summary) == (
            f"5 examples, max_length 160: prompt cut 2 ({path}:3, {path}:5), answer cut 3 ({path}:4, {path}:5, {path}:6), "
            f"dropped (no label left) 1 ({path}:5)")

    def test_names_the_first_rows_and_counts_them_all(self, tokenizer):
        rows = [{"prompt": "Hi " * 60, "completion": "ok"}] * 7
        _, report = tokenize_examples(rows, tokenizer, 32)
        assert report.to_dict()["prompt_cut"] == {"count": 7, "first": [f"example {i}" for i in range(5)]}
        assert "prompt cut 7 (example 0, example 1, example 2, example 3, example 4, ...)" in describe_report(report.to_dict())
