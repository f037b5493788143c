"""The native generation engine: greedy decoding of Llama-family models with continuous batching.

Hugging Face `generate` pads every batch to its longest prompt, keeps computing rows that have already
stopped until the whole batch is done, grows its KV cache by concatenation at every step, and (under
bf16 autocast) re-casts every weight on every forward. On a CPU that leaves most of the time on the
table. This engine runs the model's own modules (so LoRA-wrapped or fine-tuned weights decode as they
are) in a loop of its own:

- each prompt is prefilled alone, unpadded, straight into its slot of a preallocated KV cache;
- the decode step runs every live slot at once, one token each, attention reading each slot's own
  length (grouped-query attention without copying the shared key/value heads);
- a slot whose answer stops is refilled at once with the next prompt (continuous batching), so the
  batch stays full and nothing is computed for finished answers;
- "bfloat16" decodes a bf16 copy of the weights (adapters merged), cast once.

In float32 the answers equal Hugging Face greedy `generate`'s token for token (tests/test_decode.py);
bfloat16 is faster and changes some answers (its ROUGE against float32 is in bench/RESULTS.md).
Covered: decoder-only models whose layers are Llama's (Llama, SmolLM, Mistral without a sliding
window in reach, Qwen2). Everything else, sampling, and quantized models return a reason from
`unsupported_reason` and go to Hugging Face `generate`.
"""

from __future__ import annotations

from typing import Any, Callable

from instructune.errors import InstructuneError
from instructune.models import is_encoder_decoder, merged_copy, unwrapped_model

COMPUTE_TYPES = ("float32", "bfloat16")
# Answers in flight at least: a decode step reads every weight once whatever the number of rows, so on
# a CPU 32 rows cost little more than 8 (48 DialogSum summaries: 42.4 -> 71.6 new tokens/s in fp32,
# bench/RESULTS.md); the KV cache per slot is small next to the weights of a model this engine runs.
MIN_SLOTS = 32
MODEL_TYPES = ("llama", "mistral", "qwen2")


def unsupported_reason(model: Any) -> str | None:
    """Why the native engine cannot decode `model`, or None when it can.

    Example:
        >>> unsupported_reason(t5_model)
        'encoder-decoder models use Hugging Face generate'
    """
    if is_encoder_decoder(model):
        return "encoder-decoder models use Hugging Face generate"
    base = unwrapped_model(model)
    config = base.config
    if config.model_type not in MODEL_TYPES:
        return f"model type {config.model_type!r} is not one of {', '.join(MODEL_TYPES)}"
    if getattr(config, "quantization_config", None) is not None:
        return "quantized models use Hugging Face generate"
    if any(p.device.type != "cpu" for p in base.parameters()):
        return "the native engine runs on the CPU"
    if getattr(config, "use_sliding_window", True) and getattr(config, "sliding_window", None):
        return "sliding-window attention is not implemented"
    return None


def decoding_model(model: Any, compute_type: str) -> Any:
    """The model the decode loop runs: `model` itself in float32, else a bf16 copy with adapters merged.

    A PEFT-wrapped model is decoded through its LoRA modules in float32 (nothing copied, the same
    arithmetic as Hugging Face's), and merged into a copy in bfloat16, where the copy is made anyway.
    """
    import torch

    if compute_type not in COMPUTE_TYPES:
        raise InstructuneError(f"native engine: compute_type {compute_type!r}; expected one of {', '.join(COMPUTE_TYPES)}")
    if compute_type == "float32":
        return model
    return merged_copy(model).to(torch.bfloat16).eval()


class _Slots:
    """A preallocated KV cache, per layer: keys as (slots, kv heads, head dim, length), values as
    (slots, kv heads, length, head dim).

    The decode step reads the live slots' whole rows, `keys[:rows]`, which lie contiguous in memory,
    and masks the positions past each slot's length. Reading only the first `span` positions
    (`keys[..., :span, :]`) made torch copy every slot's keys and values before the matmuls (with keys
    as (.., length, head dim), 5x the matmul's own time): a quarter of a bf16 decode step went to
    those copies (bench/RESULTS.md, issue 13). Keys lie transposed so the query-key product needs no
    transpose either.
    """

    def __init__(self, layers: int, slots: int, kv_heads: int, length: int, head_dim: int, dtype: Any):
        import torch

        self.keys = [torch.zeros((slots, kv_heads, head_dim, length), dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros((slots, kv_heads, length, head_dim), dtype=dtype) for _ in range(layers)]

    def move(self, source: int, target: int, length: int) -> None:
        """Copy one slot's first `length` positions into another slot (compaction at the tail)."""
        for keys, values in zip(self.keys, self.values):
            keys[target, :, :, :length] = keys[source, :, :, :length]
            values[target, :, :length] = values[source, :, :length]


class NativeDecoder:
    """Greedy decoding of one model over many prompts, `slots` answers in flight at a time.

    Example:
        >>> decoder = NativeDecoder(model, compute_type="float32")
        >>> decoder.generate([[1, 5, 9], [1, 7]], max_new_tokens=16, stop_ids=[2], slots=8)
        [[12, 40, 3], [8]]
    """

    def __init__(self, model: Any, compute_type: str = "float32"):
        reason = unsupported_reason(model)
        if reason is not None:
            raise InstructuneError(f"native engine cannot run this model: {reason}")
        self.model = decoding_model(model, compute_type)
        base = unwrapped_model(self.model)
        self.inner = base.model
        self.lm_head = base.lm_head
        config = base.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.dtype = next(base.parameters()).dtype
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self._rotate = apply_rotary_pos_emb

    # The attention of one layer, for both phases; q, k, v arrive as (rows, heads, tokens, head dim).
    def _layer(self, layer: Any, index: int, x: Any, cos: Any, sin: Any, write: Callable, attend: Callable) -> Any:
        attention = layer.self_attn
        rows, tokens, _ = x.shape
        h = layer.input_layernorm(x)
        q = attention.q_proj(h).view(rows, tokens, self.heads, self.head_dim).transpose(1, 2)
        k = attention.k_proj(h).view(rows, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attention.v_proj(h).view(rows, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = self._rotate(q, k, cos, sin)
        write(index, k, v)
        out = attend(index, q, k, v, attention.scaling)
        x = x + attention.o_proj(out.transpose(1, 2).reshape(rows, tokens, self.heads * self.head_dim))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _prefill(self, cache: _Slots, slot: int, ids: list[int]) -> int:
        """Run one prompt through the model into `slot` of the cache; its first greedy token."""
        import torch
        import torch.nn.functional as F

        input_ids = torch.tensor([ids])
        positions = torch.arange(len(ids)).unsqueeze(0)
        x = self.inner.embed_tokens(input_ids)
        cos, sin = self.inner.rotary_emb(x, positions)

        def write(index, k, v):
            cache.keys[index][slot, :, :, : len(ids)] = k[0].transpose(-1, -2)
            cache.values[index][slot, :, : len(ids)] = v[0]

        def attend(index, q, k, v, scale):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)

        for index, layer in enumerate(self.inner.layers):
            x = self._layer(layer, index, x, cos, sin, write, attend)
        return int(self.lm_head(self.inner.norm(x[:, -1])).argmax(-1))

    def _step(self, cache: _Slots, tokens: Any, positions: Any) -> Any:
        """One token for each of the first len(tokens) slots, at its own position; the greedy next tokens."""
        import torch

        rows = tokens.shape[0]
        span = cache.values[0].shape[2]
        group = self.heads // self.kv_heads
        # Each row sees its own cache up to and including the new token.
        blocked = torch.arange(span).unsqueeze(0) > positions.unsqueeze(1)
        bias = torch.zeros((rows, 1, 1, span), dtype=self.dtype).masked_fill_(blocked[:, None, None], float("-inf"))
        x = self.inner.embed_tokens(tokens.unsqueeze(1))
        cos, sin = self.inner.rotary_emb(x, positions.unsqueeze(1))
        row_index = torch.arange(rows)

        def write(index, k, v):
            cache.keys[index][row_index, :, :, positions] = k[:, :, 0]
            cache.values[index][row_index, :, positions] = v[:, :, 0]

        def attend(index, q, k, v, scale):
            keys = cache.keys[index][:rows]
            values = cache.values[index][:rows]
            # The scale goes on the small query rather than the scores (exact for a power of two,
            # as 1/sqrt(64) is); the mask of 0 and -inf is exact in bf16; softmax runs in fp32.
            grouped = (q * scale).view(rows, self.kv_heads, group, self.head_dim)
            scores = torch.matmul(grouped, keys).add_(bias)
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
            return torch.matmul(weights, values).view(rows, self.heads, 1, self.head_dim)

        for index, layer in enumerate(self.inner.layers):
            x = self._layer(layer, index, x, cos, sin, write, attend)
        return self.lm_head(self.inner.norm(x[:, 0])).argmax(-1)

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, stop_ids: list[int], slots: int = 8,
                 on_done: Callable[[int], None] | None = None) -> list[list[int]]:
        """Greedy new token ids for every prompt, in input order, each cut before its first stop token.

        Args:
            prompts: token id rows (the model's full input, chat formatting included).
            max_new_tokens: cap on new tokens per answer.
            stop_ids: tokens that end an answer (left out of it).
            slots: answers in flight at once (the decode step's batch).
            on_done: called with the prompt's index as each answer finishes (progress bars).
        """
        import torch

        if not prompts:
            return []
        if any(not row for row in prompts):
            raise InstructuneError("native engine: an empty prompt has nothing to continue")
        slots = max(1, min(slots, len(prompts)))
        stops = set(stop_ids)
        longest = max(len(row) for row in prompts) + max_new_tokens
        cache = _Slots(len(self.inner.layers), slots, self.kv_heads, longest, self.head_dim, self.dtype)
        answers: list[list[int]] = [[] for _ in prompts]
        queue = list(range(len(prompts)))[::-1]  # pop() takes them in input order
        owner: list[int] = []      # prompt index held by each live slot, slots 0..live-1
        position: list[int] = []   # where each live slot's next token goes

        def finished(index: int, token: int) -> bool:
            if token in stops:
                return True
            answers[index].append(token)
            return len(answers[index]) >= max_new_tokens

        def fill(slot: int) -> bool:
            """Prefill queued prompts into `slot` until one needs decoding; False when the queue ran dry."""
            while queue:
                index = queue.pop()
                if not finished(index, self._prefill(cache, slot, prompts[index])):
                    if slot == len(owner):
                        owner.append(index)
                        position.append(len(prompts[index]))
                    else:
                        owner[slot], position[slot] = index, len(prompts[index])
                    return True
                if on_done:
                    on_done(index)
            return False

        with torch.inference_mode():
            while len(owner) < slots and fill(len(owner)):
                pass
            while owner:
                last = torch.tensor([answers[i][-1] for i in owner])
                next_tokens = self._step(cache, last, torch.tensor(position)).tolist()
                position = [p + 1 for p in position]  # now each slot's count of cached positions
                slot = 0
                while slot < len(owner):
                    index = owner[slot]
                    if not finished(index, next_tokens[slot]):
                        slot += 1
                        continue
                    if on_done:
                        on_done(index)
                    if fill(slot):
                        slot += 1
                        continue
                    # Queue empty: the last live slot moves into the hole (and is looked at next),
                    # so the live slots stay 0..live-1 and the step never computes a dead row.
                    tail = len(owner) - 1
                    if slot != tail:
                        cache.move(tail, slot, position[tail])
                        owner[slot], position[slot], next_tokens[slot] = owner[tail], position[tail], next_tokens[tail]
                    owner.pop()
                    position.pop()
        return answers
