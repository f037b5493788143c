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


@pytest.fixture()
def chunked(monkeypatch):
    """Score every vocabulary in chunks of 100 logits at most (the tiny models' vocabularies are small)."""
    from instructune.train import loss

    monkeypatch.setattr(loss, "CHUNKED_VOCAB", 1)
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 100)


class TestLinearCrossEntropySum:
    """The chunked output layer and loss against F.linear then F.cross_entropy, the unchunked computation."""

    @staticmethod
    def _inputs(dtype=torch.float32, rows=13, hidden=16, vocab=100):
        generator = torch.Generator().manual_seed(0)
        h = torch.randn(rows, hidden, generator=generator).to(dtype).requires_grad_()
        w = torch.randn(vocab, hidden, generator=generator).to(dtype).requires_grad_()
        return h, w, torch.randint(0, vocab, (rows,), generator=generator)

    @pytest.mark.parametrize("chunk_elements", [13 * 7, 13 * 100, 1])  # uneven blocks, one block, one column
    def test_loss_and_gradients_equal_unchunked(self, chunk_elements):
        from instructune.train.loss import linear_cross_entropy_sum

        h, w, targets = self._inputs()
        ours = linear_cross_entropy_sum(h, w, targets, chunk_elements=chunk_elements)
        (ours * 0.25).backward()  # an incoming gradient other than 1, as the trainer's 1 / label count
        grads = h.grad.clone(), w.grad.clone()
        h.grad = w.grad = None
        reference = F.cross_entropy(F.linear(h, w), targets, reduction="sum")
        (reference * 0.25).backward()
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-6)
        torch.testing.assert_close(grads[0], h.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grads[1], w.grad, atol=1e-6, rtol=1e-5)

    @pytest.mark.parametrize("autocast", [False, True])
    def test_bf16_is_the_unchunked_bf16_computation(self, autocast):
        """bf16 weights (bf16-true) or bf16 autocast: logits in bf16 as the output layer computes them, softmax
        in fp32; the gradients within bf16 rounding of the unchunked ones."""
        from instructune.train.loss import linear_cross_entropy_sum

        h, w, targets = self._inputs(torch.float32 if autocast else torch.bfloat16, rows=40, hidden=64, vocab=300)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ours = linear_cross_entropy_sum(h, w, targets, chunk_elements=40 * 64)
            ours.backward()
            grads = h.grad.clone(), w.grad.clone()
            h.grad = w.grad = None
            reference = F.cross_entropy(F.linear(h, w).float(), targets, reduction="sum")
            reference.backward()
        assert ours.dtype == torch.float32 and grads[1].dtype == w.dtype
        torch.testing.assert_close(ours, reference, atol=1e-3, rtol=1e-5)
        for got, expected in zip(grads, (h.grad, w.grad)):
            torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)

    def test_no_rows(self):
        from instructune.train.loss import linear_cross_entropy_sum

        h, w, _ = self._inputs(rows=0)
        loss = linear_cross_entropy_sum(h, w, torch.zeros(0, dtype=torch.long))
        loss.backward()
        assert float(loss) == 0.0 and not w.grad.any()


class TestChunkedModelLoss:
    def test_chunked_loss_and_gradients_equal_the_models_own_logits(self, llama, batch, chunked):
        from instructune.train.loss import chunked_head

        assert chunked_head(llama) is llama.lm_head
        ours, count = causal_lm_loss_sum(llama, batch)
        ours.backward()
        grads = [p.grad.clone() for p in llama.parameters()]
        llama.zero_grad()
        expected = reference_loss_sum(llama, batch)
        expected.backward()
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-5)
        for got, reference in zip(grads, (p.grad for p in llama.parameters())):
            torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-4)
        assert isinstance(llama.lm_head, torch.nn.Linear)  # the head is back in place

    def test_lora_wrapped_model_trains_its_adapters_through_the_chunked_head(self, llama, batch, chunked):
        from peft import LoraConfig, get_peft_model

        from instructune.train.loss import chunked_head

        model = get_peft_model(llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        assert chunked_head(model) is llama.lm_head
        loss_sum, _ = causal_lm_loss_sum(model, batch)
        loss_sum.backward()
        assert all(p.grad is not None and p.grad.any() for n, p in model.named_parameters() if "lora_B" in n)  # A: zero while B is
        with torch.no_grad():
            torch.testing.assert_close(loss_sum, reference_loss_sum(model, batch), atol=1e-4, rtol=1e-5)

    def test_small_vocabularies_and_lora_heads_use_the_models_own_head(self, llama, monkeypatch):
        from peft import LoraConfig, get_peft_model

        from instructune.train import loss

        assert loss.chunked_head(llama) is None  # 512 tokens: one matmul
        monkeypatch.setattr(loss, "CHUNKED_VOCAB", 1)
        assert loss.chunked_head(get_peft_model(llama, LoraConfig(r=4, target_modules=["lm_head"]))) is None
