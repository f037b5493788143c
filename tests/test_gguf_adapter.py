"""`export --gguf-adapter`: llama.cpp's LoRA GGUF format, checked without llama.cpp against the base export.

The reference is our own base export (export/gguf.py): for every adapted matrix, the merged model's
GGUF tensor minus the base model's GGUF tensor must equal what llama.cpp adds at run time,
alpha / rank x B A, with A and B read back from the adapter file. That checks names, shapes, the q/k
row permutation and the scaling together. tests/test_llamacpp.py runs the files in llama.cpp itself.
"""

import json

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from instructune.errors import InstructuneError
from instructune.export.gguf import write_gguf
from instructune.export.gguf_adapter import export_gguf_adapter, write_gguf_adapter
from instructune.models.llama import permute_for_rope

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_NAMES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def peft_model(folder, seed: int = 1, **config):
    base = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(seed)
    return get_peft_model(base, LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": PROJECTIONS,
                                              "init_lora_weights": False, **config}))


def tensors(path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file, dequantized to fp32, in numpy's (rows, cols) layout."""
    reader = gguf.GGUFReader(path)
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
            for t in reader.tensors}


def field(path, key):
    return gguf.GGUFReader(path).fields[key].contents()


def assert_delta_matches(wrapped, tokenizer, adapter_file, tmp_path, atol=1e-5):
    """merged GGUF - base GGUF == alpha / rank * B @ A from the adapter file, for every adapted tensor."""
    import copy

    base = write_gguf(copy.deepcopy(wrapped).unload(), tokenizer, tmp_path / "base.gguf", "f32")
    merged = write_gguf(copy.deepcopy(wrapped).merge_and_unload(), tokenizer, tmp_path / "merged.gguf", "f32")
    base_t, merged_t, lora = tensors(base), tensors(merged), tensors(adapter_file)
    alpha = float(field(adapter_file, "adapter.lora.alpha"))
    adapted = sorted(name[: -len(".lora_a")] for name in lora if name.endswith(".lora_a"))
    assert adapted and all(name + ".lora_b" in lora for name in adapted)
    for name in adapted:
        a, b = lora[name + ".lora_a"], lora[name + ".lora_b"]  # (r, in), (out, r)
        rank = b.shape[1]  # llama.cpp reads the rank from B
        np.testing.assert_allclose(merged_t[name] - base_t[name], alpha / rank * b @ a, atol=atol, err_msg=name)
    changed = {name for name in base_t if not np.array_equal(base_t[name], merged_t[name])}
    assert changed == set(adapted)  # and nothing else differs


class TestWriteGgufAdapter:
    def test_keys_names_and_shapes_are_llama_cpps(self, tiny_llama_dir, tmp_path):
        wrapped = peft_model(tiny_llama_dir)
        wrapped.save_pretrained(tmp_path / "adapter")
        path = write_gguf_adapter(tmp_path / "adapter", wrapped.config, tmp_path / "a.gguf", "f32")
        assert field(path, "general.architecture") == "llama"
        assert field(path, "general.type") == "adapter"
        assert field(path, "adapter.type") == "lora"
        assert field(path, "adapter.lora.alpha") == 8.0
        config = wrapped.config
        found = tensors(path)
        expected = {f"blk.{i}.{n}.weight.lora_{ab}" for i in range(config.num_hidden_layers) for n in GGUF_NAMES
                    for ab in "ab"}
        assert set(found) == expected
        assert found["blk.0.attn_q.weight.lora_a"].shape == (4, config.hidden_size)  # (rank, in)
        assert found["blk.0.attn_k.weight.lora_b"].shape == (config.num_key_value_heads * 8, 4)  # (out, rank)
        assert found["blk.1.ffn_down.weight.lora_a"].shape == (4, config.intermediate_size)

    def test_folder_delta_equals_the_merged_base_export(self, tiny_llama_dir, tokenizer, tmp_path):
        wrapped = peft_model(tiny_llama_dir)
        wrapped.save_pretrained(tmp_path / "adapter")
        path = write_gguf_adapter(tmp_path / "adapter", wrapped.config, tmp_path / "a.gguf", "f32")
        assert_delta_matches(wrapped, tokenizer, path, tmp_path)

    def test_q_and_k_b_rows_are_permuted_and_nothing_else(self, tiny_llama_dir, tmp_path):
        wrapped = peft_model(tiny_llama_dir)
        found = tensors(write_gguf_adapter(wrapped, wrapped.config, tmp_path / "a.gguf", "f32"))
        attention = wrapped.base_model.model.model.layers[0].self_attn
        b = {name: getattr(attention, name).lora_B["default"].weight.detach().numpy() for name in ("q_proj", "k_proj", "v_proj")}
        a = attention.q_proj.lora_A["default"].weight.detach().numpy()
        np.testing.assert_array_equal(found["blk.0.attn_q.weight.lora_b"], permute_for_rope(b["q_proj"], 4))
        np.testing.assert_array_equal(found["blk.0.attn_k.weight.lora_b"], permute_for_rope(b["k_proj"], 2))
        np.testing.assert_array_equal(found["blk.0.attn_v.weight.lora_b"], b["v_proj"])
        np.testing.assert_array_equal(found["blk.0.attn_q.weight.lora_a"], a)

    def test_rslora_and_rank_and_alpha_patterns_fold_into_b(self, tiny_llama_dir, tokenizer, tmp_path):
        # llama.cpp scales every pair by one alpha / its rank; PEFT's other scalings must land in B.
        wrapped = peft_model(tiny_llama_dir, use_rslora=True, rank_pattern={"q_proj": 2}, alpha_pattern={"v_proj": 16})
        path = write_gguf_adapter(wrapped, wrapped.config, tmp_path / "a.gguf", "f32")
        assert tensors(path)["blk.0.attn_q.weight.lora_a"].shape == (2, 32)
        assert_delta_matches(wrapped, tokenizer, path, tmp_path)

    @pytest.mark.parametrize("gguf_type, a_type", [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
    def test_types_and_short_rows_fall_back_to_f16(self, tiny_llama_dir, tmp_path, gguf_type, a_type):
        wrapped = peft_model(tiny_llama_dir)
        path = write_gguf_adapter(wrapped, wrapped.config, tmp_path / "a.gguf", gguf_type)
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
        assert types["blk.0.attn_q.weight.lora_a"] == a_type  # rows of hidden_size 32: whole Q8_0 blocks
        # B's rows are rank 4 long: no Q8_0 block fits, so F16 (as llama.cpp's converter does)
        assert types["blk.0.attn_q.weight.lora_b"] == ("F16" if gguf_type == "q8_0" else a_type)

    def test_refusals_are_one_line_and_write_nothing(self, tiny_llama_dir, tmp_path):
        config = AutoConfig.from_pretrained(tiny_llama_dir)
        cases = [
            (peft_model(tiny_llama_dir, use_dora=True), "DoRA"),
            (peft_model(tiny_llama_dir, target_modules=["q_proj"], modules_to_save=["lm_head"]), "saves whole modules"),
            (peft_model(tiny_llama_dir, target_modules=["embed_tokens", "q_proj"]), "not a LoRA A/B matrix"),
        ]
        for wrapped, message in cases:
            with pytest.raises(InstructuneError, match=message):
                write_gguf_adapter(wrapped, config, tmp_path / "a.gguf", "f16")
        wrapped = peft_model(tiny_llama_dir, target_modules=["q_proj"])
        with pytest.raises(InstructuneError, match="expected one of f32, f16, bf16, q8_0"):
            write_gguf_adapter(wrapped, config, tmp_path / "a.gguf", "q4_0")
        (tmp_path / "taken.gguf").write_text("user data")
        with pytest.raises(InstructuneError, match="file exists"):
            write_gguf_adapter(wrapped, config, tmp_path / "taken.gguf", "f16")
        config.model_type = "t5"
        with pytest.raises(InstructuneError, match="supports the llama architecture"):
            write_gguf_adapter(wrapped, config, tmp_path / "a.gguf", "f16")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.gguf"]
        assert (tmp_path / "taken.gguf").read_text() == "user data"


class TestExportGgufAdapter:
    def test_base_config_comes_from_the_adapter_or_model(self, tiny_llama_dir, tmp_path):
        wrapped = peft_model(tiny_llama_dir)
        wrapped.save_pretrained(tmp_path / "adapter")
        config_path = tmp_path / "adapter" / "adapter_config.json"
        assert json.loads(config_path.read_text())["base_model_name_or_path"] == str(tiny_llama_dir)
        path = export_gguf_adapter(tmp_path / "a.gguf", "f16", adapter=tmp_path / "adapter")
        again = export_gguf_adapter(tmp_path / "b.gguf", "f16", adapter=tmp_path / "adapter", model=str(tiny_llama_dir))
        first, second = tensors(path), tensors(again)
        assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
