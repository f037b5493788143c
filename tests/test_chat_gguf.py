"""`instructune chat --model FILE.gguf`: the conversation run by llama.cpp (xllamacpp), checked against transformers.

On the tiny Llama of test_llamacpp.py (trained ~3 s to answer its PAIRS and end with <|im_end|>) exported
to f32 GGUF: the prompt of every turn is rendered by llama.cpp from the file's own template and equals
transformers' `apply_chat_template` of the same messages (system message and earlier turns included); the
ids llama.cpp is sent equal the Hugging Face tokenizer's; greedy answers turn by turn equal `ChatSession`'s
(Hugging Face `generate`) and the `eval` path's (`generate` over `load_gguf`); --temperature/--top-p reach
llama.cpp's sampler; plain text for --no-chat-template and for a file without a template (said on
stderr); a LoRA .gguf adapter applies; the real CLI prints the one-shot answer, and a missing or corrupt
file ends in one line and exit code 2. On a tiny Gemma 3 (untrained), llama.cpp's rendering without the
<bos> it adds when tokenizing gives transformers' prompt ids all the same.
"""

import copy
import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("xllamacpp", reason="llama.cpp tests need the xllamacpp wheel: pip install 'instructune[test]'")

from instructune.cli import main as cli_main  # noqa: E402
from instructune.errors import EXIT_BAD_INPUT, InstructuneError  # noqa: E402
from instructune.export.gguf import write_gguf  # noqa: E402
from instructune.export.gguf_adapter import write_gguf_adapter  # noqa: E402
from instructune.generation import generate as generation  # noqa: E402
from instructune.generation.chat import ChatSession, GgufChatSession, chat_loop  # noqa: E402
from instructune.generation.llamacpp_engine import load_gguf  # noqa: E402
import test_llamacpp as llamacpp_tests  # noqa: E402
from test_llamacpp import PAIRS  # noqa: E402

# test_llamacpp's fixtures, run again for this module: the tiny Llama trained to answer PAIRS, gguf_type -> its
# GGUF file, and a LoRA adapter trained to give each question the next question's answer.
trained, tiny_files, adapted = llamacpp_tests.trained, llamacpp_tests.tiny_files, llamacpp_tests.adapted

INSTRUCTUNE = Path(sys.executable).parent / "instructune"
MAX_NEW_TOKENS = 24
# One conversation: a learned question, an unseen follow-up, then a learned question again.
TURNS = [PAIRS[0][0], "And my refund?", PAIRS[2][0]]
SYSTEM = "You are a support bot."


def open_gguf(path):
    """load_gguf as chat does it (one slot), small and on one thread."""
    return load_gguf(path, slots=1, ctx_per_slot=256, threads=1)


def spy(monkeypatch, engine, method: str) -> list:
    """Record the arguments of every call of `engine.<method>` for one test (the calls still go through)."""
    calls, original = [], getattr(engine, method)

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, method, recording)
    return calls


def converse(session, turns: list[str]) -> tuple[list[str], list[str]]:
    """(the prompt rendered before each turn, the answers), turn by turn in one conversation."""
    prompts, answers = [], []
    for text in turns:
        prompts.append(session.render_prompt(text))
        answers.append(session.reply(text))
    return prompts, answers


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`instructune chat ...` in this process: (exit code, stdout, stderr)."""
    code = cli_main(["chat", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def gguf(tiny_files):
    """(GgufModel, GgufTokenizer) of the trained tiny model's f32 file, closed after the module."""
    model, tokenizer = open_gguf(tiny_files("f32"))
    yield model, tokenizer
    model.close()


class TestGgufChatSession:
    def test_prompts_are_llama_cpps_rendering_and_equal_transformers(self, trained, gguf, monkeypatch):
        _, tokenizer = trained
        model, gguf_tokenizer = gguf
        renders = spy(monkeypatch, model.engine, "apply_template")
        completions = spy(monkeypatch, model.engine, "complete")
        session = GgufChatSession(model, gguf_tokenizer, system=SYSTEM, max_new_tokens=MAX_NEW_TOKENS)
        prompts, answers = converse(session, TURNS)
        messages = [{"role": "system", "content": SYSTEM}]
        for turn, (text, prompt, answer) in enumerate(zip(TURNS, prompts, answers)):
            messages.append({"role": "user", "content": text})
            want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert prompt == want, turn
            # the text came from llama.cpp's template engine, and llama.cpp was sent the transformers ids
            assert any(args[0] == messages for args, _ in renders), turn
            assert completions[turn][0][0] == tokenizer(want, add_special_tokens=False)["input_ids"], turn
            messages.append({"role": "assistant", "content": answer})
        assert session.history == messages[1:]

    def test_greedy_answers_equal_transformers_turn_by_turn(self, trained, gguf):
        model, tokenizer = trained
        for system in (None, SYSTEM):
            reference = ChatSession(model, tokenizer, system=system, max_new_tokens=MAX_NEW_TOKENS)
            session = GgufChatSession(*gguf, system=system, max_new_tokens=MAX_NEW_TOKENS)
            assert converse(session, TURNS) == converse(reference, TURNS), system
        # the default system turn, as in training: the learned answer, cut at <|im_end|>
        assert GgufChatSession(*gguf, max_new_tokens=MAX_NEW_TOKENS).reply(TURNS[0]) == PAIRS[0][1]

    def test_first_turn_answers_equal_the_eval_path(self, gguf):
        questions = [q for q, _ in PAIRS]
        got = [GgufChatSession(*gguf, max_new_tokens=MAX_NEW_TOKENS).reply(q) for q in questions]
        want = generation.generate(*gguf, questions, max_new_tokens=MAX_NEW_TOKENS, engine="llamacpp",
                                   progress=False)
        assert got == [answer.strip() for answer in want] == [a for _, a in PAIRS]

    def test_max_new_tokens_caps_the_answer(self, trained, gguf, monkeypatch):
        model, tokenizer = trained
        session = GgufChatSession(*gguf, max_new_tokens=3)
        completions = spy(monkeypatch, session.model.engine, "complete")
        answer = session.reply(PAIRS[0][0])
        assert completions[0][0][1] == 3
        assert answer == ChatSession(model, tokenizer, max_new_tokens=3).reply(PAIRS[0][0])
        assert len(tokenizer.encode(answer, add_special_tokens=False)) <= 3

    def test_sampling_settings_reach_llama_cpps_sampler(self, gguf, monkeypatch):
        completions = spy(monkeypatch, gguf[0].engine, "complete")
        GgufChatSession(*gguf, max_new_tokens=4).reply("Hi")
        assert completions[-1][1] == {"temperature": 0.0, "top_k": 1, "samplers": ["top_k"]}
        sampled = GgufChatSession(*gguf, max_new_tokens=4, temperature=0.8, top_p=0.9)
        assert isinstance(sampled.reply("Hi"), str)
        assert completions[-1][1] == {"temperature": 0.8, "top_k": 50, "top_p": 0.9,
                                      "samplers": ["temperature", "top_k", "top_p"]}

    def test_no_chat_template_gives_plain_text_as_transformers(self, trained, gguf):
        model, tokenizer = trained
        session = GgufChatSession(*gguf, max_new_tokens=8, chat_template=False)
        reference = ChatSession(model, tokenizer, max_new_tokens=8, chat_template=False)
        prompts, answers = converse(session, TURNS[:2])
        assert (prompts, answers) == converse(reference, TURNS[:2])
        assert prompts[0] == TURNS[0] + "\n" and "<|im_start|>" not in prompts[1]

    def test_stream_gets_the_whole_answer_and_reset_forgets(self, gguf):
        session = GgufChatSession(*gguf, max_new_tokens=MAX_NEW_TOKENS)
        pieces = []
        assert session.reply(PAIRS[0][0], stream=pieces.append) == PAIRS[0][1] and pieces == [PAIRS[0][1]]
        session.reset()
        assert session.history == []

    def test_an_answer_runs_in_the_calling_thread(self, gguf, monkeypatch):
        # So Ctrl-C interrupts its HTTP request, and llama.cpp cancels the generation (chat_loop keeps no answer).
        threads, complete = [], gguf[0].engine.complete

        def recording(*args, **kwargs):
            threads.append(threading.current_thread())
            return complete(*args, **kwargs)

        monkeypatch.setattr(gguf[0].engine, "complete", recording)
        GgufChatSession(*gguf, max_new_tokens=4).reply("Hi")
        assert threads == [threading.main_thread()]

    def test_an_interrupted_answer_is_not_kept(self, gguf, monkeypatch):
        def interrupt(*args, **kwargs):
            raise KeyboardInterrupt

        session = GgufChatSession(*gguf, max_new_tokens=4)
        monkeypatch.setattr(gguf[0].engine, "complete", interrupt)
        with pytest.raises(KeyboardInterrupt):
            session.reply("Hi")
        assert session.history == []

    def test_rejects_bad_generation_settings(self, gguf):
        with pytest.raises(InstructuneError, match="top-p"):
            GgufChatSession(*gguf, top_p=0.0)


class TestChatLoop:
    def test_reset_and_exit_as_with_transformers(self, gguf):
        lines = iter([PAIRS[0][0], "/reset", PAIRS[1][0], "/exit", "never read"])
        output = io.StringIO()
        session = GgufChatSession(*gguf, max_new_tokens=MAX_NEW_TOKENS)
        chat_loop(session, input_fn=lambda _: next(lines), output=output)
        assert session.history == [{"role": "user", "content": PAIRS[1][0]},
                                   {"role": "assistant", "content": PAIRS[1][1]}]
        assert PAIRS[0][1] in output.getvalue() and "cleared" in output.getvalue()
        assert next(lines) == "never read"


class TestFileWithoutTemplate:
    def test_plain_text_and_a_notice(self, trained, tmp_path, capsys):
        model, tokenizer = trained
        plain = copy.deepcopy(tokenizer)
        plain.chat_template = None
        path = write_gguf(model, plain, tmp_path / "plain.gguf", "f32")
        gguf_model, gguf_tokenizer = open_gguf(path)
        try:
            session = GgufChatSession(gguf_model, gguf_tokenizer, max_new_tokens=8)
            assert not session.use_template  # not llama.cpp's silent ChatML fallback
            assert converse(session, TURNS[:2]) == converse(ChatSession(model, plain, max_new_tokens=8), TURNS[:2])
        finally:
            gguf_model.close()
        code, out, err = cli(["--model", str(path), "--prompt", "Hi", "--max-new-tokens", "4"], capsys)
        assert code == 0 and "has no chat template" in err and "plain text" in err


class TestAdapter:
    def test_lora_gguf_applies_over_the_base_file(self, trained, tiny_files, adapted, tmp_path, capsys):
        model, _ = trained
        adapter_dir, merged, _ = adapted
        adapter = write_gguf_adapter(adapter_dir, model.config, tmp_path / "a.f32.gguf", "f32")
        code, out, _ = cli(["--model", str(tiny_files("f32")), "--adapter", str(adapter), "--prompt", PAIRS[0][0]],
                           capsys)
        # the adapter gives each learned question the next question's answer, as the merged model does
        assert code == 0 and out == PAIRS[1][1] + "\n"

    def test_an_adapter_folder_over_a_gguf_is_one_line(self, tiny_files, tmp_path, capsys):
        code, out, err = cli(["--model", str(tiny_files("f32")), "--adapter", str(tmp_path), "--prompt", "Hi"], capsys)
        assert code == EXIT_BAD_INPUT and out == ""
        assert err.strip().count("\n") == 0 and "over a GGUF model give a LoRA GGUF file" in err


class TestCommandLine:
    def test_one_shot_prints_the_answer(self, tiny_files):
        # The real command, in a child process.
        command = [str(INSTRUCTUNE), "chat", "--model", str(tiny_files("f32")),
                   "--prompt", PAIRS[3][0], "--max-new-tokens", str(MAX_NEW_TOKENS)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout) == (0, PAIRS[3][1] + "\n"), result.stderr

    def test_system_and_settings_reach_the_session(self, trained, tiny_files, capsys):
        model, tokenizer = trained
        code, out, _ = cli(["--model", str(tiny_files("f32")), "--prompt", "Hello", "--system", SYSTEM,
                            "--max-new-tokens", "6"], capsys)
        assert code == 0
        assert out == ChatSession(model, tokenizer, system=SYSTEM, max_new_tokens=6).reply("Hello") + "\n"

    @pytest.mark.parametrize("broken, message", [
        ("text", "not a readable GGUF file"), ("empty", "not a readable GGUF file"),
        ("truncated", "not a readable GGUF file"), ("missing", "no such GGUF file"),
    ])
    def test_missing_or_corrupt_file_is_one_line_and_exit_2(self, tiny_files, tmp_path, capsys, broken, message):
        path = tmp_path / "broken.gguf"
        data = Path(tiny_files("f32")).read_bytes()
        contents = {"text": b"not a gguf at all" * 8, "empty": b"", "truncated": data[:len(data) // 2]}
        if broken in contents:
            path.write_bytes(contents[broken])
        code, out, err = cli(["--model", str(path), "--prompt", "Hi"], capsys)
        assert code == EXIT_BAD_INPUT and out == ""
        assert err.startswith(f"instructune chat: error: {path}: {message}") and err.count("\n") == 1

    def test_corrupt_file_in_the_real_command(self, tmp_path):
        path = tmp_path / "broken.gguf"
        path.write_bytes(b"GGUF" + b"\xff" * 64)
        result = subprocess.run([str(INSTRUCTUNE), "chat", "--model", str(path), "--prompt", "Hi"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == EXIT_BAD_INPUT and result.stdout == ""
        assert result.stderr.startswith(f"instructune chat: error: {path}: ") and result.stderr.count("\n") == 1


class TestGemmaFile:
    def test_prompt_ids_equal_transformers_though_llama_cpp_leaves_out_the_bos(self, tmp_path, monkeypatch):
        from test_gguf_gemma3 import LAYERS, gemma_style_tokenizer
        from tiny_gemma import make_gemma3

        tokenizer = gemma_style_tokenizer()
        model = make_gemma3(tokenizer, layer_types=LAYERS, query_pre_attn_scalar=16, vocab_size=1024)
        gguf_model, gguf_tokenizer = open_gguf(write_gguf(model, tokenizer, tmp_path / "gemma.f32.gguf", "f32"))
        try:
            session = GgufChatSession(gguf_model, gguf_tokenizer, system=SYSTEM, max_new_tokens=6)
            reference = ChatSession(model, tokenizer, system=SYSTEM, max_new_tokens=6)
            completions = spy(monkeypatch, gguf_model.engine, "complete")
            prompts, answers = converse(session, TURNS[:2])
            assert (prompts, answers) == converse(reference, TURNS[:2])
            assert prompts[0].startswith("<bos><start_of_turn>user\n" + SYSTEM)
            assert [args[0] for args, _ in completions] == [
                tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        finally:
            gguf_model.close()
