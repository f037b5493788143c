"""The native generation engine: greedy decoding of the Llama and Gemma 3 families with continuous batching.

Hugging Face `generate` pads every batch to its longest prompt, keeps computing rows that have already
stopped until the whole batch is done, grows its KV cache by concatenation at every step, and (under
bf16 autocast) re-casts every weight on every forward. On a CPU that leaves most of the time on the
table. This engine runs the model's own modules (so LoRA-wrapped or fine-tuned weights decode as they
are) in a loop of its own:

- prompts are prefilled several at a time, end to end in one unpadded row (attention per prompt),
  straight into their slots of a preallocated KV cache;
- the decode step runs every live slot at once, one token each, attention reading each slot's own
  length (grouped-query attention without copying the shared key/value heads);
- a slot whose answer stops is handed the last live slot's cache, so nothing is computed for finished
  answers, and once a quarter of the slots are free they are refilled with the next prompts in one
  prefill (continuous batching);
- the cache shrinks to what the live and queued prompts can still reach (prompts come longest
  first, and the decode step reads every slot's whole length);
- a layer with a sliding window (Gemma 3's local layers) sees at most its window's last positions, in
  prefill (a banded mask per prompt where the prompt is longer than the window) and in decode (the
  positions before the window masked); the cache keeps every position for every layer, as a window
  of 512 holds most prompts whole anyway;
- "bfloat16" decodes a bf16 copy of the weights (adapters merged), cast once and laid out for
  oneDNN's matmuls once, with prefill attention as two matmuls and an fp32 softmax (torch's CPU
  flash kernel is slow in bf16).

In float32 the answers equal Hugging Face greedy `generate`'s token for token (tests/test_native.py);
bfloat16 is faster and changes some answers (its ROUGE against float32 is in bench/RESULTS.md).
Covered: decoder-only models of a family with a module (models/families.py): Llama's layers (Llama,
SmolLM, Mistral without a sliding window in reach, Qwen2) and Gemma 3's (text models). Everything
else, sampling, and quantized models return a reason from `unsupported_reason` and go to Hugging Face
`generate`.
"""

from __future__ import annotations

from functools import partial
from itertools import accumulate
from typing import Any, Callable

from instructune.errors import InstructuneError
from instructune.generation.engines import Request, Where
from instructune.models import merged_copy, unwrapped_model
from instructune.models.families import engine_unsupported_reason, family_of

NAME = "native"
COMPUTE_TYPES = ("float32", "bfloat16")
SEARCHES = False
SAMPLES = False
NEEDS_EXPORT = False
BESIDE_ALLOCATOR = True
# Answers in flight at least: a decode step reads every weight once whatever the number of rows, so on
# a CPU 32 rows cost little more than 8 (48 DialogSum summaries: 42.4 -> 71.6 new tokens/s in fp32,
# bench/RESULTS.md); the KV cache per slot is small next to the weights of a model this engine runs.
MIN_SLOTS = 32
# Prompt tokens per prefill forward at most (a single longer prompt still runs alone).
PREFILL_TOKENS = 4096


def unsupported_reason(model: Any, compute_type: str | None = None, where: Where | None = None) -> str | None:
    """Why the native engine cannot decode `model`, or None when it can (the allocator and a changing model are fine).

    Example:
        >>> unsupported_reason(t5_model)
        'encoder-decoder models use Hugging Face generate'
    """
    return engine_unsupported_reason(model)


def run(model: Any, tokenizer: Any, request: Request, where: Where, on_done: Callable[[int], None]) -> list[list[int]]:
    """The engine protocol's call (engines.py): every prompt decoded, `max(batch_size, MIN_SLOTS)` in flight."""
    decoder = NativeDecoder(model, request.compute_type or COMPUTE_TYPES[0])
    return decoder.generate(request.prompts, max_new_tokens=request.max_new_tokens, stop_ids=request.stop_ids,
                            slots=max(request.batch_size, MIN_SLOTS), on_done=on_done)


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
    copied = merged_copy(model).to(torch.bfloat16).eval()
    _pack_linears(copied)
    return copied


def _packed_linear(module: Any, x: Any) -> Any:
    """`module`'s linear layer on the weight `_pack_linears` laid out for oneDNN."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, module.weight, module.bias, "none", [], "")


def _pack_linears(model: Any) -> int:
    """Lay out the bf16 decoding copy's linear weights for oneDNN once, where it has bf16 kernels.

    `F.linear` re-packs the weight at every call. Packed once, a 1536 x 576 layer at the decode
    step's 32 rows took 125 instead of 200 us, the linear layers 19% less time over a profiled
    stretch of generation, and the native bf16 engine ran ~5% faster (paired runs, bench/RESULTS.md),
    for the same numbers. Each packed weight is a new tensor on its own layer, so a tied embedding
    keeps the plain one. Returns how many layers were packed (0 without oneDNN bf16 kernels).
    """
    import torch

    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return 0
    except (AttributeError, RuntimeError):
        return 0
    packed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.bfloat16:
            module.weight = torch.nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(module.weight.detach()),
                                               requires_grad=False)
            module.forward = partial(_packed_linear, module)
            packed += 1
    return packed


def _band(tokens: int, window: int) -> Any:
    """(tokens, tokens) bool: query i sees key j when i - window < j <= i (causal, at most `window` keys).

    Example:
        >>> _band(4, 2).int().tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    """
    import torch

    distance = torch.arange(tokens).unsqueeze(1) - torch.arange(tokens).unsqueeze(0)  # query - key
    return (distance >= 0) & (distance < window)


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

    @property
    def length(self) -> int:
        return self.values[0].shape[2]

    def shrink(self, length: int) -> None:
        """Keep only the first `length` positions of every slot, in fresh contiguous tensors.

        The decode step reads every slot's whole length, so a cache sized for the longest prompt
        would keep costing that prompt's reads after it is done (prompts come longest first).
        """
        self.keys = [keys[..., :length].clone() for keys in self.keys]
        self.values = [values[:, :, :length].clone() for values in self.values]

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
        self.family = family_of(base.config)
        self.dims = self.family.dims(base.config)
        self.heads, self.kv_heads, self.head_dim = self.dims
        self.windows = self.family.attention_windows(base.config)  # per layer: None or positions seen
        self.dtype = next(base.parameters()).dtype

    # Every decoder layer, for both phases: the family's layer with its rotary tables, this engine's cache
    # write and attention (q, k, v arrive as (rows, heads, tokens, head dim); self.windows[index] is the
    # layer's window).
    def _layers(self, x: Any, positions: Any, write: Callable, attend: Callable) -> Any:
        tables = self.family.rotary_tables(self.inner, x, positions)
        for index, layer in enumerate(self.inner.layers):
            def cached_attention(q, k, v, scale, index=index):
                write(index, k, v)
                return attend(index, q, k, v, scale)

            x = self.family.decoder_layer(layer, x, *tables[index], self.dims, cached_attention)
        return x

    def _prefill(self, cache: _Slots, slots: list[int], rows: list[list[int]]) -> list[int]:
        """Run prompts through the model into their slots of the cache, in one forward; their first greedy tokens.

        The prompts lie end to end in one row, unpadded: the linear layers (nearly all of a prefill's
        work) run on all their tokens at once, and attention runs per prompt, causal within it (and
        within the layer's window).
        """
        import torch

        lengths = [len(row) for row in rows]
        starts = [sum(lengths[:i]) for i in range(len(rows))]
        input_ids = torch.tensor([[token for row in rows for token in row]])
        positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
        x = self.inner.embed_tokens(input_ids)  # Gemma's module scales by sqrt(hidden) itself

        def write(index, k, v):
            for slot, start, n in zip(slots, starts, lengths):
                cache.keys[index][slot, :, :, :n] = k[0, :, start:start + n].transpose(-1, -2)
                cache.values[index][slot, :, :n] = v[0, :, start:start + n]

        # Per window (None: causal only), each prompt's attention, its masks made once for all layers.
        causal = {window: [self._prefill_attention(n, window) for n in lengths] for window in set(self.windows)}

        def attend(index, q, k, v, scale):
            return torch.cat([attention(q[:, :, s:s + n], k[:, :, s:s + n], v[:, :, s:s + n], scale=scale)
                              for attention, s, n in zip(causal[self.windows[index]], starts, lengths)], dim=2)

        x = self._layers(x, positions, write, attend)
        last = torch.tensor([s + n - 1 for s, n in zip(starts, lengths)])
        return self.lm_head(self.inner.norm(x[0, last])).float().argmax(-1).tolist()

    def _prefill_attention(self, tokens: int, window: int | None) -> Callable:
        """Attention over one prompt of `tokens` tokens, causal and within `window` positions (None: all).

        float32 keeps SDPA, as Hugging Face runs it (the same answers), with a banded boolean mask where
        the window is shorter than the prompt; in bfloat16 torch's CPU flash kernel ran at ~14 GFLOP/s, a
        third of a prefill, where two batched matmuls run on the BLAS (`_causal_attention`).
        """
        import torch
        import torch.nn.functional as F

        banded = window is not None and tokens > window
        if self.dtype == torch.bfloat16:  # the mask added to fp32 scores: 0 where seen, -inf elsewhere
            seen = _band(tokens, window if banded else tokens)
            return partial(self._causal_attention, mask=torch.zeros(seen.shape).masked_fill_(~seen, float("-inf")))
        if banded:
            return partial(F.scaled_dot_product_attention, attn_mask=_band(tokens, window), enable_gqa=True)
        return partial(F.scaled_dot_product_attention, is_causal=True, enable_gqa=True)

    def _causal_attention(self, q: Any, k: Any, v: Any, scale: float, mask: Any) -> Any:
        """Causal attention of one prompt, (1, heads, tokens, head dim), as matmuls with the mask (fp32, 0 and
        -inf) added and the softmax taken in fp32; the query heads that share a key/value head attend in
        one product (no copied keys)."""
        import torch

        tokens, group = q.shape[2], self.heads // self.kv_heads
        grouped = (q[0] * scale).reshape(self.kv_heads, group * tokens, self.head_dim)
        scores = torch.matmul(grouped, k[0].transpose(-1, -2)).view(self.kv_heads, group, tokens, tokens)
        weights = torch.softmax(scores.float().add_(mask), dim=-1)
        out = torch.matmul(weights.to(v.dtype).view(self.kv_heads, group * tokens, tokens), v[0])
        return out.view(1, self.heads, tokens, self.head_dim)

    def _step(self, cache: _Slots, tokens: Any, positions: Any) -> Any:
        """One token for each of the first len(tokens) slots, at its own position; the greedy next tokens."""
        import torch

        rows = tokens.shape[0]
        span = cache.values[0].shape[2]
        group = self.heads // self.kv_heads
        # Each row sees its own cache up to and including the new token, and in a layer with a window
        # only its last `window` positions: one bias (0 or -inf) per window, (rows, 1, 1, span).
        behind = positions.unsqueeze(1) - torch.arange(span).unsqueeze(0)  # (rows, span): new token - key
        bias = {window: torch.zeros((rows, 1, 1, span), dtype=self.dtype).masked_fill_(
                    ((behind < 0) if window is None else (behind < 0) | (behind >= window))[:, None, None],
                    float("-inf"))
                for window in set(self.windows)}
        x = self.inner.embed_tokens(tokens.unsqueeze(1))
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
            scores = torch.matmul(grouped, keys).add_(bias[self.windows[index]])
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
            return torch.matmul(weights, values).view(rows, self.heads, 1, self.head_dim)

        x = self._layers(x, positions.unsqueeze(1), write, attend)
        # argmax over bf16 logits is not vectorised on CPU (2.8 ms for 32 x 49,152; 0.6 ms as fp32).
        return self.lm_head(self.inner.norm(x[:, 0])).float().argmax(-1)

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
        # Free slots wait until a quarter of them are free, then refill in one prefill: a decode step
        # costs about the same at 24 rows as at 32, while one prefill of 8 prompts runs the linear
        # layers on ~2,000 rows at a time instead of ~250.
        refill_at = max(1, slots // 4)
        stops = set(stop_ids)
        longest = max(len(row) for row in prompts) + max_new_tokens
        cache = _Slots(len(self.inner.layers), slots, self.kv_heads, longest, self.head_dim, self.dtype)
        answers: list[list[int]] = [[] for _ in prompts]
        queue = list(range(len(prompts)))[::-1]  # pop() takes them in input order
        queued_longest = list(accumulate((len(prompts[i]) for i in queue), max))  # over queue[:k + 1]
        # The live slots are always 0..live-1: a finished answer's slot gets the last live slot's
        # cache, so the decode step never computes a dead row.
        owner: list[int] = []      # prompt index held by each live slot
        position: list[int] = []   # where each live slot's next token goes

        def finished(index: int, token: int) -> bool:
            if token in stops:
                return True
            answers[index].append(token)
            return len(answers[index]) >= max_new_tokens

        def done(index: int) -> None:
            if on_done:
                on_done(index)

        def admit() -> None:
            """Prefill queued prompts into the free slots, PREFILL_TOKENS at a time, until they are full."""
            while queue and len(owner) < slots:
                batch, tokens = [], 0
                while queue and len(owner) + len(batch) < slots:
                    if batch and tokens + len(prompts[queue[-1]]) > PREFILL_TOKENS:
                        break
                    batch.append(queue.pop())
                    tokens += len(prompts[batch[-1]])
                first = len(owner)
                tokens_out = self._prefill(cache, list(range(first, first + len(batch))), [prompts[i] for i in batch])
                for offset, (index, token) in enumerate(zip(batch, tokens_out)):
                    if finished(index, token):  # stopped at its first token: its slot stays free
                        done(index)
                        continue
                    if first + offset != len(owner):
                        cache.move(first + offset, len(owner), len(prompts[index]))
                    owner.append(index)
                    position.append(len(prompts[index]))

        with torch.inference_mode():
            admit()
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
                    done(index)
                    # The last live slot moves into the hole (and is looked at next).
                    tail = len(owner) - 1
                    if slot != tail:
                        cache.move(tail, slot, position[tail])
                        owner[slot], position[slot], next_tokens[slot] = owner[tail], position[tail], next_tokens[tail]
                    owner.pop()
                    position.pop()
                if queue and slots - len(owner) >= min(refill_at, len(queue)):
                    admit()
                # What any slot can still reach: the longest live or queued prompt plus its answer.
                needed = max([len(prompts[i]) for i in owner] + [queued_longest[len(queue) - 1]] * bool(queue),
                             default=0) + max_new_tokens
                if needed <= cache.length * 3 // 4:
                    cache.shrink(needed)
        return answers
