"""Packing: best-fit rows that never split an example, and a packed loss equal to the unpacked one."""

import random

import pytest
import torch

from instructune.train.loss import causal_lm_loss_sum
from instructune.train.pack import collate, pack_best_fit, pack_examples
from instructune.data.tokenize import IGNORE_INDEX, encode_prompt_completion

PROMPTS = ["Where is my order?", "How do I reset my password?", "I want a refund for my purchase.",
           "Summarize the dialogue.", "Which option is correct?", "Hello, how are you?"]
ANSWERS = ["It has shipped.", "Click the link in the email.", "I have started the refund process for you.",
           "Fine, thank you.", "The first one.", "I am fine."]


ROW_LENGTH = 192  # room for 2-4 chat-formatted examples per row


def encoded_examples(tokenizer, max_length=96):
    return [encode_prompt_completion({"prompt": p * (1 + i % 2), "completion": a}, tokenizer, max_length)
            for i, (p, a) in enumerate(zip(PROMPTS, ANSWERS))]


class TestPackBestFit:
    def test_docstring_example(self):
        assert pack_best_fit([5, 3, 4, 2], max_length=8) == [[0, 1], [2, 3]]

    @pytest.mark.parametrize("seed", range(5))
    def test_never_splits_and_rows_fit(self, seed):
        rng = random.Random(seed)
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 60))]
        rows = pack_best_fit(lengths, max_length=64)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # each example once, whole
        assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
        # Best fit never leaves two rows that could have been one.
        totals = sorted(sum(lengths[i] for i in row) for row in rows)
        assert len(totals) < 2 or totals[0] + totals[1] > 64

    def test_too_long_example_is_an_error(self):
        with pytest.raises(ValueError, match="example 1 has 9 tokens"):
            pack_best_fit([3, 9], max_length=8)


class TestPackExamples:
    def test_rows_keep_examples_whole_with_restarting_positions(self, tokenizer):
        examples = encoded_examples(tokenizer)
        packed = pack_examples(examples, ROW_LENGTH)
        assert len(packed) < len(examples)
        assert all(len(row["input_ids"]) <= ROW_LENGTH for row in packed)
        segments = []
        for row in packed:
            starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
            for a, b in zip(starts, starts[1:]):
                segments.append(row["input_ids"][a:b])
                assert row["labels"][a] == IGNORE_INDEX  # would be predicted from the previous example
        assert sorted(segments) == sorted(e["input_ids"] for e in examples)

    def test_packed_loss_equals_unpacked_loss(self, tokenizer, llama):
        examples = encoded_examples(tokenizer)
        with torch.no_grad():
            packed_sum, packed_count = causal_lm_loss_sum(llama, collate(pack_examples(examples, ROW_LENGTH), tokenizer.pad_token_id))
            plain_sum, plain_count = causal_lm_loss_sum(llama, collate(examples, tokenizer.pad_token_id))
        assert packed_count == plain_count
        assert float(packed_sum / packed_count) == pytest.approx(float(plain_sum / plain_count), abs=1e-4)

    def test_no_cross_talk_between_examples_in_a_row(self, tokenizer, llama):
        b, a = encoded_examples(tokenizer)[:2]  # a is the longer one, so best-fit puts it first
        changed_a = dict(a, input_ids=[(t * 7 + 3) % len(tokenizer) for t in a["input_ids"]])

        def row_of(first):
            rows = pack_examples([first, b], ROW_LENGTH)
            assert len(rows) == 1 and rows[0]["input_ids"][-len(b["input_ids"]):] == b["input_ids"]
            return collate(rows, tokenizer.pad_token_id)

        def loss_of_b(first):
            batch = row_of(first)
            start = len(first["input_ids"])
            batch["labels"][:, :start] = IGNORE_INDEX  # score example B only
            with torch.no_grad():
                loss_sum, _ = causal_lm_loss_sum(llama, batch)
            return float(loss_sum)

        def logits_of_b(first):
            batch = row_of(first)
            # No cache: transformers only detects packed rows from position_ids when it builds no cache.
            with torch.no_grad():
                logits = llama(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
            return logits[0, len(first["input_ids"]): len(first["input_ids"]) + len(b["input_ids"])]

        assert loss_of_b(a) == pytest.approx(loss_of_b(changed_a), abs=1e-5)
        torch.testing.assert_close(logits_of_b(a), logits_of_b(changed_a), atol=1e-5, rtol=0)
        alone = collate([b], tokenizer.pad_token_id)
        with torch.no_grad():
            b_alone = llama(input_ids=alone["input_ids"], use_cache=False).logits[0, : len(b["input_ids"])]
        torch.testing.assert_close(logits_of_b(a), b_alone, atol=1e-4, rtol=0)


class TestCollate:
    def test_padding_is_unlabelled_and_width_rounded(self, tokenizer):
        rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [-100]}]
        batch = collate(rows, tokenizer.pad_token_id, pad_to_multiple_of=8)
        assert batch["input_ids"].shape == (2, 8)
        assert batch["labels"][1].tolist() == [-100] * 8
        assert batch["input_ids"][1, 1:].tolist() == [tokenizer.pad_token_id] * 7
        assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]

    def test_width_rounds_up_but_never_past_max_width(self, tokenizer):
        def width(length: int, max_width: int) -> int:
            row = {"input_ids": [5] * length, "labels": [-100] * length}
            return collate([row], tokenizer.pad_token_id, 64, max_width=max_width)["input_ids"].shape[1]

        assert [width(n, 100) for n in (1, 64, 65, 99, 100)] == [64, 64, 100, 100, 100]
        assert width(130, 100) == 130  # a row is never cut

    def test_trainer_pads_packed_batches_to_few_widths(self, tokenizer, tmp_path):
        """Packed micro-batches come in multiples of PACKED_WIDTH_MULTIPLE or max_length, never past it
        (each new width costs oneDNN kernels); unpacked ones keep the multiple of 8."""
        from instructune.config import load_config
        from instructune.train.pack import PACKED_WIDTH_MULTIPLE
        from instructune.train.trainer import Trainer
        from tiny import make_llama

        rng = random.Random(0)
        examples = [{"prompt": " ".join(rng.choice(PROMPTS) for _ in range(rng.randint(1, 6))),
                     "completion": rng.choice(ANSWERS)} for _ in range(40)]
        for packing, max_length in ((True, 200), (False, 200)):
            config = load_config(None, [f"output_dir={tmp_path}", f"run_name=p{packing}", "train.precision=fp32",
                                        f"data.packing={packing}", f"data.max_length={max_length}",
                                        "train.batch_size=2", "train.max_steps=4"])
            trainer = Trainer(config, model=make_llama(tokenizer), tokenizer=tokenizer, train_examples=examples,
                              progress=False)
            trainer.setup()
            widths = {b["input_ids"].shape[1] for step in range(4) for b in trainer.step_batches(step)}
            if packing:
                assert widths <= {w for w in range(PACKED_WIDTH_MULTIPLE, max_length, PACKED_WIDTH_MULTIPLE)} | {max_length}
            else:
                assert all(w % 8 == 0 for w in widths) and any(w % PACKED_WIDTH_MULTIPLE for w in widths)
