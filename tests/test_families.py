"""Model families: the one module per architecture that instructune's own code runs, and what falls back without one."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

import tiny
from instructune.models import llama as llama_family
from instructune.models.families import FAMILIES, engine_unsupported_reason, fallbacks, family_of


class TestFamilyOf:
    @pytest.mark.parametrize("config", [LlamaConfig(), MistralConfig(sliding_window=None), Qwen2Config()])
    def test_llama_style_layers_are_the_llama_family(self, config):
        assert family_of(config) is llama_family and fallbacks(config) == []

    def test_gemma3_text_is_the_gemma3_family_and_the_multimodal_gemma3_is_none(self):
        from transformers import Gemma3Config, Gemma3TextConfig

        from instructune.models import gemma3 as gemma_family

        assert family_of(Gemma3TextConfig()) is gemma_family and fallbacks(Gemma3TextConfig()) == []
        assert family_of(Gemma3Config()) is None  # a vision tower in front: transformers runs it

    def test_every_family_has_what_the_engines_call(self):
        for family in set(FAMILIES.values()):
            for name in ("NAME", "MODEL_TYPES", "engine_unsupported_reason", "dims", "attention_windows",
                         "rotary_tables", "decoder_layer"):
                assert hasattr(family, name), (family.NAME, name)

    def test_a_model_of_no_family_says_what_falls_back(self):
        config = GPT2Config()
        assert family_of(config) is None
        assert fallbacks(config) == [f"generation on Hugging Face generate (instructune's engines cover "
                                     f"{', '.join(sorted(FAMILIES))})", "no GGUF export"]

    def test_loading_a_model_of_no_family_says_once_what_falls_back(self, tokenizer, tmp_path, capsys, monkeypatch):
        from instructune import models

        monkeypatch.setattr(models, "_SAID_FALLBACKS", set())
        folder = tmp_path / "t5"
        tiny.make_t5(tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        models.load_model(folder)
        models.load_model(folder)
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("model:")]
        assert said == ["model: 't5' has no family module in instructune, so it runs with "
                        + "; ".join(fallbacks(models.load_model_config(folder)))]

    def test_loading_a_known_family_says_nothing(self, tiny_llama_dir, capsys):
        from instructune import models

        models.load_model(tiny_llama_dir)
        assert "model:" not in capsys.readouterr().err

    def test_engine_eligibility_is_checked_in_one_place(self, tokenizer, llama):
        assert engine_unsupported_reason(llama) is None
        assert engine_unsupported_reason(tiny.make_t5(tokenizer)) == "encoder-decoder models use Hugging Face generate"
        assert "sliding-window" in llama_family.engine_unsupported_reason(MistralConfig(sliding_window=64))


class TestDecoderLayer:
    def test_equals_transformers_own_layer_with_causal_attention(self, llama):
        # The layer instructune's engines run and trace, with plain causal SDPA as its attention, against
        # transformers' LlamaDecoderLayer on the same input.
        dims = llama_family.dims(llama.config)
        heads, kv_heads, _ = dims
        torch.manual_seed(0)
        x = torch.randn(2, 7, llama.config.hidden_size)
        positions = torch.arange(7).repeat(2, 1)
        cos, sin = llama.model.rotary_emb(x, positions)
        layer = llama.model.layers[0]

        def attend(q, k, v, scale):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=heads != kv_heads)

        with torch.no_grad():
            ours = llama_family.decoder_layer(layer, x, cos, sin, dims, attend)
            mask = torch.full((7, 7), float("-inf")).triu(1).expand(2, 1, 7, 7)
            theirs = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=(cos, sin))
            theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


class TestGgufTensors:
    def test_q_and_k_rows_are_permuted_for_llama_cpp_and_norms_stay(self, llama):
        config = llama.config
        q = llama.model.layers[0].self_attn.q_proj.weight.detach().numpy()
        permuted = llama_family.gguf_tensor("model.layers.0.self_attn.q_proj.weight", q, config)
        assert permuted.shape == q.shape and not (permuted == q).all()
        assert sorted(map(tuple, permuted.tolist())) == sorted(map(tuple, q.tolist()))  # the same rows, reordered
        norm = llama.model.norm.weight.detach().numpy()
        assert (llama_family.gguf_tensor("model.norm.weight", norm, config) == norm).all()

    def test_other_architectures_are_one_line(self):
        assert "supports the llama architecture" in llama_family.gguf_unsupported_reason(Qwen2Config())
        assert llama_family.gguf_unsupported_reason(LlamaConfig(architectures=["LlamaForCausalLM"])) is None
