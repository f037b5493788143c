"""Cross-entropy on labelled tokens only, as a (sum, count) pair so callers control the normalisation.

The vocabulary projection is the costliest single matmul of a small model's step (FIELD-NOTES), and
most positions of an instruction example are prompt tokens with no label. So the decoder runs once
and only the hidden states that predict a label go through the output layer: `logits_to_keep` with a
(B, T) boolean mask returns just those rows. Returning the sum lets the trainer divide by the label
count of the whole optimizer step, across micro-batches and processes (not a mean of means).

A large vocabulary (Gemma 3's 262,144 tokens: as many multiply-adds per scored position as the rest
of its network) also scores in chunks: the model returns the labelled rows' hidden states instead
of their logits, and `linear_cross_entropy_sum` runs the output layer a block of vocabulary columns at
a time, so the (labelled tokens x vocab) fp32 matrix never exists whole, nor does its gradient. The
backward pass recomputes each block's logits (TRL's CPU kernel does too, but over every position).
Each block of the weight gradient is one matmul over all labelled rows, so it is rounded once, in
the training precision, as the unchunked backward rounds it: no fp32 accumulator of the weight's
size is needed, and bf16 keeps its speed (on a 2-core Xeon with AMX a (32768 x 512) @ (512 x 640)
product ran at 490 GFLOP/s in bf16 against 91 in fp32). torch 2.13's own `F.linear_cross_entropy`
was the first choice: there its forward and backward took 294 s where the unchunked ones took 13 s
(512 rows x 640 x 262,144, fp32, acc_policy "accurate"), and its bf16 sum was 10% off (5,792 against
6,439). This function, on the same shapes at a quieter moment: 3.3 s against the unchunked 2.6 s in fp32,
1.6 s against 1.6 s in bf16, with the unchunked sums and gradients. A training step of Gemma 3 270M
(bf16-true, 2 x 512 packed tokens) peaked 1.4 GB over its start chunked against 4.1 GB unchunked with
every position labelled, and about the same (1.3-1.4 GB) with DialogSum's 113 (bench/loss_memory.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from instructune.models import unwrapped_model
from instructune.models.families import family_of
from instructune.train.attention import segments, uses_packed_attention
from instructune.data.tokenize import IGNORE_INDEX

# Vocabularies at least this large are scored in chunks (Gemma 3: 262,144); smaller ones (SmolLM2's
# 49,152) in one matmul, where the full logits of a step's labelled rows stay within a few hundred MB.
CHUNKED_VOCAB = 100_000
# fp32 logits per chunk at most (elements): 2**22 is 16 MB, e.g. 256 labelled rows x 16,384 columns. At 2**24
# a Gemma 3 270M step (bench setting) peaked 0.19 GB higher at the same speed (bench/RESULTS.md).
CHUNK_ELEMENTS = 2**22
# Labelled rows are scored padded to a multiple of this, the blocks a power of two columns wide: every new matmul
# shape makes oneDNN compile and cache a kernel (~2.4 MB each for bf16 on an AMX Xeon, up to 1,024 of them), and
# one shape per micro-batch's label count made a 16-step Gemma 3 run grow 14 MB a step.
ROW_BUCKET = 64


def label_count(batch: dict[str, torch.Tensor], encoder_decoder: bool) -> int:
    """How many positions of a batch carry a loss: the one count the loss sums and the step divides by.

    Decoder-only: labels shifted by one (token t+1 is predicted at position t); encoder-decoder: the
    decoder's labels as they are.
    """
    labels = batch["labels"] if encoder_decoder else batch["labels"][:, 1:]
    return int((labels != IGNORE_INDEX).sum())


def causal_lm_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over labelled positions of a decoder-only model.

    Args:
        model: a causal LM (plain, PEFT-wrapped or DDP-wrapped).
        batch: input_ids, labels, position_ids, each (B, T); labels -100 where no loss.

    Returns:
        (loss_sum, label_count)
    """
    targets = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted at position t
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)  # (B, T)
    keep[:, :-1] = targets != IGNORE_INDEX
    count = label_count(batch, encoder_decoder=False)
    # Under attention.py's implementation each packed example attends as its own causal block.
    extra = {"packed_segments": segments(batch["position_ids"])} if uses_packed_attention(model) else {}
    inputs = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                  logits_to_keep=keep, **extra)
    head = chunked_head(model)
    if head is None:
        logits = model(**inputs).logits.float()  # (N, V), N = labelled positions
        if logits.dim() == 3:  # a model without boolean logits_to_keep support returned every position
            logits = logits[keep]
        return F.cross_entropy(logits, targets[keep[:, :-1]], reduction="sum"), count
    tie = _tie_gradients(model, head, inputs)
    with _without_head(model):
        hidden = model(**inputs).logits  # (N, hidden): the labelled rows' final hidden states
    if hidden.dim() == 3:
        hidden = hidden[keep]
    return linear_cross_entropy_sum(hidden, head.weight, targets[keep[:, :-1]], tie=tie), count


def chunked_head(model: Any) -> torch.nn.Linear | None:
    """The output layer `causal_lm_loss_sum` applies itself, in chunks, or None to let the model apply it.

    Chunked: a plain bias-free `nn.Linear` over a vocabulary of CHUNKED_VOCAB or more, with no logit
    soft-capping after it and a weight held whole in this process. A LoRA-wrapped or FSDP-sharded head
    goes through the model's own forward.
    """
    base = unwrapped_model(getattr(model, "module", model))
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not torch.nn.Linear or head.bias is not None or head.out_features < CHUNKED_VOCAB:
        return None
    if getattr(base.config, "final_logit_softcapping", None) or type(head.weight.data) is not torch.Tensor:
        return None
    return head


def _tie_gradients(model: Any, head: torch.nn.Linear, inputs: dict[str, Any]) -> _Tie | None:
    """Embed the tokens here when the input embedding shares the chunked head's weight (Gemma 3's are tied).

    Left to autograd, a tied (V, H) weight gets three gradients of its full size per micro-batch: the
    head's, the lookup's (dense, zero but for the rows looked up) and their sum, and accumulating
    micro-batches holds one of them beside `.grad` (Gemma 3 270M: 336 MB each in bf16). Instead both
    backward passes add into one tensor (`_Tie.gradient`): the weight's `.grad` itself in a single
    process, so a whole optimizer step makes one; under DDP, whose hooks must see the gradient arrive
    through autograd, one per micro-batch, which the lookup's backward (the last to run) returns.
    Replaces `input_ids` by `inputs_embeds` in `inputs`, as the family's embedding module computes them.
    None (inputs unchanged) when no gradient is wanted or the family's embedding module is not known.
    """
    weight = head.weight
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return None
    base = unwrapped_model(getattr(model, "module", model))
    embedding = base.get_input_embeddings()
    family = family_of(base)
    if (family is None or not isinstance(embedding, torch.nn.Embedding) or embedding.weight is not weight
            or embedding.max_norm is not None or embedding.sparse or embedding._forward_hooks
            or embedding._forward_pre_hooks or weight._backward_hooks or weight._post_accumulate_grad_hooks):
        return None
    tie = _Tie(weight, into_grad=not hasattr(model, "module"))  # DDP and FSDP wrap the model as .module
    ids = inputs["input_ids"]
    embeds = family.embed(embedding, lambda: _TiedEmbedding.apply(ids, weight, embedding.padding_idx, tie))
    if embeds is None:
        return None
    del inputs["input_ids"]
    inputs["inputs_embeds"] = embeds
    return tie


class _Tie:
    """The one gradient tensor the head's and the lookup's backward passes of a tied weight add into."""

    def __init__(self, weight: torch.nn.Parameter, into_grad: bool):
        self.weight, self.into_grad, self._gradient = weight, into_grad, None

    def gradient(self) -> torch.Tensor:
        if self.into_grad:
            if self.weight.grad is None:
                self.weight.grad = torch.zeros_like(self.weight)
            return self.weight.grad
        if self._gradient is None:
            self._gradient = torch.zeros_like(self.weight)
        return self._gradient

    def returned(self) -> torch.Tensor | None:
        """What the lookup's backward returns as the weight's gradient: None where it went into .grad."""
        gradient, self._gradient = self._gradient, None
        return gradient


class _TiedEmbedding(torch.autograd.Function):
    """`F.embedding(ids, weight, padding_idx)` whose backward adds into the head's gradient of the same weight.

    The looked-up rows' gradient is summed per distinct token in fp32 and added to those rows of
    `tie.gradient()` (rounded once, as autograd's sum of the two gradients is); positions holding
    `padding_idx` give none, as in `nn.Embedding`.
    """

    @staticmethod
    def forward(ctx, ids, weight, padding_idx, tie):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.tie = padding_idx, tie
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_output):
        (ids,) = ctx.saved_tensors
        gradient = ctx.tie.gradient()
        ids, grad_rows = ids.flatten(), grad_output.reshape(-1, gradient.shape[1])
        if ctx.padding_idx is not None:
            kept = ids != ctx.padding_idx
            ids, grad_rows = ids[kept], grad_rows[kept]
        tokens, where = torch.unique(ids, return_inverse=True)
        summed = torch.zeros(len(tokens), gradient.shape[1], dtype=torch.float32, device=gradient.device)
        summed.index_add_(0, where, grad_rows.float())
        gradient[tokens] = (gradient[tokens].float() + summed).to(gradient.dtype)
        return None, ctx.tie.returned(), None, None


@contextmanager
def _without_head(model: Any) -> Iterator[None]:
    """The model's output layer as an identity for one forward: `.logits` are then the final hidden states."""
    base = unwrapped_model(getattr(model, "module", model))
    head = base.get_output_embeddings()
    base.set_output_embeddings(torch.nn.Identity())
    try:
        yield
    finally:
        base.set_output_embeddings(head)


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             chunk_elements: int | None = None, tie: _Tie | None = None) -> torch.Tensor:
    """sum(cross_entropy(hidden @ weight.T, targets)), a block of vocabulary columns at a time.

    The logits are computed as the model's output layer would (in bf16 under bf16 autocast or bf16
    weights, then taken to fp32), never more than `chunk_elements` (default CHUNK_ELEMENTS) of them at
    once, forward or backward. Gradients equal the unchunked computation's (tests/test_gemma3.py).

    Args:
        hidden: (N, H) final hidden states of the labelled positions.
        weight: (V, H) the output layer's weight.
        targets: (N,) the label at each of those positions (none ignored: gather them first).
        tie: from `_tie_gradients`: the weight's gradient is added into `tie.gradient()`, not returned.

    Example:
        >>> linear_cross_entropy_sum(torch.zeros(2, 4), torch.zeros(8, 4), torch.tensor([1, 5]))
        tensor(4.1589)
    """
    dtype = hidden.dtype
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
    # A power of two per padded row count: few distinct matmul shapes (each new one costs memory, above).
    columns = 1 << max(0, ((chunk_elements or CHUNK_ELEMENTS) // _padded(hidden.shape[0])).bit_length() - 1)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, dtype, columns, tie)


def _padded(rows: int) -> int:
    """Rows rounded up to a multiple of ROW_BUCKET (at least one bucket)."""
    return max(1, -(-rows // ROW_BUCKET)) * ROW_BUCKET


def _padded_rows(x: torch.Tensor) -> torch.Tensor:
    """x with zero rows appended up to `_padded(len(x))`."""
    return F.pad(x, (0, 0, 0, _padded(x.shape[0]) - x.shape[0]))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (N, H) @ (V, H).T over blocks of `columns` vocabulary entries.

    Forward keeps each row's logsumexp (N floats). Backward recomputes each block's logits, turns them
    into softmax - one-hot, adds the block's share to the hidden-state gradient (an fp32 accumulator)
    and writes the block's rows of the weight gradient: one matmul over all N rows, so those rows
    are rounded once, as in the unchunked backward. The N rows run padded with zero rows to a multiple
    of ROW_BUCKET, which adds nothing: a zero row's loss is left out of the sum, its hidden-state
    gradient dropped, and its share of the weight gradient is its zero hidden state times anything.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, columns, tie=None):
        n = hidden.shape[0]
        with torch.autocast(hidden.device.type, enabled=False):
            h = _padded_rows(hidden.to(dtype))  # (N padded, H)
            lse_blocks, target_logits = [], torch.zeros(n, dtype=torch.float32, device=hidden.device)
            for start, rows, columns_hit in _blocks(targets, weight.shape[0], columns):
                logits = F.linear(h, weight[start:start + columns].to(dtype)).float()  # (N padded, columns)
                lse_blocks.append(torch.logsumexp(logits, dim=-1))
                target_logits[rows] = logits[rows, columns_hit]
            lse = torch.logsumexp(torch.stack(lse_blocks, dim=-1), dim=-1)[:n]  # (N,)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.dtype, ctx.columns, ctx.tie = dtype, columns, tie
        return (lse - target_logits).sum()

    @staticmethod
    def backward(ctx, grad_output):
        hidden, weight, targets, lse = ctx.saved_tensors
        dtype, columns = ctx.dtype, ctx.columns
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        n = hidden.shape[0]
        h = _padded_rows(hidden.to(dtype))  # (N padded, H)
        grad_hidden = torch.zeros(h.shape, dtype=torch.float32, device=hidden.device) if need_hidden else None
        tie = ctx.tie if need_weight else None
        grad_weight = tie.gradient() if tie else torch.empty_like(weight) if need_weight else None
        with torch.autocast(hidden.device.type, enabled=False):
            # the incoming gradient, on the small side
            scaled_h = _padded_rows((hidden.float() * grad_output).to(dtype))
            lse = F.pad(lse, (0, h.shape[0] - n))
            for start, rows, columns_hit in _blocks(targets, weight.shape[0], columns):
                block = weight[start:start + columns].to(dtype)  # (columns, H)
                # d(loss)/d(logits) = softmax - one-hot, (N padded, columns), in fp32, then in the matmuls' dtype
                grad_logits = F.linear(h, block).float().sub_(lse.unsqueeze(1)).exp_()
                grad_logits[rows, columns_hit] -= 1
                grad_logits = grad_logits.to(dtype)
                if need_hidden:
                    grad_hidden += (grad_logits @ block).float()
                if need_weight:  # in place where the dtypes agree: a (columns, H) temporary is the block's size
                    rows_of_weight = grad_weight[start:start + block.shape[0]]
                    if tie:  # added to what the tied weight's gradient holds: the bf16 product, then the sum
                        rows_of_weight += grad_logits.T @ scaled_h
                    elif rows_of_weight.dtype == dtype:
                        torch.matmul(grad_logits.T, scaled_h, out=rows_of_weight)
                    else:  # fp32 weights under bf16 autocast: the bf16 product, then fp32, as autograd does
                        rows_of_weight.copy_(grad_logits.T @ scaled_h)
        if need_hidden:
            grad_hidden = grad_hidden[:n].mul_(grad_output).to(hidden.dtype)
        return grad_hidden, None if tie else grad_weight, None, None, None, None


def _blocks(targets: torch.Tensor, vocab: int, columns: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(first column, rows whose target lies in the block, that target's column in the block) per block."""
    for start in range(0, vocab, columns):
        rows = ((targets >= start) & (targets < start + columns)).nonzero().squeeze(1)
        yield start, rows, targets[rows] - start


def seq2seq_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed loss of an encoder-decoder model on its target tokens."""
    labels = batch["labels"]
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    logits = output.logits.float()  # (B, T, V)
    loss_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, label_count(batch, encoder_decoder=True)
