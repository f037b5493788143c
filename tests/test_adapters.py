"""Model preparation for training: what trains, and that it gets gradients under checkpointing."""

import math

import torch

from instructune.train.adapters import (DropoutLinear, _as_int32, _hashed_keep, dropout_linear, fuse_dropout_masks,
                                       prepare_for_training, use_fast_dropout)
from instructune.config import LoraConfig
from tiny import make_llama, make_tokenizer


def _loss(model, vocab_size: int) -> torch.Tensor:
    ids = torch.randint(0, vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    return model(input_ids=ids, labels=ids).loss


def test_lora_trains_only_adapters_and_they_get_gradients_under_checkpointing():
    tokenizer = make_tokenizer()
    model = prepare_for_training(make_llama(tokenizer), LoraConfig(r=4, alpha=8), gradient_checkpointing=True)
    model.train()
    _loss(model, len(tokenizer)).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # lora_B starts at zero, so lora_A's gradient is zero at step 0; lora_B's must not be.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable.items() if "lora_B" in n)
    assert model.config.use_cache is False


def test_full_fine_tune_keeps_the_model_and_trains_every_weight():
    tokenizer = make_tokenizer()
    base = make_llama(tokenizer)
    model = prepare_for_training(base, LoraConfig(enabled=False))
    assert model is base
    assert all(p.requires_grad for p in model.parameters())


def test_same_seed_gives_the_same_lora_initialisation():
    tokenizer = make_tokenizer()
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = prepare_for_training(make_llama(tokenizer), LoraConfig(r=4))
        weights.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n})
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])


def _assert_autograd_through(keep, x, layer, out, scale):
    """`out` (from x and layer.weight) and its gradients equal autograd's through nn.Linear on the input
    dropped by `keep`."""
    x_ref = x.detach().clone().requires_grad_()
    w_ref = layer.weight.detach().clone().requires_grad_()
    reference = torch.nn.functional.linear(torch.where(keep, x_ref * scale, 0), w_ref)
    torch.testing.assert_close(out, reference)
    grad = torch.randn_like(out)
    out.backward(grad)
    reference.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad)


class TestFastDropout:
    """LoRA's training dropout folded into A, against nn.Dropout's distribution and autograd's own gradient."""

    @staticmethod
    def layer(width: int, p: float, identity: bool = False) -> DropoutLinear:
        linear = torch.nn.Linear(width, 5 if not identity else width, bias=False)
        if identity:
            with torch.no_grad():
                linear.weight.copy_(torch.eye(width))
        return DropoutLinear(linear, p).train()

    def test_keeps_each_element_with_probability_1_minus_p_at_nn_dropouts_scale(self):
        torch.manual_seed(0)
        n, p = 1_000_004, 0.05
        out = self.layer(4, p, identity=True)(torch.ones(n // 4, 4)).detach().flatten()
        kept = out != 0
        # 5 standard deviations of a binomial keep rate: a wrong threshold or a biased lane fails.
        assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
        torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
        # Each 64-bit draw feeds four neighbouring elements: every lane must keep at the same rate.
        lanes = kept.view(-1, 4).float().mean(0)
        assert (lanes - (1 - p)).abs().max().item() < 5 * math.sqrt(p * (1 - p) / (n / 4))
        reference = torch.nn.Dropout(p).train()(torch.ones(n))
        assert abs(kept.float().mean().item() - (reference != 0).float().mean().item()) < 0.002

    def test_gradients_equal_autograds_through_the_same_mask(self):
        """The backward draws the mask again from the seed: gradients equal autograd's through nn.Linear
        applied to that very dropped input (x and weight), and the same seed gives the same output."""
        torch.manual_seed(0)
        layer = self.layer(11, 0.3)
        x = torch.randn(3, 7, 11, requires_grad=True)
        torch.manual_seed(1)
        out, seed = dropout_linear(x, layer.weight, layer.salt, layer.threshold, 1 / 0.7)
        torch.manual_seed(1)
        torch.testing.assert_close(layer(x), out)
        torch.manual_seed(1)  # the same seed, so the same mask, read back through an identity weight
        with torch.no_grad():
            keep = dropout_linear(torch.ones_like(x), torch.eye(11), layer.salt, layer.threshold, 1.0)[0] != 0
        _assert_autograd_through(keep, x, layer, out, 1 / 0.7)

    def test_backward_keeps_the_shared_input_once_and_no_mask(self):
        """q, k and v see the same input: autograd keeps that input once (and each A and seed), not a
        dropped copy and a mask per projection as nn.Dropout before nn.Linear does (3 bytes an element each)."""
        x = torch.randn(4, 64, 32, requires_grad=True)
        layers = [self.layer(32, 0.1) for _ in range(3)]
        saved = {}

        def keep(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            out = sum(layer(x).sum() for layer in layers)
        weights = sum(layer.weight.untyped_storage().nbytes() for layer in layers)
        assert sum(saved.values()) <= x.untyped_storage().nbytes() + weights + 3 * 8
        out.backward()
        assert x.grad is not None and all(layer.weight.grad is not None for layer in layers)

    def test_under_autocast_runs_in_its_dtype_and_the_fp32_weight_gets_its_gradient(self):
        """bf16 autocast over fp32 adapters (train.precision=bf16): the layer computes as autocast runs
        nn.Linear, in bf16, and the gradient reaches the fp32 weight in fp32."""
        layer = self.layer(11, 0.3)
        x, identity = torch.randn(3, 7, 11), self.layer(11, 0.3, identity=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.manual_seed(1)
            out = layer(x)
            torch.manual_seed(1)  # the same seed, so the same mask, read back through an identity weight
            ones = identity(torch.ones_like(x))
        keep = ones != 0
        assert out.dtype == torch.bfloat16
        reference = torch.nn.functional.linear(torch.where(keep, x.bfloat16() * (1 / 0.7), 0), layer.weight.bfloat16())
        torch.testing.assert_close(out, reference)
        out.float().sum().backward()
        assert layer.weight.grad.dtype == torch.float32 and layer.weight.grad.abs().sum() > 0

    def test_eval_and_p_zero_are_the_plain_linear(self):
        layer = self.layer(11, 0.3)
        x = torch.randn(3, 11)
        plain = torch.nn.functional.linear(x, layer.weight)
        torch.testing.assert_close(layer.eval()(x), plain)
        no_dropout = self.layer(11, 0.0)
        torch.testing.assert_close(no_dropout(x), torch.nn.functional.linear(x, no_dropout.weight))

    def test_folding_keeps_the_adapters_parameters_and_state_dict(self):
        tokenizer = make_tokenizer()
        model = prepare_for_training(make_llama(tokenizer), LoraConfig(r=4, dropout=0.1))
        before = {n: p for n, p in model.named_parameters()}
        keys = set(model.state_dict())
        assert use_fast_dropout(model) > 0
        assert {n: p for n, p in model.named_parameters()} == before and set(model.state_dict()) == keys

    def test_trainer_swaps_every_lora_dropout_unless_asked_not_to(self, tmp_path):
        from instructune.config import load_config
        from instructune.train.trainer import Trainer

        tokenizer = make_tokenizer()
        examples = [{"prompt": "Where is my order?", "completion": "It has shipped."}] * 4
        for fast in (True, False):
            config = load_config(None, [f"output_dir={tmp_path}", f"run_name=f{fast}", "train.precision=fp32",
                                        f"lora.fast_dropout={fast}", "train.max_steps=1"])
            trainer = Trainer(config, model=make_llama(tokenizer), tokenizer=tokenizer, train_examples=examples,
                              progress=False)
            trainer.setup()
            layers = [m for m in trainer.model.modules() if hasattr(m, "lora_dropout")]
            dropouts = {type(d) for m in layers for d in m.lora_dropout.values()}
            downs = {type(a) for m in layers for a in m.lora_A.values()}
            assert (dropouts, downs) == (({torch.nn.Identity}, {DropoutLinear}) if fast
                                         else ({torch.nn.Dropout}, {torch.nn.Linear}))


class TestHashedDropout:
    """Compiled blocks' LoRA dropout (`fuse_dropout_masks`): masks from a counter-based hash of the seed, made
    inside a compiled kernel. The same distribution as nn.Dropout, no correlation between neighbouring
    elements or between seeds, and gradients equal autograd's through the same mask."""

    def test_keep_rate_neighbours_and_seeds_are_those_of_independent_draws(self):
        n, p = 1_000_000, 0.05
        threshold = round(p * 2**16)
        sd = math.sqrt(p * (1 - p) / n)
        masks = [_hashed_keep(torch.empty(n), torch.tensor(seed), threshold).float()
                 for seed in (0, 1, 2, 2**31, -7, 123456789123)]  # neighbouring seeds, large, negative
        for keep in masks:
            assert abs(keep.mean().item() - (1 - p)) < 5 * sd
            centred = keep - keep.mean()
            for lag in (1, 2, 4, 64, 1024):  # neighbouring elements, rows of a hidden size
                assert abs((centred[:-lag] * centred[lag:]).mean().item() / centred.var().item()) < 5 / math.sqrt(n)
        for a, b in zip(masks, masks[1:]):  # two seeds' masks are independent
            ca, cb = a - a.mean(), b - b.mean()
            assert abs((ca * cb).mean().item() / (ca.std() * cb.std()).item()) < 5 / math.sqrt(n)

    def test_the_masks_are_the_unsigned_32_bit_hash_eager_and_compiled(self):
        """int32 lanes (wrapping products, masked shifts) give the bits of lowbias32 on unsigned words, here
        computed in int64 with explicit masking; eager and compiled, on sizes no vector width divides."""
        def reference(n, seed, threshold):
            h = (torch.arange(n, dtype=torch.int64) + (seed & 0xFFFFFFFF)) & 0xFFFFFFFF
            h = h ^ (h >> 16)
            h = (h * 0x7FEB352D) & 0xFFFFFFFF
            h = h ^ (h >> 15)
            h = (h * 0x4C6CA68B) & 0xFFFFFFFF
            return ((h ^ (h >> 16)) >> 16) >= threshold

        compiled = torch.compile(_hashed_keep, dynamic=True)
        for n, seed in ((100_003, 0), (4_099, 2**31 - 5), (777, -7), (65_537, 123456789123), (33, 2**32 - 1)):
            want = reference(n, seed, 40_000)
            x = torch.empty(n, dtype=torch.bfloat16)
            assert torch.equal(_hashed_keep(x, torch.tensor(seed), 40_000), want)
            assert torch.equal(compiled(x, torch.tensor(seed), 40_000), want)
        # A tensor past 2**31 elements makes its index in int64 and keeps the low word, wrapping as int32 does.
        assert _as_int32(torch.arange(2**32 - 3, 2**32 + 3)).tolist() == [-3, -2, -1, 0, 1, 2]
        assert _as_int32(torch.tensor([2**31 - 1, 2**31])).tolist() == [2**31 - 1, -(2**31)]

    def test_gradients_equal_autograds_through_the_same_mask(self):
        torch.manual_seed(0)
        layer = DropoutLinear(torch.nn.Linear(11, 5, bias=False), 0.3).train()
        assert fuse_dropout_masks(torch.nn.Sequential(layer)) == 1 and "hashed masks" in repr(layer)
        x = torch.randn(3, 7, 11, requires_grad=True)
        out, seed = dropout_linear(x, layer.weight, layer.salt, layer.threshold, 1 / 0.7, True)
        keep = _hashed_keep(x, seed, layer.threshold + 2**15)
        assert 0.55 < keep.float().mean().item() < 0.85
        _assert_autograd_through(keep, x, layer, out, 1 / 0.7)

    def test_a_compiled_block_draws_the_masks_eager_code_draws(self):
        """Inside a compiled block (the trainer's case) the same seed gives the same output and gradients."""
        torch.manual_seed(0)
        layer = DropoutLinear(torch.nn.Linear(16, 4, bias=False), 0.2).train()
        fuse_dropout_masks(layer)
        block = lambda x: torch.nn.functional.silu(layer(x)).sum()  # noqa: E731
        compiled = torch.compile(block, dynamic=True)
        results = []
        for run in (block, compiled):
            x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
            layer.weight.grad = None
            torch.manual_seed(5)
            loss = run(x)
            loss.backward()
            results.append((loss.detach(), x.grad, layer.weight.grad))
        for eager, compiled_result in zip(*results):
            torch.testing.assert_close(compiled_result, eager)

