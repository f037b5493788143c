"""The Gemma 3 family (text models): what instructune's own engines and the GGUF export need to know of Gemma 3.

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
soft-capping) and the chat template's text (models/chat_templates.py).

It also holds the GGUF side: llama.cpp's `gemma3` architecture, its hyperparameter keys, and the norm
convention (every RMSNorm weight stored as 1 + weight; q/k rows as they are, llama.cpp rotating them in
transformers' half-split layout). llama.cpp fixes the attention scale where transformers configures it
(`query_pre_attn_scalar`), so `gguf_unsupported_reason` refuses, in one line, a config llama.cpp would run
differently. The tokenizer side (SentencePiece-style vocabulary, scores, token types) is
export/gguf_tokenizer.py's.
"""

from __future__ import annotations

from typing import Any, Callable

from instructune.models.llama import add_gguf_dimensions, project_qkv

NAME = "gemma3"
# transformers' model type of the text-only Gemma3ForCausalLM (Gemma 3 270M and 1B are text-only).
MODEL_TYPES = ("gemma3_text",)
# The chat template a Gemma 3 base model (which ships none) trains and chats with: models/chat_templates.py's.
CHAT_TEMPLATE = "gemma"
SLIDING = "sliding_attention"
# llama.cpp's `gemma3` architecture reads these; its GGUF tokenizer kind is SentencePiece ("llama").
GGUF_ARCHITECTURES = ("Gemma3ForCausalLM",)
GGUF_TOKENIZER = "llama"


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


def embed(embedding: Any, lookup: Callable[[], Any]) -> Any | None:
    """Gemma 3's input embeddings as transformers computes them, with `lookup()` as the table lookup.

    `Gemma3TextScaledWordEmbedding.forward` multiplies the looked-up rows by sqrt(hidden), taken to
    the weight's dtype; train/loss.py calls this with its own lookup. None for any other module.
    """
    if type(embedding).__name__ != "Gemma3TextScaledWordEmbedding":
        return None
    return lookup() * embedding.embed_scale.to(embedding.weight.dtype)


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


# ---- GGUF (llama.cpp's `gemma3` architecture) ----

# llama.cpp's gemma3 loader (llama-model.cpp) makes every 6th layer global and the others sliding-window
# unless the file lists the layers (`attention.sliding_window_pattern`, read by the pinned xllamacpp),
# and scales attention by 1/sqrt(head dim), by 1/sqrt(hidden / heads) for its 62-layer 27B, with no key.
GGUF_LAYER_PATTERN = 6
GGUF_27B_LAYERS = 62


def _llama_cpp_layer_types(config: Any) -> list[str]:
    """The layer kinds llama.cpp's gemma3 assumes when a file does not list them."""
    return [SLIDING if i % GGUF_LAYER_PATTERN < GGUF_LAYER_PATTERN - 1 else "full_attention"
            for i in range(config.num_hidden_layers)]


def _rope(config: Any, kind: str) -> dict:
    """The RoPE parameters of one layer kind (transformers keeps one dict per kind in `rope_parameters`)."""
    rope = dict(config.rope_parameters[kind])
    rope.setdefault("rope_type", "default")
    return rope


def gguf_unsupported_reason(config: Any) -> str | None:
    """Why llama.cpp's `gemma3` architecture would run this model wrongly, or None.

    Example:
        >>> gguf_unsupported_reason(gemma_270m_config) is None
        True
        >>> gguf_unsupported_reason(Gemma3TextConfig(query_pre_attn_scalar=24, head_dim=16))
        "GGUF export: llama.cpp's gemma3 scales attention by 1/sqrt(16); this model's query_pre_attn_scalar is 24"
    """
    archs = getattr(config, "architectures", None) or ["Gemma3ForCausalLM"]
    if getattr(config, "model_type", None) not in MODEL_TYPES or not set(archs) <= set(GGUF_ARCHITECTURES):
        return f"GGUF export supports Gemma 3 text models ({', '.join(GGUF_ARCHITECTURES)}); this one is {archs}"
    reason = engine_unsupported_reason(config)  # soft-capping, bidirectional: llama.cpp's gemma3 has neither
    if reason is not None:
        return f"GGUF export: {reason}"
    if getattr(config, "attention_bias", False):
        return "GGUF export: llama.cpp's gemma3 has no attention biases"
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        return (f"GGUF export supports hidden_activation 'gelu_pytorch_tanh'; this model uses "
                f"{config.hidden_activation!r}")
    if SLIDING in config.layer_types and not config.sliding_window:
        return "GGUF export: sliding-window layers need config.sliding_window"
    heads, _, head_dim = dims(config)
    scalar = config.hidden_size // heads if config.num_hidden_layers == GGUF_27B_LAYERS else head_dim
    if config.query_pre_attn_scalar != scalar:
        return (f"GGUF export: llama.cpp's gemma3 scales attention by 1/sqrt({scalar}); this model's "
                f"query_pre_attn_scalar is {config.query_pre_attn_scalar}")
    local, full = _rope(config, SLIDING), _rope(config, "full_attention")
    if local["rope_type"] != "default":
        return (f"GGUF export: llama.cpp's gemma3 does not scale the sliding-window layers' RoPE; this model "
                f"uses {local}")
    if full["rope_type"] not in ("default", "linear"):
        return f"GGUF export supports default or linear RoPE on global layers; this model uses {full['rope_type']!r}"
    return None


def gguf_arch() -> Any:
    import gguf

    return gguf.MODEL_ARCH.GEMMA3


def add_gguf_hyperparameters(writer: Any, config: Any) -> None:
    """The `gemma3.*` keys llama.cpp reads to build the graph, as its converter (Gemma3Model) writes them.

    The layer list is written only for a model whose layers differ from llama.cpp's every-6th-global
    default (tiny test models): older llama.cpp builds ignore the key, so a standard Gemma 3 file carries
    what the converter writes. The attention scale has no key (`gguf_unsupported_reason`).
    """
    _, kv_heads, head_dim = dims(config)
    add_gguf_dimensions(writer, config, kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(head_dim)  # 256 in Gemma 3, not hidden / heads
    writer.add_value_length(head_dim)
    full = _rope(config, "full_attention")
    writer.add_rope_freq_base(float(full["rope_theta"]))  # the global layers' (1,000,000)
    writer.add_rope_freq_base_swa(float(_rope(config, SLIDING)["rope_theta"]))  # the local layers' (10,000)
    if full["rope_type"] == "linear":  # Gemma 3 4B and larger: global layers only, as llama.cpp applies it
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
    if config.sliding_window:
        writer.add_sliding_window(config.sliding_window)
    if list(config.layer_types) != _llama_cpp_layer_types(config):
        writer.add_sliding_window_pattern([kind == SLIDING for kind in config.layer_types])


def gguf_tensor(name: str, data: Any, config: Any) -> Any:
    """A weight (numpy, fp32) as llama.cpp stores it: every RMSNorm weight (q/k norms and post-norms included)
    as 1 + weight, since llama.cpp multiplies by the stored weight; projections as they are (llama.cpp
    rotates Gemma's q and k in transformers' half-split layout, NEOX style, so no row permutation)."""
    return data + 1.0 if name.endswith("norm.weight") else data
