import copy
import io

import pytest

from instructune.generation.chat import ChatSession, chat_loop, main, make_parser
from instructune.errors import InstructuneError
from instructune.data.tokenize import format_prompt


def _record_prompts(model):
    """Wrap model.generate so each call's prompt ids and output ids are kept."""
    calls = []
    generate = model.generate

    def recording_generate(**kwargs):
        output = generate(**kwargs)
        calls.append({"input_ids": kwargs["input_ids"][0].tolist(), "output_ids": output[0].tolist()})
        return output

    model.generate = recording_generate
    return calls


def _always_eos(model, eos_id):
    """Make the model put nearly all probability on EOS from the first generated token."""

    def hook(module, inputs, output):
        output[..., eos_id] += 1e4
        return output

    model.lm_head.register_forward_hook(hook)


def _scripted_input(lines):
    """An input_fn that returns the given lines, then raises what the last item is if it's an exception."""
    remaining = list(lines)
    asked = []

    def input_fn(prompt):
        asked.append(prompt)
        item = remaining.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    input_fn.asked = asked
    return input_fn


@pytest.fixture()
def session(llama, tokenizer):
    return ChatSession(llama.eval(), tokenizer, max_new_tokens=8)


class TestChatSession:
    def test_reply_is_a_string_and_history_grows_by_two(self, session):
        answer = session.reply("Where is my order?")
        assert isinstance(answer, str)
        assert session.history == [
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": answer},
        ]
        session.reply("And my refund?")
        assert len(session.history) == 4

    def test_reset_empties_the_history(self, session):
        session.reply("hi")
        session.reset()
        assert session.history == []

    def test_prompt_is_the_chat_template_rendering_of_the_history(self, session, tokenizer):
        calls = _record_prompts(session.model)
        first = session.reply("Where is my order?")
        session.reply("Thanks, and my refund?")
        expected = tokenizer.apply_chat_template(
            [
                {"role": "user", "content": "Where is my order?"},
                {"role": "assistant", "content": first},
                {"role": "user", "content": "Thanks, and my refund?"},
            ],
            tokenize=False, add_generation_prompt=True,
        )
        assert calls[1]["input_ids"] == tokenizer(expected, add_special_tokens=False)["input_ids"]

    def test_first_turn_matches_the_training_prompt(self, session, tokenizer):
        assert session.render_prompt("Hi") == format_prompt(tokenizer, "Hi")

    def test_system_message_comes_first(self, llama, tokenizer):
        session = ChatSession(llama, tokenizer, system="You are a shop assistant.")
        expected_start = "<|im_start|>system\nYou are a shop assistant.<|im_end|>"
        assert session.render_prompt("Hi").startswith(expected_start)

    def test_plain_text_without_a_chat_template(self, llama, tokenizer):
        plain = copy.deepcopy(tokenizer)
        plain.chat_template = None
        session = ChatSession(llama.eval(), plain, max_new_tokens=4)
        assert session.render_prompt("Hi") == format_prompt(plain, "Hi")
        answer = session.reply("Hi")
        assert session.render_prompt("Again") == f"Hi\n{answer}\n\nAgain\n"

    def test_streamed_text_is_the_answer(self, session):
        pieces = []
        answer = session.reply("Where is my order?", stream=pieces.append)
        assert "".join(pieces).strip() == answer

    def test_greedy_by_default_is_deterministic(self, llama, tokenizer):
        llama.eval()
        first = ChatSession(llama, tokenizer, max_new_tokens=8).reply("Hello")
        assert ChatSession(llama, tokenizer, max_new_tokens=8).reply("Hello") == first

    def test_sampling_when_temperature_is_positive(self, llama, tokenizer):
        session = ChatSession(llama.eval(), tokenizer, max_new_tokens=8, temperature=0.8, top_p=0.9)
        config = session._generation_kwargs()["generation_config"]
        assert config.do_sample is True and (config.temperature, config.top_p) == (0.8, 0.9)
        assert isinstance(session.reply("Hello"), str)

    def test_stops_at_im_end(self, session, tokenizer):
        eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        _always_eos(session.model, eos_id)
        calls = _record_prompts(session.model)
        assert session.reply("Hi") == ""
        assert len(calls[0]["output_ids"]) == len(calls[0]["input_ids"]) + 1

    def test_interrupted_answer_is_not_kept(self, session):
        def interrupt(text):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            session.reply("Hi", stream=interrupt)
        assert session.history == []

    @pytest.mark.parametrize(
        "settings, message",
        [
            ({"temperature": -1.0}, "temperature"),
            ({"top_p": 0.0}, "top-p"),
            ({"max_new_tokens": 0}, "max-new-tokens"),
        ],
    )
    def test_rejects_bad_generation_settings(self, llama, tokenizer, settings, message):
        with pytest.raises(InstructuneError, match=message):
            ChatSession(llama, tokenizer, **settings)


class TestChatLoop:
    def test_exit_ends_the_loop(self, session):
        input_fn = _scripted_input(["Hello", "/exit", "never read"])
        output = io.StringIO()
        chat_loop(session, input_fn=input_fn, output=output)
        assert len(input_fn.asked) == 2
        assert len(session.history) == 2

    def test_reset_clears_the_conversation(self, session):
        input_fn = _scripted_input(["Hello", "/reset", "/exit"])
        output = io.StringIO()
        chat_loop(session, input_fn=input_fn, output=output)
        assert session.history == []
        assert "cleared" in output.getvalue()

    @pytest.mark.parametrize("stop", [EOFError(), KeyboardInterrupt()])
    def test_eof_and_ctrl_c_quit_cleanly(self, session, stop):
        input_fn = _scripted_input(["Hello", stop])
        chat_loop(session, input_fn=input_fn, output=io.StringIO())
        assert len(session.history) == 2

    def test_answer_is_printed(self, session):
        output = io.StringIO()
        chat_loop(session, input_fn=_scripted_input(["Hello", "/exit"]), output=output)
        assert session.history[1]["content"] in output.getvalue()

    def test_unknown_command_is_not_sent_to_the_model(self, session):
        output = io.StringIO()
        chat_loop(session, input_fn=_scripted_input(["/help", "", "/exit"]), output=output)
        assert session.history == []
        assert "/reset" in output.getvalue()


class TestMain:
    @pytest.fixture()
    def fake_models(self, monkeypatch, llama, tokenizer):
        """Stand in for load_model so main() loads the tiny model."""
        loaded = []

        def load_model(model=None, adapter=None):
            loaded.append((model, adapter))
            return llama.eval(), tokenizer

        monkeypatch.setattr("instructune.generation.chat.load_model", load_model)
        return loaded

    def test_one_shot_prints_one_answer(self, fake_models, llama, tokenizer, capsys):
        argv = ["--model", "my-model", "--adapter", "my-adapter", "--prompt", "Hello"]
        argv += ["--max-new-tokens", "6"]
        assert main(argv) == 0
        expected = ChatSession(llama, tokenizer, max_new_tokens=6).reply("Hello")
        assert capsys.readouterr().out == expected + "\n"
        assert fake_models == [("my-model", "my-adapter")]

    def test_interactive_without_prompt(self, fake_models, monkeypatch, capsys):
        monkeypatch.setattr("builtins.input", _scripted_input(["Hello", "/exit"]))
        assert main(["--max-new-tokens", "4"]) == 0
        assert "/reset" in capsys.readouterr().out

    def test_bad_settings_fail_before_loading_the_model(self, fake_models):
        with pytest.raises(InstructuneError, match="temperature"):
            main(["--prompt", "Hi", "--temperature", "-0.5"])
        assert fake_models == []

    def test_every_option_has_help(self):
        for action in make_parser()._actions:
            assert action.help, action.dest
