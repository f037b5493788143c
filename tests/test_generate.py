"""Batched generation: same answers as one prompt at a time, input order kept, new tokens only, stop tokens;
beam search and the other decoding settings equal to Hugging Face `generate` called directly."""

import pytest
import torch

import tiny
from instructune.errors import InstructuneError
from instructune.generation.engines import Sampling
from instructune.generation.generate import Decoding, encode_prompt, generate, stop_token_ids

PROMPTS = ["Hi", "Where is my order? I want a refund for my purchase", "How do I reset", "abc " * 20]


def _chatty(model):
    """Untie and randomise the output layer, so a tiny random model writes varied text instead of echoing."""
    generator = torch.Generator().manual_seed(0)
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape, generator=generator))
    return model.eval()


def hf_reference_ids(model, tokenizer, prompt: str, max_new_tokens: int, stop_ids=None, **settings) -> list[int]:
    """The reference: Hugging Face `generate` on one unpadded prompt, new ids up to the first stop.

    Greedy, unless `settings` (num_beams, length_penalty, ...) say otherwise.
    """
    stop_ids = stop_ids or stop_token_ids(model, tokenizer)
    input_ids = torch.tensor([encode_prompt(model, tokenizer, prompt)])
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=stop_ids[0],
                                **settings)
    new = output[0, input_ids.shape[1]:].tolist()
    return next((new[:i] for i, token in enumerate(new) if token in stop_ids), new)


def hf_greedy_ids(model, tokenizer, prompt: str, max_new_tokens: int, stop_ids=None) -> list[int]:
    """The reference for greedy engines: Hugging Face greedy `generate` on one unpadded prompt."""
    return hf_reference_ids(model, tokenizer, prompt, max_new_tokens, stop_ids)


def assert_greedy_equal_with_early_stops(model, tokenizer, prompts, decode, max_new_tokens: int = 24) -> None:
    """`decode(stop_ids)` (new ids per prompt) equals HF greedy `generate`, with answers that stop early and at the cap.

    The stop set is the model's own plus a token a few greedy answers write early, so answers end at
    different steps.
    """
    free = [hf_greedy_ids(model, tokenizer, p, max_new_tokens) for p in prompts]
    rows_with = torch.bincount(torch.tensor([t for row in free for t in set(row)]))
    early = {t for row in free for t in row[1:16]}
    stop_ids = stop_token_ids(model, tokenizer) + [min(t for t in early if rows_with[t] <= 3)]
    expected = [hf_greedy_ids(model, tokenizer, p, max_new_tokens, stop_ids) for p in prompts]
    assert decode(stop_ids) == expected
    assert any(len(ref) == max_new_tokens for ref in expected)  # the cap is exercised ...
    assert any(len(ref) < max_new_tokens for ref in expected)   # ... and so are early stops


def lora_with_effect(model):
    """`model` under a LoRA adapter whose B matrices are random (zero at init), so the adapter changes answers."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model


class TestGenerate:
    def test_batched_equals_one_at_a_time_in_input_order(self, llama, tokenizer):
        model = _chatty(llama)
        batched = generate(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=3, progress=False)
        single = [generate(model, tokenizer, [p], max_new_tokens=8, progress=False)[0] for p in PROMPTS]
        assert batched == single
        assert all(batched)

    def test_left_padding_new_tokens_only_and_stop_at_chat_end(self, llama, tokenizer, monkeypatch):
        model = _chatty(llama)
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        answer = tokenizer("Hello there", add_special_tokens=False)["input_ids"]
        after_stop = tokenizer(" not this", add_special_tokens=False)["input_ids"]
        seen = {}

        def fake_generate(input_ids, attention_mask, generation_config):
            seen["mask"] = attention_mask
            tail = torch.tensor([answer + [im_end] + after_stop] * len(input_ids))
            return torch.cat([input_ids, tail], dim=1)

        monkeypatch.setattr(model, "generate", fake_generate)
        out = generate(model, tokenizer, ["Hi", "a much longer prompt than the first"], batch_size=2, progress=False,
                       engine="hf")
        assert out == ["Hello there", "Hello there"]
        mask = seen["mask"]
        assert mask[:, -1].all() and not mask[:, 0].all()  # padding sits on the left

    def test_stop_tokens_include_chat_end_and_eos(self, llama, tokenizer):
        assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(llama, tokenizer)

    def test_prompt_is_chat_formatted(self, llama, tokenizer):
        text = tokenizer.decode(encode_prompt(llama, tokenizer, "Hi"))
        assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        plain = tokenizer.decode(encode_prompt(llama, tokenizer, "Hi", chat_template=False))
        assert plain == "Hi\n"

    def test_sampling_runs_and_is_seeded(self, llama, tokenizer):
        model = _chatty(llama)
        runs = []
        for _ in range(2):
            torch.manual_seed(3)
            runs.append(generate(model, tokenizer, PROMPTS[:2], max_new_tokens=6, sampling=Sampling(0.7, 0.9),
                                 progress=False))
        assert runs[0] == runs[1]

    @pytest.mark.parametrize("engine", ["native", "hf"])
    def test_progress_bar_counts_prompts_with_rate_and_eta(self, llama, tokenizer, capsys, engine):
        generate(_chatty(llama), tokenizer, PROMPTS * 2, max_new_tokens=4, batch_size=3, engine=engine)
        bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
        assert bar.startswith("generate: 100%") and "8/8 [" in bar and "prompt/s]" in bar
        assert "<00:00" in bar  # elapsed<remaining: the ETA

    def test_auto_takes_the_native_engine_and_its_precisions(self, llama, tokenizer):
        model = _chatty(llama)
        assert generate(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False) == generate(
            model, tokenizer, PROMPTS, max_new_tokens=6, progress=False, engine="native")
        with pytest.raises(Exception, match="engine 'native' cannot run here: compute_type 'float16'"):
            generate(model, tokenizer, PROMPTS, progress=False, engine="native", compute_type="float16")

    def test_empty_and_bad_arguments(self, llama, tokenizer):
        assert generate(llama, tokenizer, [], progress=False) == []
        with pytest.raises(Exception, match="batch_size"):
            generate(llama, tokenizer, ["Hi"], batch_size=0, progress=False)


def _stops_sometimes(model):
    """`_chatty`, with the `<|im_end|>` row of the output layer doubled: answers of 1-16 tokens, so beams that
    end at different lengths compete and the length penalty matters."""
    model = _chatty(model)
    with torch.no_grad():
        model.get_output_embeddings().weight[model.config.eos_token_id] *= 2.0
    return model


class TestDecoding:
    @pytest.mark.parametrize("settings", [
        {"num_beams": 3},
        {"num_beams": 3, "length_penalty": 2.0},
        {"num_beams": 3, "no_repeat_ngram_size": 2},
        {"repetition_penalty": 1.5},
    ])
    def test_equals_hf_generate_one_prompt_at_a_time(self, llama, tokenizer, settings):
        # Prompts of 19 to 82 tokens in one left-padded batch against unpadded single calls.
        model = _stops_sometimes(llama)
        got = generate(model, tokenizer, PROMPTS, max_new_tokens=16, batch_size=4, progress=False,
                       decoding=Decoding(**settings))
        expected = [tokenizer.decode(hf_reference_ids(model, tokenizer, p, 16, **settings), skip_special_tokens=True)
                    .strip() for p in PROMPTS]
        assert got == expected
        # Not vacuous: each setting changes answers (against greedy, and the extra settings against beams alone).
        greedy = generate(model, tokenizer, PROMPTS, max_new_tokens=16, progress=False)
        beams = generate(model, tokenizer, PROMPTS, max_new_tokens=16, progress=False, decoding=Decoding(num_beams=3))
        assert got != greedy and (settings == {"num_beams": 3} or got != beams)

    def test_defaults_are_greedy_on_any_engine(self, llama, tokenizer):
        model = _stops_sometimes(llama)
        expected = [tokenizer.decode(hf_greedy_ids(model, tokenizer, p, 16), skip_special_tokens=True).strip()
                    for p in PROMPTS]
        for engine in ("auto", "hf"):
            assert generate(model, tokenizer, PROMPTS, max_new_tokens=16, progress=False, engine=engine,
                            decoding=Decoding()) == expected

    def test_auto_runs_hf_generate_for_beams_and_native_for_greedy(self, llama, tokenizer, monkeypatch):
        model = _chatty(llama)
        hf_generate, beams_seen = model.generate, []

        def spy(*args, generation_config, **kwargs):
            beams_seen.append(generation_config.num_beams)
            return hf_generate(*args, generation_config=generation_config, **kwargs)

        monkeypatch.setattr(model, "generate", spy)
        generate(model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=2, progress=False,
                 decoding=Decoding(num_beams=3))
        assert beams_seen == [3, 3]
        generate(model, tokenizer, PROMPTS, max_new_tokens=4, progress=False)
        assert beams_seen == [3, 3]  # plain greedy stays on the native engine

    @pytest.mark.parametrize("engine", ["openvino", "native"])
    def test_greedy_engines_refuse_in_one_line_naming_hf(self, llama, tokenizer, engine):
        with pytest.raises(InstructuneError) as error:
            generate(llama, tokenizer, PROMPTS, progress=False, engine=engine,
                     decoding=Decoding(num_beams=3, no_repeat_ngram_size=3))
        assert str(error.value) == (f"generate: engine '{engine}' cannot run here: num_beams=3, no_repeat_ngram_size=3 "
                                    "needs Hugging Face generate; use engine 'auto' or 'hf'")

    def test_greedy_engine_precisions_are_refused_with_hf_settings(self, llama, tokenizer):
        with pytest.raises(InstructuneError, match="no engine can run this here: (openvino: .*; )?native: repetition_penalty=1.2 needs "
                                                   "Hugging Face generate; .*hf: compute_type 'bfloat16': hf runs in "
                                                   "the model's own dtype"):
            generate(llama, tokenizer, PROMPTS, progress=False, compute_type="bfloat16",
                     decoding=Decoding(repetition_penalty=1.2))

    @pytest.mark.parametrize("settings, error", [
        ({"num_beams": 0}, "expected num_beams >= 1"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size >= 0"),
        ({"repetition_penalty": 0.0}, "repetition_penalty > 0"),
        ({"length_penalty": 0.8}, "length_penalty 0.8 only acts in beam search; set num_beams > 1"),
    ])
    def test_bad_settings_say_how_to_fix_them(self, settings, error):
        with pytest.raises(InstructuneError, match=error):
            Decoding(**settings)

    def test_changed_settings_describe_and_record(self):
        decoding = Decoding(num_beams=4, length_penalty=0.8)
        assert decoding.changed() == {"num_beams": 4, "length_penalty": 0.8}
        assert decoding.describe() == "num_beams=4, length_penalty=0.8" and Decoding().describe() == "greedy"
        assert Decoding(**decoding.to_dict()) == decoding


class TestGenerateEncoderDecoder:
    def test_t5_batched_equals_one_at_a_time(self, tokenizer):
        model = _chatty(tiny.make_t5(tokenizer))
        batched = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, progress=False)
        single = [generate(model, tokenizer, [p], max_new_tokens=6, progress=False)[0] for p in PROMPTS]
        assert batched == single
        assert all(batched)

    def test_t5_beams_batched_equal_one_at_a_time(self, tokenizer):
        model = _chatty(tiny.make_t5(tokenizer))
        decoding = Decoding(num_beams=3, length_penalty=2.0, no_repeat_ngram_size=2)
        batched = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, progress=False, decoding=decoding)
        single = [generate(model, tokenizer, [p], max_new_tokens=6, progress=False, decoding=decoding)[0]
                  for p in PROMPTS]
        assert batched == single
        assert batched != generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, progress=False)

    def test_t5_reads_raw_prompt_without_chat_template(self, tokenizer):
        model = tiny.make_t5(tokenizer)
        assert tokenizer.decode(encode_prompt(model, tokenizer, "Hi")) == "Hi"
