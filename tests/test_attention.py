"""Per-example attention over packed rows, against each example run alone and against transformers' SDPA."""

import copy

import pytest
import torch

import tiny
from instructune.train.attention import NAME, segments, use_packed_attention, uses_packed_attention
from instructune.config import load_config
from instructune.train.loss import causal_lm_loss_sum
from instructune.train.pack import collate, pack_examples
from instructune.train.runlog import MetricsLog
from instructune.data.tokenize import encode_prompt_completion

EXAMPLES = [
    {"prompt": "Where is my order?", "completion": "It has shipped."},
    {"prompt": "How do I reset my password? " * 3, "completion": "Click the link in the email."},
    {"prompt": "Cancel my subscription please.", "completion": "Done, it ends this month."},
    {"prompt": "What are your opening hours? " * 2, "completion": "Nine to five, Monday to Friday."},
]


@pytest.fixture()
def packed(tokenizer):
    encoded = [encode_prompt_completion(e, tokenizer, 128) for e in EXAMPLES]
    rows = pack_examples(encoded, 160)
    assert len(rows) == 2 and any(len(segments(torch.tensor([r["position_ids"]]))[0]) > 1 for r in rows)
    return encoded, collate(rows, tokenizer.pad_token_id)


def test_segments_split_where_positions_restart():
    assert segments(torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])) == [[(0, 3), (3, 5), (5, 6)], [(0, 6)]]


def test_packed_logits_equal_each_example_alone(llama, packed):
    """A packed row's logits at each example's positions are that example's logits run on its own."""
    encoded, batch = packed
    model = copy.deepcopy(llama)
    assert use_packed_attention(model) and model.config._attn_implementation == NAME
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       packed_segments=segments(batch["position_ids"])).logits
        alone = {tuple(e["input_ids"]): llama(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in encoded}
    checked = 0
    for b, bounds in enumerate(segments(batch["position_ids"])):
        for s, e in bounds:
            ids = tuple(batch["input_ids"][b, s:e].tolist())
            if ids in alone:
                torch.testing.assert_close(logits[b, s:e], alone[ids], atol=1e-5, rtol=1e-4)
                checked += 1
    assert checked == len(encoded)


def test_loss_and_gradients_equal_sdpa_block_mask(llama, packed):
    """The training loss and every gradient equal transformers' SDPA with its block-diagonal mask."""
    _, batch = packed
    model = copy.deepcopy(llama)
    use_packed_attention(model)
    assert uses_packed_attention(model) and not uses_packed_attention(llama)
    ours, _ = causal_lm_loss_sum(model, batch)
    ours.backward()
    reference, _ = causal_lm_loss_sum(llama, batch)
    reference.backward()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    for (name, got), expected in zip(model.named_parameters(), llama.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_generation_and_padded_batches_fall_back_to_sdpa(llama, tokenizer):
    """Without packed_segments (generation, left-padded batches) the switched model is the SDPA model."""
    model = copy.deepcopy(llama)
    use_packed_attention(model)
    tokenizer.padding_side = "left"
    inputs = tokenizer(["Where is my order?", "How do I reset my password? Please help"], return_tensors="pt",
                       padding=True)
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    torch.testing.assert_close(model.generate(**inputs, **settings), llama.generate(**inputs, **settings))


def test_only_sdpa_models_are_switched(llama):
    eager = copy.deepcopy(llama)
    eager.set_attn_implementation("eager")
    assert not use_packed_attention(eager) and eager.config._attn_implementation == "eager"


def test_trainer_with_packed_attention_follows_the_same_loss_curve(tmp_path, tokenizer):
    """`train.packed_attention=true` switches the model and trains the same curve as the default."""

    def run(name, *extra):
        config = load_config(None, [f"output_dir={tmp_path}", f"run_name={name}", "train.precision=fp32",
                                    "train.warmup_ratio=0", "data.max_length=160", "train.batch_size=2",
                                    "train.max_steps=3", "train.num_threads=1", *extra])
        trainer = tiny.run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer,
                                   train_examples=EXAMPLES * 3)
        return trainer, [r["loss"] for r in MetricsLog.read(trainer.run_dir / "metrics.jsonl") if "loss" in r]

    (plain, plain_curve), (blocks, blocks_curve) = run("plain"), run("blocks", "train.packed_attention=true")
    assert not uses_packed_attention(plain.model) and uses_packed_attention(blocks.model)
    assert len(plain_curve) == 3
    assert blocks_curve == pytest.approx(plain_curve, abs=1e-5)
