"""A tiny randomly initialised Gemma 3 text model, shaped so that what sets Gemma apart shows in a test.

Gemma 3 270M has 18 layers (every 6th global, the rest sliding-window local with their own RoPE base),
4 query heads over 1 key/value head of 256 dims, a window of 512 and 262,144 tokens. Here: 3 layers
(local, global, local), 4 heads over 1 KV head, a window of 8 so that prompts of 20-40 tokens run past
it, `query_pre_attn_scalar` unlike the head dim (so the attention scale is not 1/sqrt(head dim)), norm
weights moved off zero (Gemma's RMSNorm multiplies by 1 + weight), and a vocabulary larger than the
tokenizer's (ids the tokenizer never writes still get logits), tied to the embeddings as in the real one.
"""

from transformers import Gemma3ForCausalLM, Gemma3TextConfig

SLIDING_WINDOW = 8
LAYER_TYPES = ("sliding_attention", "full_attention", "sliding_attention")


def make_gemma3(tokenizer, seed: int = 0, *, vocab_size: int = 4096, hidden_size: int = 32,
                sliding_window: int = SLIDING_WINDOW, layer_types: tuple[str, ...] = LAYER_TYPES,
                query_pre_attn_scalar: int = 24) -> Gemma3ForCausalLM:
    """A tiny Gemma3ForCausalLM for `tokenizer` (tests/tiny.py's), SDPA attention, in eval mode."""
    import torch

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=max(vocab_size, len(tokenizer)), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=len(layer_types), layer_types=list(layer_types), num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=query_pre_attn_scalar, sliding_window=sliding_window,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, attn_implementation="sdpa",
    )
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):  # zero at init: (1 + weight) would hide a plain-weight bug
                parameter.normal_(0, 0.3)
    return model.eval()
