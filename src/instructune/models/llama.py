"""The Llama family: what instructune's own engines and the GGUF export need to know of Llama-style layers.

Llama, SmolLM/SmolLM2, TinyLlama, Mistral (no sliding window in reach) and Qwen2 (attention biases)
share one decoder layer: RMSNorm, rotary attention with grouped key/value heads, a SiLU-gated MLP,
two residual adds. This file is the one place that layer is written out for code that runs it
outside transformers' own forward: the native engine (generation/native.py) and the OpenVINO trace
(generation/openvino_engine.py) call `decoder_layer` with an attention function of their own, the
rotary tables of `rotary_tables` and the windows of `attention_windows` (every family has these three;
here one table serves every layer and no layer has a window). It also holds the GGUF side: llama.cpp's `llama` architecture, its hyperparameter keys, the q/k row
order its rotary kernel expects, and the norm convention (weights stored as they are). What it
leaves out: the engines' caches and loops, the GGUF writer and tokenizer (export/), other families
(one module each beside this one, registered in models/families.py).
"""

from __future__ import annotations

from typing import Any, Callable

NAME = "llama"
# transformers model types whose layers are Llama's, as the engines run them.
MODEL_TYPES = ("llama", "mistral", "qwen2")
# llama.cpp's `llama` architecture reads these models; its GGUF tokenizer kind is byte-level BPE ("gpt2").
GGUF_ARCHITECTURES = ("LlamaForCausalLM",)
GGUF_TOKENIZER = "gpt2"
# The chat template to use when a model folder has none: Llama models ship their own.
CHAT_TEMPLATE = None


def engine_unsupported_reason(config: Any) -> str | None:
    """Why instructune's engines cannot run this Llama-family config as written here, or None."""
    if getattr(config, "use_sliding_window", True) and getattr(config, "sliding_window", None):
        return "sliding-window attention is not implemented"
    return None


def embed(embedding: Any, lookup: Callable[[], Any]) -> Any | None:
    """The input embeddings as a plain `nn.Embedding` gives them, with `lookup()` as the table lookup;
    None for any other module (train/loss.py then lets the model embed its tokens itself)."""
    import torch

    return lookup() if type(embedding) is torch.nn.Embedding else None


def dims(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of the attention."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def attention_windows(config: Any) -> list[int | None]:
    """Per layer, how many positions a query sees at most (itself included): None, every earlier one.

    (A Mistral or Qwen2 config whose sliding window is in reach is refused by `engine_unsupported_reason`.)
    """
    return [None] * config.num_hidden_layers


def rotary_tables(inner: Any, x: Any, positions: Any) -> list[tuple[Any, Any]]:
    """Per layer, the (cos, sin) rotary tables for `positions` (rows, tokens): the same pair for every layer."""
    tables = inner.rotary_emb(x, positions)
    return [tables] * len(inner.layers)


def rotate(q: Any, k: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
    """Rotary position embedding on queries and keys, as transformers applies it."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb(q, k, cos, sin)


def decoder_layer(layer: Any, x: Any, cos: Any, sin: Any, config_dims: tuple[int, int, int],
                  attend: Callable[[Any, Any, Any, float], Any]) -> Any:
    """One decoder layer over hidden states x (rows, tokens, hidden), attention left to `attend`.

    Args:
        layer: a transformers Llama-style decoder layer (its modules run as they are, LoRA included).
        cos, sin: the rotary tables for x's positions (`rotary_tables(...)[index]`).
        config_dims: `dims(config)`.
        attend: (q, k, v, scale) -> (rows, heads, tokens, head dim), with q as (rows, heads, tokens,
            head dim) and k, v as (rows, kv heads, tokens, head dim), already rotated; it reads and
            writes whatever cache the caller keeps.

    Returns:
        The layer's output hidden states, (rows, tokens, hidden).
    """
    attention = layer.self_attn
    q, k, v = project_qkv(attention, layer.input_layernorm(x), config_dims)
    q, k = rotate(q, k, cos, sin)
    out = attend(q, k, v, attention.scaling)
    x = x + attention.o_proj(out.transpose(1, 2).flatten(2))  # (rows, tokens, heads * head dim)
    return x + layer.mlp(layer.post_attention_layernorm(x))


def project_qkv(attention: Any, h: Any, config_dims: tuple[int, int, int]) -> tuple[Any, Any, Any]:
    """Queries (rows, heads, tokens, head dim), keys and values (rows, kv heads, tokens, head dim) of normed
    hidden states h (rows, tokens, hidden), through the attention module's own projections."""
    heads, kv_heads, head_dim = config_dims
    rows, tokens, _ = h.shape
    q = attention.q_proj(h).view(rows, tokens, heads, head_dim).transpose(1, 2)
    k = attention.k_proj(h).view(rows, tokens, kv_heads, head_dim).transpose(1, 2)
    v = attention.v_proj(h).view(rows, tokens, kv_heads, head_dim).transpose(1, 2)
    return q, k, v


# ---- GGUF (llama.cpp's `llama` architecture) ----

def _rope_parameters(config: Any) -> dict:
    # transformers 5 keeps theta and scaling in `rope_parameters`; older configs in rope_theta/rope_scaling.
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def gguf_unsupported_reason(config: Any) -> str | None:
    """Why llama.cpp's `llama` architecture would run this model wrongly, or None."""
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "model_type", None) != "llama" or not set(archs) <= set(GGUF_ARCHITECTURES):
        return (f"GGUF export supports the llama architecture ({', '.join(GGUF_ARCHITECTURES)}, e.g. SmolLM2, "
                f"TinyLlama); this model is {config.model_type!r} {archs}")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        return f"GGUF export supports default or linear RoPE; this model uses {rope['rope_type']!r}"
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            return f"GGUF export does not support {flag}=true Llama models"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"GGUF export supports hidden_act 'silu'; this model uses {config.hidden_act!r}"
    return None


def gguf_arch() -> Any:
    import gguf

    return gguf.MODEL_ARCH.LLAMA


def add_gguf_dimensions(writer: Any, config: Any, kv_heads: int) -> None:
    """The `ARCH.*` sizes every llama.cpp decoder reads: layers, context, widths, head counts (Gemma 3's too)."""
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(kv_heads)


def add_gguf_hyperparameters(writer: Any, config: Any) -> None:
    """The `llama.*` keys llama.cpp reads to build the graph (names as its converter writes them)."""
    _, kv_heads, head_dim = dims(config)
    add_gguf_dimensions(writer, config, kv_heads)
    rope = _rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope.get("rope_type") == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def permute_for_rope(weight: Any, n_heads: int) -> Any:
    """Reorder a q or k projection's rows from transformers' rotary layout to llama.cpp's.

    transformers rotates the first half of each head's dimensions against the second half; llama.cpp
    rotates neighbouring pairs (0,1), (2,3)... So within each head, row i of the first half and row i of
    the second half become rows 2i and 2i+1. llama.cpp's converter does the same (`permute`).
    """
    rows, cols = weight.shape  # (n_heads * head_dim, hidden)
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def gguf_tensor(name: str, data: Any, config: Any) -> Any:
    """A weight (numpy, fp32) as llama.cpp stores it: q/k rows permuted; norms and the rest as they are."""
    heads, kv_heads, _ = dims(config)
    if name.endswith("q_proj.weight"):
        return permute_for_rope(data, heads)
    if name.endswith("k_proj.weight"):
        return permute_for_rope(data, kv_heads)
    return data
