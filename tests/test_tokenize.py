"""Tokenization for training: labels on the response only, an exact prompt/response boundary, pad == eos."""

import pytest

from instructune.tokenize import (
    IGNORE_INDEX,
    encode_example,
    encode_messages,
    encode_prompt_completion,
    format_prompt,
    prompt_token_ids,
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
