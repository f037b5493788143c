"""Shared-prefix ("tree") packing for multiple-choice log-likelihoods of decoder-only models.

One segment is a context followed by the tokens of every option that continues it:
[context, option_1[:-1], option_2[:-1], ...]. Each option sees its context and its own earlier tokens
only (a 4D attention mask) and its positions continue at the context's length, so the context runs
once per item and no option pays for another's padding. The last context token's logits predict
every option's first token; an option's last token is never fed, since it predicts nothing scored.
Segments are packed first-fit into rows of about `row_tokens`, rows of similar length share a
forward pass up to `batch_tokens`, and the vocabulary projection runs at scored positions only.

Left out: encoding (choice.py decides the tokens), encoder-decoder models (choice.py batches
them), attention kernels that take no 4D mask (flash-attention) and sliding-window models whose
window is shorter than an item: every option then runs as its own padded row, context repeated,
under a 2D mask that transformers turns into its own causal (or sliding) mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Segment:
    """A context and the options scored after it; `requests[k]` is the output slot of option k."""

    context: list[int]
    options: list[list[int]]
    requests: list[int]
    item: int

    @property
    def length(self) -> int:
        return len(self.context) + sum(max(len(option) - 1, 0) for option in self.options)


def build_segments(items: list[tuple[list[list[int]], list[list[int]]]], row_tokens: int, *,
                   share_context: bool = True) -> list[Segment]:
    """Group each item's options by identical context ids into segments of at most ~`row_tokens`.

    Args:
        items: per item, (context ids per option, continuation ids per option).
        row_tokens: a segment grows past this only to hold its context and one option.
        share_context: False gives every option its own segment (a plain causal sequence).

    Returns:
        Segments; request slots count the options of all items in order (item 0's options first).

    Example:
        >>> [(s.context, s.options, s.requests) for s in build_segments([([[1, 2], [1, 2]], [[3], [4, 5]])], 64)]
        [([1, 2], [[3], [4, 5]], [0, 1])]
    """
    segments: list[Segment] = []
    request = 0
    for item, (contexts, options) in enumerate(items):
        open_by_context: dict[tuple[int, ...], Segment] = {}
        for context, option in zip(contexts, options):
            request += 1
            if not option:
                continue  # nothing to score: its slot keeps 0
            key = tuple(context)
            segment = open_by_context.get(key) if share_context else None
            if segment is None or segment.length + max(len(option) - 1, 0) > row_tokens:
                # Options whose tokenized context differs, or that would overflow the row, get a new copy.
                segment = Segment(list(context), [], [], item)
                segments.append(segment)
                open_by_context[key] = segment
            segment.options.append(list(option))
            segment.requests.append(request - 1)
    return segments


def pack_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """First-fit-decreasing: segment indices per row, each row's total at most max(row_tokens, its longest).

    Example:
        >>> pack_rows([5, 3, 2, 4], 8)
        [[0, 1], [3, 2]]
    """
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for row, room in enumerate(free):
            if lengths[index] <= room:
                rows[row].append(index)
                free[row] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(max(row_tokens - lengths[index], 0))
    return rows


def _row_batches(row_lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Rows sorted by length, grouped so that rows x longest row stays within batch_tokens."""
    batches: list[list[int]] = []
    for index in sorted(range(len(row_lengths)), key=lambda i: -row_lengths[i]):
        # Descending order: the first row of a batch is its longest, so it sets the width.
        if batches and (len(batches[-1]) + 1) * row_lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def _layout(segments: list[Segment], rows: list[list[int]]):
    """Tensors of one forward pass. Returns input_ids, position_ids, seg, branch (B, W) and the
    scored (flat position, target token, request slot) triples."""
    import torch

    width = max(sum(segments[s].length for s in row) for row in rows)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding
    branch = torch.zeros((len(rows), width), dtype=torch.long)  # 0: context, k + 1: option k
    flat, targets, slots = [], [], []
    for b, row in enumerate(rows):
        offset = 0
        for s in row:
            segment = segments[s]
            n_context = len(segment.context)
            span = slice(offset, offset + n_context)
            input_ids[b, span] = torch.tensor(segment.context)
            positions[b, span] = torch.arange(n_context)
            seg[b, span] = s
            last_context = b * width + offset + n_context - 1
            offset += n_context
            for k, (option, slot) in enumerate(zip(segment.options, segment.requests)):
                fed = option[:-1]
                span = slice(offset, offset + len(fed))
                input_ids[b, span] = torch.tensor(fed, dtype=torch.long)
                positions[b, span] = n_context + torch.arange(len(fed))
                seg[b, span], branch[b, span] = s, k + 1
                # Token j of the option is predicted at the context's last position (j = 0) or at fed token j - 1.
                flat.extend([last_context] + [b * width + offset + j for j in range(len(fed))])
                targets.extend(option)
                slots.extend([slot] * len(option))
                offset += len(fed)
    return input_ids, positions, seg, branch, flat, targets, slots


def tree_mask(seg, branch, dtype):
    """Additive (B, 1, W, W) mask: query q sees key k <= q of its segment, if k is context or q's option."""
    import torch

    order = torch.arange(seg.shape[1])
    allowed = (
        (seg[:, :, None] == seg[:, None, :])
        & (order[:, None] >= order[None, :])
        & ((branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :]))
    )
    # A finite minimum, not -inf: padding queries see only padding and must not turn into NaN.
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _accepts_4d_mask(model: Any) -> bool:
    return str(getattr(model.config, "_attn_implementation", "sdpa")) in ("sdpa", "eager")


def _tree_is_exact(model: Any, items: list[tuple[list[list[int]], list[list[int]]]]) -> bool:
    """A 4D mask reaches every layer as is: right for full attention, and for a sliding window only
    when no option sits further from its context's first token than the window."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "sliding_window", None)
    longest = max((len(c) + len(o) for contexts, options in items for c, o in zip(contexts, options)), default=0)
    return _accepts_4d_mask(model) and (not isinstance(window, int) or longest <= window)


def score_packed(
    model: Any,
    items: list[tuple[list[list[int]], list[list[int]]]],
    *,
    row_tokens: int = 256,
    batch_tokens: int = 2048,
    on_items_done: Callable[[int], None] | None = None,
) -> list[float]:
    """Summed log-probability of every option's continuation tokens after its context, tree-packed.

    Args:
        model: a transformers decoder-only LM (PEFT-wrapped is fine), in eval mode.
        items: per item, (context ids per option, continuation ids per option).
        row_tokens: segments per row are packed up to this many tokens; longer rows pay attention on
            the whole row (quadratic), shorter ones fill less.
        batch_tokens: rows x width of one forward pass (its logits: scored tokens x vocabulary floats).
        on_items_done: called with the number of items whose every option is scored, after each pass.

    Returns:
        One float per option, items in order and their options in order; an empty continuation scores 0.

    Example:
        >>> score_packed(model, [([[1, 2], [1, 2]], [[3], [4, 5]])])   # two options after context [1, 2]
        [-6.21, -12.87]
    """
    import torch

    share = _tree_is_exact(model, items)
    segments = build_segments(items, row_tokens, share_context=share)
    rows = pack_rows([s.length for s in segments], row_tokens if share else 0)
    row_lengths = [sum(segments[s].length for s in row) for row in rows]
    pending = [0] * len(items)
    for segment in segments:
        pending[segment.item] += 1
    if on_items_done is not None and pending.count(0):
        on_items_done(pending.count(0))  # items whose options are all empty
    sums = torch.zeros(sum(len(options) for _, options in items), dtype=torch.float64)
    device, dtype = model.device, model.dtype
    for batch in _row_batches(row_lengths, batch_tokens):
        batch_rows = [rows[r] for r in batch]
        input_ids, positions, seg, branch, flat, targets, slots = _layout(segments, batch_rows)
        if share:
            attention_mask = tree_mask(seg, branch, dtype if dtype.is_floating_point else torch.float32)
        else:
            attention_mask = (seg >= 0).long()  # (B, W): one option per row, right-padded
        keep = torch.zeros(input_ids.numel(), dtype=torch.bool)
        keep[flat] = True
        # Index of each scored position among the kept ones (logits come back flattened, row-major).
        kept_index = (keep.cumsum(0) - 1)[flat]
        out = model(
            input_ids=input_ids.to(device), position_ids=positions.to(device),
            attention_mask=attention_mask.to(device), logits_to_keep=keep.view_as(input_ids).to(device),
            use_cache=False,
        )
        logits = out.logits.reshape(-1, out.logits.shape[-1]).float()  # (N kept, V)
        kept_index, targets = kept_index.to(device), torch.tensor(targets, dtype=torch.long, device=device)
        # gather - logsumexp: the log-softmax of each target only, without a second (N, V) tensor.
        picked = logits[kept_index, targets] - logits.logsumexp(-1)[kept_index]
        sums.index_add_(0, torch.tensor(slots), picked.double().cpu())
        done = 0
        for row in batch_rows:
            for s in row:
                pending[segments[s].item] -= 1
                done += pending[segments[s].item] == 0
        if on_items_done is not None:
            on_items_done(done)
    return sums.tolist()
