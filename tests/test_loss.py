"""The labelled-positions loss against a reference computed from every position's logits."""

import pytest
import torch
import torch.nn.functional as F

from instructune.train.loss import causal_lm_loss_sum
from instructune.train.pack import collate
from instructune.data.tokenize import IGNORE_INDEX, encode_prompt_completion


def reference_loss_sum(model, batch):
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.fixture()
def batch(tokenizer):
    examples = [{"prompt": "Where is my order?", "completion": "It has shipped."},
                {"prompt": "How do I reset my password? " * 3, "completion": "Click the link in the email."}]
    return collate([encode_prompt_completion(e, tokenizer, 128) for e in examples], tokenizer.pad_token_id)


class TestCausalLmLossSum:
    def test_equals_full_logits_reference(self, llama, batch):
        with torch.no_grad():
            loss_sum, count = causal_lm_loss_sum(llama, batch)
            expected = reference_loss_sum(llama, batch)
        assert count == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        torch.testing.assert_close(loss_sum, expected, atol=1e-4, rtol=1e-5)

    def test_gradients_equal_reference(self, llama, batch):
        loss_sum, _ = causal_lm_loss_sum(llama, batch)
        loss_sum.backward()
        ours = [p.grad.clone() for p in llama.parameters()]
        llama.zero_grad()
        reference_loss_sum(llama, batch).backward()
        for got, expected in zip(ours, (p.grad for p in llama.parameters())):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    def test_no_labels_gives_zero(self, llama, batch):
        batch = dict(batch, labels=torch.full_like(batch["labels"], IGNORE_INDEX))
        with torch.no_grad():
            loss_sum, count = causal_lm_loss_sum(llama, batch)
        assert count == 0 and float(loss_sum) == 0.0
