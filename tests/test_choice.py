"""Multiple-choice scoring: agrees with scoring each option in a plain full forward, acc and acc_norm as the harness."""

import math

import pytest
import torch

import tiny
from instructune.errors import InstructuneError
from instructune.evaluate.choice import _encode_decoder_only, _encode_encoder_decoder, score_choices

EXAMPLES = [
    {"prompt": "Where is my order?", "options": ["It shipped.", "I want a refund for my purchase now", "no"], "label": 0},
    {"prompt": "Question: which option is correct? " * 3, "options": ["yes", "the second one"], "label": 1},
    {"prompt": "Hi", "options": ["Hello, how are you?", "fine"], "label": 1},
]


def _naive_decoder_only(model, tokenizer, example):
    """Sum of log p(option tokens | prompt), one unpadded forward per option, no cache."""
    context, _, continuations = _encode_decoder_only(tokenizer, example, None)
    sums = []
    for ids in continuations:
        logprobs = model(torch.tensor([context + ids])).logits[0].log_softmax(-1)
        sums.append(sum(logprobs[len(context) - 1 + j, token].item() for j, token in enumerate(ids)))
    return sums


def _naive_encoder_decoder(model, tokenizer, example):
    context, _, continuations = _encode_encoder_decoder(tokenizer, example)
    sums = []
    for ids in continuations:
        decoder_ids = torch.tensor([[model.config.decoder_start_token_id] + ids[:-1]])
        logprobs = model(input_ids=torch.tensor([context]), decoder_input_ids=decoder_ids).logits[0].log_softmax(-1)
        sums.append(sum(logprobs[j, token].item() for j, token in enumerate(ids)))
    return sums


def _fixed_preference(model, tokenizer, text):
    """Make the model's next-token distribution the same everywhere, favouring the tokens of `text`."""
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(torch.zeros_like(head.weight))
    bias = torch.zeros(head.weight.shape[0])
    bias[tokenizer(text, add_special_tokens=False)["input_ids"]] = 10.0
    head.register_forward_hook(lambda module, inputs, output: output + bias)
    return model.eval()


class TestScoreChoices:
    def test_shared_prompt_cache_matches_full_forward(self, llama, tokenizer):
        llama.eval()
        _, rows = score_choices(llama, tokenizer, EXAMPLES, batch_size=2, progress=False)
        with torch.no_grad():
            for example, row in zip(EXAMPLES, rows):
                assert row["logprobs"] == pytest.approx(_naive_decoder_only(llama, tokenizer, example), abs=1e-4)

    def test_model_that_prefers_the_right_option_scores_one(self, llama, tokenizer):
        model = _fixed_preference(llama, tokenizer, "yes")
        examples = [
            {"prompt": "Is the sky blue?", "options": ["yes", "no"], "label": 0},
            {"prompt": "Is water wet?", "options": ["no", "yes"], "label": 1},
            {"prompt": "Pick one", "options": ["maybe", "the first one", "yes"], "label": 2},
        ]
        metrics, rows = score_choices(model, tokenizer, examples, batch_size=2, progress=False)
        assert metrics == {"acc": 1.0, "acc_norm": 1.0}
        assert [row["pred"] for row in rows] == [0, 1, 2]

    def test_acc_and_acc_norm_differ_when_lengths_differ(self, llama, tokenizer):
        # A uniform model gives every token log(1/V): the sum favours the option with fewest tokens
        # (acc), the per-character average the one with the most characters per token (acc_norm).
        model = _fixed_preference(llama, tokenizer, "")
        long_option = "The quick brown fox jumps over the lazy dog."
        example = {"prompt": "Finish the sentence", "options": ["x", long_option], "label": 1}
        metrics, rows = score_choices(model, tokenizer, [example], progress=False)
        n_tokens = [len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in example["options"]]
        assert rows[0]["logprobs"] == pytest.approx([-n * math.log(len(tokenizer)) for n in n_tokens], rel=1e-5)
        assert metrics == {"acc": 0.0, "acc_norm": 1.0}
        assert (rows[0]["pred"], rows[0]["pred_norm"]) == (0, 1)

    def test_results_in_input_order_with_mixed_option_counts(self, llama, tokenizer):
        _, rows = score_choices(llama, tokenizer, EXAMPLES, batch_size=3, progress=False)
        assert [len(row["logprobs"]) for row in rows] == [3, 2, 2]
        assert [row["label"] for row in rows] == [0, 1, 1]

    @pytest.mark.parametrize("bad, message", [
        ({"prompt": "p", "options": ["a", "b"], "label": 2}, "label"),
        ({"prompt": "p", "options": [], "label": 0}, "options"),
        ({"prompt": "p", "options": ["a", " "], "label": 0}, "options"),
    ])
    def test_bad_examples_raise_with_index(self, llama, tokenizer, bad, message):
        with pytest.raises(InstructuneError, match=f"example 1: .*{message}"):
            score_choices(llama, tokenizer, [EXAMPLES[0], bad], progress=False)


class TestScoreChoicesEncoderDecoder:
    def test_decoder_loglikelihood_matches_full_forward(self, tokenizer):
        model = tiny.make_t5(tokenizer).eval()
        _, rows = score_choices(model, tokenizer, EXAMPLES, batch_size=2, progress=False)
        with torch.no_grad():
            for example, row in zip(EXAMPLES, rows):
                assert row["logprobs"] == pytest.approx(_naive_encoder_decoder(model, tokenizer, example), abs=1e-4)

    def test_t5_that_prefers_the_right_option_scores_one(self, tokenizer):
        model = _fixed_preference(tiny.make_t5(tokenizer), tokenizer, "yes")
        examples = [{"prompt": "Is the sky blue?", "options": ["yes", "no"], "label": 0},
                    {"prompt": "Is water wet?", "options": ["no", "yes"], "label": 1}]
        metrics, _ = score_choices(model, tokenizer, examples, progress=False)
        assert metrics == {"acc": 1.0, "acc_norm": 1.0}


class TestScoreChoicesWithAdapter:
    def test_lora_wrapped_model_scores_like_its_base_before_training(self, llama, tokenizer):
        from peft import LoraConfig, get_peft_model

        llama.eval()
        base_metrics, base_rows = score_choices(llama, tokenizer, EXAMPLES, progress=False)
        # A fresh LoRA adapter's B matrix is zero, so the wrapped model computes the same function.
        wrapped = get_peft_model(llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
        metrics, rows = score_choices(wrapped, tokenizer, EXAMPLES, progress=False)
        assert metrics == base_metrics
        for row, base_row in zip(rows, base_rows):
            assert row["logprobs"] == pytest.approx(base_row["logprobs"], abs=1e-5)
