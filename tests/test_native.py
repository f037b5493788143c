"""The native engine: float32 greedy answers equal Hugging Face `generate`'s token for token (Llama and
Qwen2 layers, LoRA-wrapped too), continuous batching refills and compacts slots without changing any
answer, bfloat16 leaves the caller's model untouched, and what the engine cannot take is named."""

import pytest
import torch

import tiny
from instructune.errors import InstructuneError
from instructune.generation.native import NativeDecoder, _Slots, unsupported_reason
from instructune.generation.generate import encode_prompt, generate, stop_token_ids
from test_generate import _chatty, assert_greedy_equal_with_early_stops, hf_greedy_ids, lora_with_effect

PROMPTS = [
    "Hi", "Where is my order? I want a refund for my purchase", "How do I reset", "abc " * 20,
    "Summarize the dialogue. #Person1#: Hello, how are you? #Person2#: I am fine, thank you.",
    "The quick brown fox", "Question: which option is correct? Answer:", "0123456789",
]


def _native_ids(model, tokenizer, prompts, max_new_tokens, slots, compute_type="float32", on_done=None,
                stop_ids=None):
    rows = [encode_prompt(model, tokenizer, p) for p in prompts]
    decoder = NativeDecoder(model, compute_type)
    return decoder.generate(rows, max_new_tokens=max_new_tokens, stop_ids=stop_ids or stop_token_ids(model, tokenizer),
                            slots=slots, on_done=on_done)


def _qwen2(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, use_sliding_window=False,
    )
    return Qwen2ForCausalLM(config)


class TestGreedyEquality:
    @pytest.mark.parametrize("slots", [1, 3, 8])
    def test_float32_ids_equal_hf_generate_token_for_token(self, llama, tokenizer, slots):
        # 3 slots for 8 prompts: answers stop at different steps, so slots are refilled and compacted.
        model = _chatty(llama)
        assert_greedy_equal_with_early_stops(model, tokenizer, PROMPTS,
                                             lambda stop_ids: _native_ids(model, tokenizer, PROMPTS, 24, slots, stop_ids=stop_ids))

    def test_qwen2_layers_with_attention_bias(self, tokenizer):
        model = _chatty(_qwen2(tokenizer))
        assert model.model.layers[0].self_attn.q_proj.bias is not None
        got = _native_ids(model, tokenizer, PROMPTS, 16, 3)
        assert got == [hf_greedy_ids(model, tokenizer, p, 16) for p in PROMPTS]

    def test_lora_model_decodes_through_its_adapters_and_is_left_unchanged(self, llama, tokenizer):
        model = lora_with_effect(_chatty(llama))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        hf = generate(model, tokenizer, PROMPTS, max_new_tokens=12, progress=False, engine="hf")
        native = generate(model, tokenizer, PROMPTS, max_new_tokens=12, progress=False, engine="native")
        bf16 = generate(model, tokenizer, PROMPTS, max_new_tokens=12, progress=False, engine="native",
                        compute_type="bfloat16")
        assert native == hf
        after = dict(model.named_parameters())
        assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)
        assert after["base_model.model.lm_head.weight"].dtype == torch.float32
        with model.disable_adapter():
            base = generate(model, tokenizer, PROMPTS, max_new_tokens=12, progress=False, engine="native")
        assert base != hf  # the adapters changed the answers, so the engine ran them
        assert len(bf16) == len(PROMPTS)

    def test_bfloat16_follows_hf_generate_on_the_same_bf16_weights(self, llama, tokenizer):
        # Not bit-equal (bf16 rounds in another order), but the same model: most answers agree.
        model = _chatty(llama)
        got = _native_ids(model, tokenizer, PROMPTS, 12, 4, compute_type="bfloat16")
        reference = _chatty(tiny.make_llama(tokenizer)).to(torch.bfloat16)
        expected = [hf_greedy_ids(reference, tokenizer, p, 12) for p in PROMPTS]
        first_tokens_equal = sum(a[:1] == b[:1] for a, b in zip(got, expected))
        assert first_tokens_equal >= 6, (got, expected)
        assert next(model.parameters()).dtype == torch.float32


class TestSlots:
    def test_each_answer_is_reported_done_once_and_single_token_caps_work(self, llama, tokenizer):
        model = _chatty(llama)
        done = []
        got = _native_ids(model, tokenizer, PROMPTS, 1, 3, on_done=done.append)
        assert sorted(done) == list(range(len(PROMPTS)))
        assert got == [hf_greedy_ids(model, tokenizer, p, 1) for p in PROMPTS]

    def test_a_prompt_that_stops_at_once_gives_an_empty_answer(self, llama, tokenizer):
        model = _chatty(llama)
        stop = stop_token_ids(model, tokenizer)[0]
        head = model.lm_head  # a bias that makes the stop token the argmax everywhere
        model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        with torch.no_grad():
            model.lm_head.weight.copy_(head.weight)
            model.lm_head.bias.zero_()
            model.lm_head.bias[stop] = 1e4
        rows = [encode_prompt(model, tokenizer, p) for p in PROMPTS[:3]]
        assert NativeDecoder(model).generate(rows, max_new_tokens=8, stop_ids=[stop], slots=2) == [[], [], []]


    def test_prompts_prefilled_together_equal_each_prefilled_alone(self, llama, tokenizer):
        """One prefill of several prompts end to end: the same first tokens and cache as one at a time."""
        model = _chatty(llama)
        decoder = NativeDecoder(model)
        rows = [encode_prompt(model, tokenizer, p) for p in PROMPTS[:4]]
        longest = max(map(len, rows))
        shape = (len(model.model.layers), 4, decoder.kv_heads, longest, decoder.head_dim, torch.float32)
        together, alone = _Slots(*shape), _Slots(*shape)
        with torch.inference_mode():
            first = decoder._prefill(together, [0, 1, 2, 3], rows)
            assert first == [decoder._prefill(alone, [slot], [row])[0] for slot, row in enumerate(rows)]
        for a, b in zip(together.keys + together.values, alone.keys + alone.values):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bfloat16_prefill_attention_equals_sdpa(llama):
    """The matmul attention of bf16 prefill (grouped query heads, fp32 softmax) is causal SDPA's."""
    decoder = NativeDecoder(llama)
    torch.manual_seed(0)
    tokens = 9
    q = torch.randn(1, decoder.heads, tokens, decoder.head_dim)
    k, v = (torch.randn(1, decoder.kv_heads, tokens, decoder.head_dim) for _ in range(2))
    mask = torch.full((tokens, tokens), float("-inf")).triu_(1)
    got = decoder._causal_attention(q, k, v, scale=0.125, mask=mask)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.125, enable_gqa=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_bfloat16_prefill_attention_within_a_window_equals_sdpa_with_a_banded_mask(tokenizer):
    """Where a prompt is longer than a layer's window, the bf16 prefill's matmul attention sees each query's
    last `window` positions only (itself included), as transformers' sliding-window mask has it."""
    from tiny_gemma import make_gemma3

    decoder = NativeDecoder(make_gemma3(tokenizer), "bfloat16")
    torch.manual_seed(0)
    tokens, window = 12, 5
    q = torch.randn(1, decoder.heads, tokens, decoder.head_dim)
    k, v = (torch.randn(1, decoder.kv_heads, tokens, decoder.head_dim) for _ in range(2))
    distance = torch.arange(tokens).view(-1, 1) - torch.arange(tokens).view(1, -1)
    band = (distance >= 0) & (distance < window)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(decoder._prefill_attention(tokens, window)(q, k, v, scale=0.25), expected,
                               atol=1e-5, rtol=1e-5)
    causal = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(decoder._prefill_attention(tokens, tokens)(q, k, v, scale=0.25), causal,
                               atol=1e-5, rtol=1e-5)


class TestCoverage:
    def test_t5_is_named_and_auto_falls_back_to_hf(self, tokenizer):
        t5 = tiny.make_t5(tokenizer).eval()
        assert unsupported_reason(t5) == "encoder-decoder models use Hugging Face generate"
        with pytest.raises(InstructuneError, match="engine 'native' cannot run here: encoder-decoder"):
            generate(t5, tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False, engine="native")
        assert generate(t5, tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False) == generate(
            t5, tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False, engine="hf")

    def test_unknown_compute_type_is_one_line(self, llama):
        with pytest.raises(InstructuneError, match="compute_type 'int4'; expected one of float32, bfloat16"):
            NativeDecoder(llama, "int4")


def test_packed_bf16_linears_give_the_plain_layers_numbers(llama):
    """The bf16 decoding copy's linear weights, laid out once for oneDNN, compute what F.linear does."""
    import copy

    from instructune.generation.native import _pack_linears

    plain = copy.deepcopy(llama).to(torch.bfloat16).eval()
    packed = copy.deepcopy(plain)
    if _pack_linears(packed) == 0:
        pytest.skip("no oneDNN bf16 kernels on this CPU")
    ids = torch.randint(3, llama.config.vocab_size, (2, 11))
    with torch.inference_mode():
        assert torch.equal(packed(input_ids=ids).logits, plain(input_ids=ids).logits)
    assert torch.equal(packed.model.embed_tokens.weight, plain.model.embed_tokens.weight)
