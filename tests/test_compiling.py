"""train.compile: each decoder block compiled once, against the eager run's loss curve and weights."""

import copy

import pytest
import torch
from torch._dynamo.utils import counters

import tiny
from instructune.train.compiling import block_classes, compile_blocks, uncompiled
from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.train.runlog import MetricsLog
from instructune.train.trainer import Trainer

EXAMPLES = [
    {"prompt": "Where is my order?", "completion": "It has shipped."},
    {"prompt": "How do I reset my password? " * 3, "completion": "Click the link in the email."},
    {"prompt": "Cancel my subscription please.", "completion": "Done, it ends this month."},
    {"prompt": "What are your opening hours? " * 2, "completion": "Nine to five, Monday to Friday."},
]


def _config(tmp_path, name, *extra):
    return load_config(None, [f"output_dir={tmp_path}", f"run_name={name}", "train.precision=fp32",
                              "train.warmup_ratio=0", "data.max_length=160", "train.batch_size=2",
                              "train.max_steps=3", "train.num_threads=1", "lora.enabled=false", *extra])


def test_compiled_run_follows_the_eager_loss_curve_and_weights(tmp_path, tokenizer):
    """Same data, same seed: the compiled blocks (CPU: fused eager attention) train the same model."""

    def run(name, *extra):
        trainer = tiny.run_trainer(_config(tmp_path, name, *extra), model=tiny.make_llama(tokenizer),
                                   tokenizer=tokenizer, train_examples=EXAMPLES * 3)
        curve = [r["loss"] for r in MetricsLog.read(trainer.run_dir / "metrics.jsonl") if "loss" in r]
        return trainer, curve

    graphs = counters["stats"]["unique_graphs"]
    (plain, plain_curve), (fast, fast_curve) = run("eager"), run("compiled", "train.compile=true")
    assert counters["stats"]["unique_graphs"] > graphs  # compiled for real, not dynamo's eager fallback
    layers = fast.model.model.layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert fast.model.config._attn_implementation == "sdpa"  # fp32 on CPU: torch's flash kernel stays
    assert len(plain_curve) == 3
    assert fast_curve == pytest.approx(plain_curve, abs=1e-4)
    for (name, got), expected in zip(fast.model.named_parameters(), plain.model.parameters()):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=name)
    # Generation sees the model as loaded: blocks eager; compiled again afterwards.
    with uncompiled(fast.model) as model:
        assert model.config._attn_implementation == "sdpa"
        assert all(layer._compiled_call_impl is None for layer in layers)
    assert all(layer._compiled_call_impl is not None for layer in layers)


@pytest.mark.parametrize("precision, inside", [("fp32", "sdpa"), ("bf16", "eager"), ("bf16-true", "eager")])
def test_attention_inside_compiled_blocks_follows_the_compute_precision(tmp_path, tokenizer, precision, inside):
    """On CPU, bf16 blocks run attention as fused matmul-softmax (faster than the bf16 flash kernel on AMX);
    fp32 blocks keep torch's flash kernel (as fast there, no attention probabilities kept). Generation
    always sees the model's own SDPA."""
    config = _config(tmp_path, precision, "train.compile=true", f"train.precision={precision}")
    trainer = Trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES,
                      progress=False)
    trainer.setup()
    assert trainer.model.config._attn_implementation == inside
    with uncompiled(trainer.model) as model:
        assert model.config._attn_implementation == "sdpa"
    assert trainer.model.config._attn_implementation == inside


def test_blocks_are_found_through_a_peft_wrapper(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny.make_llama(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert block_classes(model) == {"LlamaDecoderLayer"}
    assert compile_blocks(copy.deepcopy(model)) == model.config.num_hidden_layers


def test_a_compiled_lora_run_draws_hashed_masks_and_an_eager_one_the_generators(tmp_path, tokenizer):
    from instructune.train.adapters import DropoutLinear

    for compiled in (True, False):
        config = _config(tmp_path, f"lora{compiled}", "lora.enabled=true", "lora.dropout=0.1",
                         f"train.compile={compiled}")
        trainer = Trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES,
                          progress=False)
        trainer.setup()
        layers = [m for m in trainer.model.modules() if isinstance(m, DropoutLinear)]
        assert layers and {layer.fused for layer in layers} == {compiled}


def test_compile_with_packed_attention_is_one_clear_error(tmp_path, tokenizer):
    config = _config(tmp_path, "both", "train.compile=true", "train.packed_attention=true")
    trainer = Trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES,
                      progress=False)
    with pytest.raises(InstructuneError, match="train.compile.*packed_attention"):
        trainer.setup()


@pytest.mark.parametrize("hashed", [False, True], ids=["generator-masks", "hashed-masks"])
def test_lora_fast_dropout_compiles_without_breaks_and_draws_the_eager_masks(tokenizer, hashed):
    """The masks come from the same seeded generator, in the same order, inside the compiled blocks:
    a compiled LoRA forward and backward equal the eager ones; no dropout splits a block's graph. So do
    the hashed masks the trainer switches compiled blocks to (`fuse_dropout_masks`). Each block compiles
    in one pass: no analysis restarted and its result thrown away."""
    from peft import LoraConfig, get_peft_model

    from instructune.train.adapters import fuse_dropout_masks, use_fast_dropout

    torch.manual_seed(0)
    base = get_peft_model(tiny.make_llama(tokenizer), LoraConfig(r=4, lora_dropout=0.3, target_modules="all-linear"))
    with torch.no_grad():  # B starts at zero, which would hide the masks
        for name, parameter in base.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    assert use_fast_dropout(base) > 0
    if hashed:
        assert fuse_dropout_masks(base) > 0
    ids = torch.randint(3, tokenizer.vocab_size, (2, 24))

    def loss_and_grads(model):
        model.train()
        torch.manual_seed(7)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    eager_loss, eager_grads = loss_and_grads(copy.deepcopy(base))
    compiled = copy.deepcopy(base)
    compile_blocks(compiled)
    breaks = sum(counters["graph_break"].values())
    thrown = counters["aot_autograd"]["total"] - counters["aot_autograd"]["ok"]
    compiled_loss, compiled_grads = loss_and_grads(compiled)
    assert sum(counters["graph_break"].values()) == breaks
    # No compilation restarted and thrown away (module floats traced as symbols did: seconds of every run).
    assert counters["aot_autograd"]["total"] - counters["aot_autograd"]["ok"] == thrown
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)
    # A different seed draws other masks (the dropout is live, not an identity).
    torch.manual_seed(8)
    assert not torch.allclose(compiled(input_ids=ids, labels=ids).loss, compiled_loss)


def test_memory_budget_keeps_fewer_activations_and_the_same_gradients(tokenizer):
    """train.compile_memory_budget: a lower budget makes the compiled backward keep fewer bytes (it
    recomputes the rest) and changes nothing in the gradients."""
    torch.manual_seed(0)
    base = tiny.make_llama(tokenizer)
    ids = torch.randint(3, tokenizer.vocab_size, (2, 32))

    def kept_and_grads(budget):
        model = copy.deepcopy(base).train()
        if budget is not None:
            compile_blocks(model, memory_budget=budget)
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        kept = {}

        def keep(t):
            if t.untyped_storage().data_ptr() not in weights:
                kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        model(input_ids=ids)  # compiles
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return sum(kept.values()), {n: p.grad for n, p in model.named_parameters()}

    _, eager = kept_and_grads(None)
    kept_all, grads_all = kept_and_grads(1.0)
    kept_less, grads_less = kept_and_grads(0.3)
    assert kept_less < 0.8 * kept_all
    for name, grad in eager.items():
        torch.testing.assert_close(grads_all[name], grad, atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(grads_less[name], grad, atol=1e-5, rtol=1e-4, msg=name)
