"""Multiple-choice scoring: agrees with a plain full forward per option, and in "lm-eval" mode with lm-evaluation-harness's
own per-item results (tests/fixtures/lmeval_choice.json, made by bench/choice.py)."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

import tiny
from instructune.data.render import render_records
from instructune.data.sources import load_records
from instructune.data.templates import load_task
from instructune.errors import InstructuneError
from instructune.evaluate.choice import _encode_decoder_only, _encode_encoder_decoder, encode_lm_eval, score_choices
from instructune.models import load_tokenizer, resolve_model_path

EXAMPLES = [
    {"prompt": "Where is my order?", "options": ["It shipped.", "I want a refund for my purchase now", "no"], "label": 0},
    {"prompt": "Question: which option is correct? " * 3, "options": ["yes", "the second one"], "label": 1},
    {"prompt": "Hi", "options": ["Hello, how are you?", "fine"], "label": 1},
]


def _naive_decoder_only(model, tokenizer, example):
    """Sum of log p(option tokens | prompt), one unpadded forward per option, no cache."""
    contexts, _, continuations = _encode_decoder_only(tokenizer, example, None)
    sums = []
    for context, ids in zip(contexts, continuations):
        logprobs = model(torch.tensor([context + ids])).logits[0].log_softmax(-1)
        sums.append(sum(logprobs[len(context) - 1 + j, token].item() for j, token in enumerate(ids)))
    return sums


def _naive_encoder_decoder(model, tokenizer, example):
    contexts, _, continuations = _encode_encoder_decoder(tokenizer, example)
    sums = []
    for context, ids in zip(contexts, continuations):
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


class TestEncodeLmEval:
    """lm-evaluation-harness 0.4's split, written down as examples (model.py `_encode_pair`)."""

    def test_continuation_is_space_option_split_after_the_contexts_own_tokens(self, tokenizer):
        context, option = "Question: which option is correct?\nAnswer:", "the second one"
        context_ids, continuation_ids = encode_lm_eval(tokenizer, context, option)
        whole = tokenizer(context + " " + option)["input_ids"]
        assert context_ids == tokenizer(context)["input_ids"]
        assert continuation_ids == whole[len(context_ids):]

    def test_trailing_whitespace_of_the_context_moves_into_the_continuation(self, tokenizer):
        # "Answer: " + " yes" is scored as "Answer:" + "  yes": same text, the space joins the option.
        assert encode_lm_eval(tokenizer, "Answer: ", "yes") == (
            tokenizer("Answer:")["input_ids"], tokenizer("Answer:  yes")["input_ids"][len(tokenizer("Answer:")["input_ids"]):]
        )

    def test_option_is_not_stripped(self, tokenizer):
        _, with_space = encode_lm_eval(tokenizer, "Pick", "yes ")
        _, without = encode_lm_eval(tokenizer, "Pick", "yes")
        assert tokenizer.decode(with_space) == " yes " and tokenizer.decode(without) == " yes"

    def test_empty_context_is_the_end_of_text_token(self, tokenizer):
        context_ids, continuation_ids = encode_lm_eval(tokenizer, "", "hello")
        assert context_ids == [tokenizer.bos_token_id]
        assert continuation_ids == tokenizer(" hello", add_special_tokens=False)["input_ids"]


class TestLmEvalMode:
    def test_cached_prompt_matches_a_full_forward_of_the_harness_tokens(self, llama, tokenizer):
        llama.eval()
        _, rows = score_choices(llama, tokenizer, EXAMPLES, batch_size=2, mode="lm-eval", progress=False)
        with torch.no_grad():
            for example, row in zip(EXAMPLES, rows):
                expected = []
                for option in example["options"]:
                    context, continuation = encode_lm_eval(tokenizer, example["prompt"], option)
                    logprobs = llama(torch.tensor([context + continuation])).logits[0].log_softmax(-1)
                    expected.append(sum(logprobs[len(context) - 1 + j, t].item() for j, t in enumerate(continuation)))
                assert row["logprobs"] == pytest.approx(expected, abs=1e-4)

    def test_acc_norm_divides_by_the_options_characters_without_the_delimiter(self, llama, tokenizer):
        # Uniform model: every token costs log V, so acc_norm compares tokens per character. "the cat"
        # is 5 tiny-tokenizer tokens over 7 characters (0.71) against "a", 1 over 1: it wins. Counting
        # the delimiter (5/8 = 0.62 against 1/2) would pick "a" instead.
        model = _fixed_preference(llama, tokenizer, "")
        example = {"prompt": "Finish", "options": ["a", "the cat"], "label": 1}
        assert [len(encode_lm_eval(tokenizer, "Finish", o)[1]) for o in example["options"]] == [1, 5]
        metrics, rows = score_choices(model, tokenizer, [example], mode="lm-eval", progress=False)
        assert (rows[0]["pred"], rows[0]["pred_norm"]) == (0, 1)
        assert metrics == {"acc": 0.0, "acc_norm": 1.0}

    def test_chat_template_is_refused(self, llama, tokenizer):
        with pytest.raises(InstructuneError, match="lm-eval.*chat_template"):
            score_choices(llama, tokenizer, EXAMPLES, mode="lm-eval", chat_template=True, progress=False)

    def test_unknown_mode_lists_the_modes(self, llama, tokenizer):
        with pytest.raises(InstructuneError, match="instruct, lm-eval"):
            score_choices(llama, tokenizer, EXAMPLES, mode="harness", progress=False)


FIXTURE = Path(__file__).parent / "fixtures" / "lmeval_choice.json"


@pytest.fixture(scope="module")
def harness():
    """lm-evaluation-harness 0.4.13's own results on the first 500 PIQA and HellaSwag validation items
    (per-item log-likelihoods, acc, acc_norm, token-split hashes), made by bench/choice.py."""
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def default_model_dir():
    try:
        return resolve_model_path(None)
    except InstructuneError as error:
        pytest.skip(f"default model unavailable: {error}")


def _split_hash(context_ids: list[int], continuation_ids: list[int]) -> str:
    """The fixture's fingerprint of one token split (bench/choice.py writes it the same way)."""
    return hashlib.sha1(json.dumps([context_ids, continuation_ids]).encode()).hexdigest()[:16]


def _harness_examples(spec: dict, shared_data: Path, limit: int | None = None) -> list[dict]:
    records = load_records(shared_data / spec["data"]).to_list()[: limit or spec["limit"]]
    return render_records(load_task(spec["instructune_task"]), records, template=0)


class TestLmEvalParity:
    @pytest.mark.parametrize("name", ["piqa", "hellaswag"])
    def test_prompts_and_token_splits_equal_the_harness_on_every_item(self, harness, name, shared_data,
                                                                       default_model_dir):
        tokenizer = load_tokenizer(default_model_dir)
        spec = harness["tasks"][name]
        examples = _harness_examples(spec, shared_data)
        assert [e["label"] for e in examples] == [item["label"] for item in spec["items"]]
        for example, item in zip(examples, spec["items"]):
            ours = [_split_hash(*encode_lm_eval(tokenizer, example["prompt"], o)) for o in example["options"]]
            assert ours == item["splits"], f"{name} item {item['doc_id']}: {example['prompt']!r}"

    @pytest.mark.parametrize("name", ["piqa", "hellaswag"])
    def test_harness_loglikelihoods_give_its_acc_and_acc_norm_under_our_rules(self, harness, name, shared_data):
        # lm-eval's own per-item numbers, argmaxed by score_choices' rules (first maximum wins,
        # acc_norm per character of the option), give lm-eval's reported acc and acc_norm exactly.
        spec = harness["tasks"][name]
        examples = _harness_examples(spec, shared_data)
        correct = correct_norm = 0
        for example, item in zip(examples, spec["items"]):
            scores, lengths = item["logprobs"], [len(o) for o in example["options"]]
            correct += max(range(len(scores)), key=lambda k: scores[k]) == item["label"]
            correct_norm += max(range(len(scores)), key=lambda k: scores[k] / lengths[k]) == item["label"]
        assert (correct / len(examples), correct_norm / len(examples)) == (spec["acc"], spec["acc_norm"])

    def test_default_model_scores_the_first_items_as_the_harness(self, harness, shared_data, default_model_dir):
        from instructune.models import load_model

        model, tokenizer = load_model(default_model_dir)
        for name in ("piqa", "hellaswag"):
            spec = harness["tasks"][name]
            # 24 items at small rows: several items per packed row and several rows per forward pass.
            examples = _harness_examples(spec, shared_data, limit=24)
            _, rows = score_choices(model, tokenizer, examples, mode="lm-eval", progress=False,
                                    row_tokens=160, batch_tokens=640)
            for row, item in zip(rows, spec["items"]):
                assert row["logprobs"] == pytest.approx(item["logprobs"], rel=2e-5, abs=1e-3)
                assert row["pred"] == max(range(len(item["logprobs"])), key=lambda k: item["logprobs"][k])
