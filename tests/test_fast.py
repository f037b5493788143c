"""The fast engine (CTranslate2): greedy answers equal Hugging Face `generate`'s token for token, LoRA
models convert from memory without being changed, conversions are cached by weights, and what the
engine cannot take falls back to Hugging Face."""

import pytest
import torch

import tiny
from instructune.errors import InstructuneError
from instructune.generation import fast
from instructune.generation.generate import encode_prompt, generate, stop_token_ids
from test_generate import _chatty, hf_greedy_ids, lora_with_effect

PROMPTS = [
    "Hi", "Where is my order? I want a refund for my purchase", "How do I reset", "abc " * 20,
    "Summarize the dialogue. #Person1#: Hello, how are you? #Person2#: I am fine, thank you.",
    "The quick brown fox", "Question: which option is correct? Answer:", "0123456789",
]


class TestGreedyEquality:
    def test_float32_ids_equal_hf_generate_token_for_token(self, llama, tokenizer):
        model = _chatty(llama)
        engine = fast.load_engine(model, tokenizer, cache=False)
        stop_ids = stop_token_ids(model, tokenizer)
        rows = [encode_prompt(model, tokenizer, p) for p in PROMPTS]
        got = fast.generate_ids(engine, rows, tokenizer, max_new_tokens=24, stop_ids=stop_ids)
        expected = [hf_greedy_ids(model, tokenizer, p, 24) for p in PROMPTS]
        assert [row[:len(ref)] for row, ref in zip(got, expected)] == expected
        assert all(len(row) == len(ref) for row, ref in zip(got, expected))  # same stops, nothing after
        assert any(len(ref) == 24 for ref in expected)  # the cap is exercised, not only early stops

    def test_generate_answers_equal_across_engines_batched(self, llama, tokenizer):
        model = _chatty(llama)
        hf = generate(model, tokenizer, PROMPTS, max_new_tokens=16, batch_size=3, progress=False, engine="hf")
        ct2 = generate(model, tokenizer, PROMPTS, max_new_tokens=16, batch_size=3, progress=False, engine="ct2")
        assert ct2 == hf and all(hf)

    def test_lora_model_converts_with_adapters_and_is_left_unchanged(self, llama, tokenizer):
        model = lora_with_effect(_chatty(llama))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        hf = generate(model, tokenizer, PROMPTS, max_new_tokens=12, progress=False, engine="hf")
        ct2 = generate(model, tokenizer, PROMPTS, max_new_tokens=12, progress=False, engine="ct2", cache_engine=False)
        assert ct2 == hf
        after = dict(model.named_parameters())
        assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)
        with model.disable_adapter():
            base = generate(model, tokenizer, PROMPTS, max_new_tokens=12, progress=False, engine="hf")
        assert base != hf  # the adapters changed the answers, so the conversion carried them


class TestEngineCache:
    def test_cached_model_is_kept_by_weights_and_rebuilt_when_they_change(self, tiny_llama_dir, tmp_path,
                                                                          monkeypatch):
        import shutil

        from instructune.models import load_model

        # A model folder inside instructune's cache, as the converted default model is.
        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path))
        source = shutil.copytree(tiny_llama_dir, tmp_path / "models" / "tiny")
        model, tokenizer = load_model(source)
        first = fast.load_engine(model, tokenizer)
        assert fast.load_engine(model, tokenizer) is first  # same weights: the loaded engine again
        converted = sorted(p.name for p in (tmp_path / "models").glob("tiny.ct2-*"))
        assert len(converted) == 1 and (tmp_path / "models" / converted[0] / "model.bin").is_file()
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)
        assert fast.load_engine(model, tokenizer) is not first
        assert len(list((tmp_path / "models").glob("tiny.ct2-*"))) == 2

    def test_users_folders_and_in_training_conversions_leave_nothing_behind(self, tiny_llama_dir, tmp_path,
                                                                           monkeypatch):
        from instructune.models import load_model

        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path))
        model, tokenizer = load_model(tiny_llama_dir)
        fast.load_engine(model, tokenizer)
        fast.load_engine(model, tokenizer, cache=False)
        assert not (tmp_path / "models").exists()

class TestFallback:
    def test_unsupported_models_and_sampling_use_hf(self, tokenizer, llama):
        t5 = tiny.make_t5(tokenizer)
        assert "encoder-decoder" in fast.unsupported_reason(t5)
        assert fast.unsupported_reason(llama) is None
        auto = generate(t5, tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False)
        assert auto == generate(t5, tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False, engine="hf")
        with pytest.raises(InstructuneError, match="encoder-decoder"):
            generate(t5, tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False, engine="ct2")
        with pytest.raises(InstructuneError, match="greedily"):
            generate(llama, tokenizer, PROMPTS[:2], do_sample=True, progress=False, engine="ct2")

    def test_bad_engine_and_compute_type(self, llama, tokenizer):
        with pytest.raises(InstructuneError, match="engine 'vllm'"):
            generate(llama, tokenizer, ["Hi"], engine="vllm", progress=False)
        with pytest.raises(InstructuneError, match="compute_type 'fp8'"):
            generate(llama, tokenizer, ["Hi"], compute_type="fp8", progress=False)


class TestEvalCommand:
    def test_eval_engines_write_the_same_predictions_and_name_the_engine(self, tmp_path, tiny_llama_dir):
        import json

        from instructune.evaluate import run as run_module

        dialogs = tmp_path / "dialogsum.jsonl"
        dialogs.write_text("\n".join(json.dumps(
            {"dialogue": f"#Person1#: Hi {i}. #Person2#: Hello.", "summary1": "They greet."}) for i in range(3)) + "\n")
        predictions = {}
        for engine in ("hf", "ct2"):
            out = tmp_path / f"{engine}.json"
            assert run_module.main(["--model", str(tiny_llama_dir), "--task", "dialogsum", "--data", str(dialogs),
                                    "--max-new-tokens", "6", "--engine", engine, "--no-progress", "-o", str(out)]) == 0
            assert json.loads(out.read_text())["engine"] == engine
            lines = (tmp_path / f"{engine}.predictions.jsonl").read_text().splitlines()
            predictions[engine] = [json.loads(line)["prediction"] for line in lines]
        assert predictions["ct2"] == predictions["hf"]
