"""Model preparation for training: what trains, and that it gets gradients under checkpointing."""

import math

import torch

from instructune.train.adapters import FastDropout, prepare_for_training
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


class TestFastDropout:
    """LoRA's training dropout, against nn.Dropout's distribution: keep rate, scale, lanes, gradient."""

    def test_keeps_each_element_with_probability_1_minus_p_at_nn_dropouts_scale(self):
        torch.manual_seed(0)
        n, p = 1_000_003, 0.05
        out = FastDropout(p).train()(torch.ones(n))
        kept = out != 0
        # 5 standard deviations of a binomial keep rate: a wrong threshold or a biased lane fails.
        assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
        torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
        # Each 64-bit draw feeds four neighbouring elements: every lane must keep at the same rate.
        lanes = kept[: n - n % 4].view(-1, 4).float().mean(0)
        assert (lanes - (1 - p)).abs().max().item() < 5 * math.sqrt(p * (1 - p) / (n / 4))
        reference = torch.nn.Dropout(p).train()(torch.ones(n))
        assert abs(kept.float().mean().item() - (reference != 0).float().mean().item()) < 0.002

    def test_seeded_eval_identity_and_gradient(self):
        x = torch.randn(3, 7, 11, requires_grad=True)
        dropout = FastDropout(0.3)
        torch.manual_seed(1)
        a = dropout(x)
        torch.manual_seed(1)
        torch.testing.assert_close(dropout(x), a)
        a.sum().backward()
        torch.testing.assert_close(x.grad, (a != 0).float() / 0.7)
        assert dropout.eval()(x) is x and FastDropout(0.0).train()(x) is x

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
            kinds = {type(d) for m in trainer.model.modules() if hasattr(m, "lora_dropout")
                     for d in m.lora_dropout.values()}
            assert kinds == ({FastDropout} if fast else {torch.nn.Dropout})
