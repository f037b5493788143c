"""The main job end to end on a tiny model: data, before/after evaluation, LoRA training, run folder."""

import json

from instructune.config import load_config
from instructune.cli.quickstart import run_quickstart
from instructune.config import default_config_path


class TestQuickstart:
    def test_writes_a_complete_run_folder(self, tmp_path, tiny_llama_dir):
        config = load_config(default_config_path(), [
            f"model.name={tiny_llama_dir}", f"output_dir={tmp_path}", "train.max_steps=2", "train.num_threads=1",
            "train.eval_every_n_steps=1",
        ])
        result = run_quickstart(config, eval_limit=2, max_new_tokens=4)
        run = tmp_path / "quickstart"
        for name in ("config.yaml", "metrics.json", "report.md", "loss.png", "predictions.jsonl",
                     "adapter/adapter_model.safetensors", "data/train.jsonl", "data/test.jsonl"):
            assert (run / name).is_file(), name
        saved = json.loads((run / "metrics.json").read_text())
        assert set(saved["before"]) == set(saved["after"]) == {"support_response", "support_intent"}
        assert "rougeL" in saved["before"]["support_response"]
        assert "exact_match" in saved["after"]["support_intent"]
        report = (run / "report.md").read_text()
        assert "| support_response | rougeL |" in report and "loss.png" in report
        # The before/after rows pair the same test items, so each change has its interval.
        assert "no CI" not in report and "95% confidence interval" in report and "support_intent 2" in report
        assert result["train"]["steps"] == 2

    def test_test_split_never_overlaps_training_data(self, tmp_path, tiny_llama_dir):
        from instructune.fileio.jsonio import read_jsonl
        from instructune.data.support import build_support_instructions

        paths = build_support_instructions(tmp_path)
        train_prompts = {e["prompt"] for e in read_jsonl(paths["train"])}
        assert not train_prompts & {e["prompt"] for e in read_jsonl(paths["test"])}

    def test_packaged_config_is_valid(self):
        config = load_config(default_config_path())
        assert config.lora.enabled and config.train.max_steps
