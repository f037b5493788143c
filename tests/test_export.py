"""`instructune export`: a LoRA adapter merged into its base loads as a plain transformers model; a place that
cannot be written is one line before the merge, and a write that fails midway leaves nothing."""

import errno

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import tiny
from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.export.merge import export_merged, main
from instructune.models import load_model
from instructune.train.trainer import Trainer


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp("export")
    config = load_config(None, [f"output_dir={tmp}", "run_name=lora", f"model.name={tiny_llama_dir}",
                                "train.max_steps=3", "train.lr=1e-2", "train.num_threads=1", "train.precision=fp32"])
    model, tokenizer = load_model(tiny_llama_dir)
    examples = [{"prompt": "Where is my order?", "completion": "It shipped today."}] * 8
    trainer = Trainer(config, model=model, tokenizer=tokenizer, train_examples=examples, progress=False)
    trainer.setup()
    trainer.train()
    return config.run_dir / "adapter"


class TestExport:
    def test_merged_folder_loads_without_peft_and_matches_the_adapter(self, tmp_path, tiny_llama_dir, adapter_run):
        out = export_merged(adapter_run, tmp_path / "merged", model=str(tiny_llama_dir))
        assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        assert tokenizer.chat_template  # the chat template travels with the model
        wrapped, _ = load_model(tiny_llama_dir, adapter=adapter_run)
        ids = tokenizer("Where is my order?", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert torch.allclose(merged(ids).logits, wrapped(ids).logits, atol=1e-5)

    def test_base_model_defaults_to_the_one_recorded_in_the_adapter(self, tmp_path, adapter_run):
        assert main(["--adapter", str(adapter_run), "-o", str(tmp_path / "merged")]) == 0
        assert (tmp_path / "merged" / "config.json").is_file()

    def test_refuses_to_overwrite_a_non_empty_folder(self, tmp_path, adapter_run):
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "keep.txt").write_text("user data")
        with pytest.raises(InstructuneError, match="not empty"):
            export_merged(adapter_run, tmp_path / "taken")
        assert (tmp_path / "taken" / "keep.txt").read_text() == "user data"

    def test_missing_parent_folders_are_created(self, tmp_path, adapter_run):
        assert main(["--adapter", str(adapter_run), "-o", str(tmp_path / "exported" / "deeper" / "merged")]) == 0
        assert (tmp_path / "exported" / "deeper" / "merged" / "model.safetensors").is_file()

    def test_a_full_disk_midway_is_one_line_and_leaves_nothing(self, tmp_path, adapter_run, monkeypatch):
        def full_disk(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", full_disk)
        out = tmp_path / "exported" / "merged"
        with pytest.raises(InstructuneError) as error:
            main(["--adapter", str(adapter_run), "-o", str(out)])
        assert str(error.value) == f"{out}: could not write the merged model (No space left on device); nothing was left there"
        assert list((tmp_path / "exported").iterdir()) == []  # the weights written before the tokenizer went too
