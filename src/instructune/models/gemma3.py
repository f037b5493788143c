"""The Gemma 3 family (text models): what instructune's own engines need to know of Gemma 3's layers.

Gemma 3's decoder layer is not Llama's (models/llama.py), though it has the same projections:
- RMSNorm multiplies by (1 + weight), in fp32, and there are four per layer: before attention, after
  it (on the attention's output, before the residual add), before and after the MLP;
- queries and keys are RMS-normed per head (q_norm, k_norm) before the rotary embedding;
- attention scales by `query_pre_attn_scalar ** -0.5`, not by 1/sqrt(head dim);
- the MLP is gated with GELU (tanh approximation);
- most layers attend within a sliding window (a query sees itself and the `sliding_window - 1`
  positions before it), every 6th layer sees everything (`config.layer_types`), and the two kinds
  rotate with their own RoPE base (10,000 local, 1,000,000 global);
- the embeddings are scaled by sqrt(hidden), inside transformers' own embedding module
  (`Gemma3TextScaledWordEmbedding`), which the engines call as it is.
The engines (generation/native.py, generation/openvino_engine.py) run `decoder_layer` with their own
attention function, take each layer's rotary tables from `rotary_tables` and each layer's window from
`attention_windows`, the interface models/llama.py has too. What this file leaves out: the engines'
caches and masks, the multimodal Gemma 3 (`gemma3`, a vision tower in front), Gemma 2 (logit
soft-capping), GGUF (only a one-line refusal here) and the chat template (added beside this by their
owners).
"""

from __future__ import annotations

from typing import Any, Callable

from instructune.models.llama import project_qkv

NAME = "gemma3"
# transformers' model type of the text-only Gemma3ForCausalLM (Gemma 3 270M and 1B are text-only).
MODEL_TYPES = ("gemma3_text",)
# The chat template a Gemma 3 base model (which ships none) trains and chats with: models/chat_templates.py's.
CHAT_TEMPLATE = "gemma"
SLIDING = "sliding_attention"


def engine_unsupported_reason(config: Any) -> str | None:
    """Why instructune's engines cannot run this Gemma 3 config as written here, or None.

    Example:
        >>> engine_unsupported_reason(Gemma3TextConfig(attn_logit_softcapping=50.0))
        'attention logit soft-capping is not implemented'
    """
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping is not implemented"
    if getattr(config, "final_logit_softcapping", None):
        return "final logit soft-capping is not implemented"
    if getattr(config, "use_bidirectional_attention", False):
        return "bidirectional attention (an embedding model) has nothing to decode"
    return None


def dims(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of the attention (Gemma 3 270M: 4, 1, 256)."""
    return config.num_attention_heads, config.num_key_value_heads, config.head_dim


def attention_windows(config: Any) -> list[int | None]:
    """Per layer, how many positions a query sees at most (itself included), or None for every earlier one.

    Example:
        >>> attention_windows(gemma_270m_config)[:6]
        [512, 512, 512, 512, 512, None]
    """
    return [config.sliding_window if kind == SLIDING else None for kind in config.layer_types]


def rotary_tables(inner: Any, x: Any, positions: Any) -> list[tuple[Any, Any]]:
    """Per layer, the (cos, sin) rotary tables for `positions`: one pair per layer kind, each with its RoPE base.

    Args:
        inner: the decoder (`model.model`), whose `rotary_emb` holds both kinds' frequencies.
        x: hidden states, for the tables' dtype; positions: (rows, tokens).
    """
    kinds = inner.config.layer_types
    tables = {kind: inner.rotary_emb(x, positions, kind) for kind in set(kinds)}
    return [tables[kind] for kind in kinds]


def rotate(q: Any, k: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
    """Rotary position embedding on queries and keys, as transformers applies it to Gemma 3."""
    from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

    return apply_rotary_pos_emb(q, k, cos, sin)


def decoder_layer(layer: Any, x: Any, cos: Any, sin: Any, config_dims: tuple[int, int, int],
                  attend: Callable[[Any, Any, Any, float], Any]) -> Any:
    """One Gemma 3 decoder layer over hidden states x (rows, tokens, hidden), attention left to `attend`.

    Args:
        layer: a transformers Gemma3DecoderLayer (its modules run as they are, LoRA included).
        cos, sin: this layer's rotary tables (`rotary_tables(...)[index]`).
        config_dims: `dims(config)`.
        attend: (q, k, v, scale) -> (rows, heads, tokens, head dim), with q as (rows, heads, tokens,
            head dim) and k, v as (rows, kv heads, tokens, head dim), normed and rotated; it applies the
            layer's window (`attention_windows`) and reads and writes whatever cache the caller keeps.

    Returns:
        The layer's output hidden states, (rows, tokens, hidden).
    """
    attention = layer.self_attn
    q, k, v = project_qkv(attention, layer.input_layernorm(x), config_dims)  # the projections are Llama's
    q, k = rotate(attention.q_norm(q), attention.k_norm(k), cos, sin)  # RMSNorm per head, then RoPE
    out = attend(q, k, v, attention.scaling)  # scaling = query_pre_attn_scalar ** -0.5
    out = attention.o_proj(out.transpose(1, 2).flatten(2))  # (rows, tokens, heads * head dim)
    x = x + layer.post_attention_layernorm(out)
    return x + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))


def gguf_unsupported_reason(config: Any) -> str | None:
    """GGUF export refuses Gemma 3 in one line until this module has its GGUF side (llama.cpp's `gemma3`
    architecture, names and norm convention), which its owner adds in place of this function."""
    return (f"GGUF export does not support Gemma 3 yet ({getattr(config, 'model_type', None)!r}); "
            "export a merged model folder instead")
