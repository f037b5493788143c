"""Model preparation for training: what trains, and that it gets gradients under checkpointing."""

import torch

from instructune.adapters import prepare_for_training
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
