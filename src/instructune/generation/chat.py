"""Terminal chat with a base or fine-tuned model: a streamed multi-turn conversation, or one answer.

`instructune chat` loads a model (and optionally a LoRA adapter) and talks to it. The conversation
is rendered with the tokenizer's chat template, so the model sees the same text it was trained on
(the first turn equals `tokenize.format_prompt`). Without a chat template, earlier turns are plain
text and the last turn is `format_prompt`'s plain form. Encoder-decoder models (T5) never get the
chat template: their first turn is the raw message, as their training prompts were. Tokens are
streamed as they are generated; `/reset` clears the history and `/exit`, EOF or Ctrl-C at the
prompt quit. Ctrl-C while the model answers stops that answer only.

Greedy decoding by default; sampling when --temperature > 0, on Hugging Face `generate` with the
settings batch generation passes it (hf_engine.py).

`--model FILE.gguf` talks to that very file in llama.cpp (`GgufChatSession`, llamacpp_engine.py), as
llama.cpp, Ollama or LM Studio would: the file's own chat template rendered by llama.cpp, llama.cpp's
tokenizer and sampler, a LoRA `.gguf` as `--adapter`; a file without a chat template gets plain text,
and says so. Its answers arrive whole, not token by token. Left out: batch generation (generate.py),
conversation saving, and trimming a history longer than the model's context.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any, Callable, TextIO

from instructune.errors import InstructuneError
from instructune.generation import hf_engine, llamacpp_engine
from instructune.generation.engines import Request, Sampling
from instructune.generation.generate import stop_token_ids
from instructune.models import is_encoder_decoder, load_model
from instructune.data.tokenize import format_prompt, uses_chat_template

HELP_TEXT = "Commands: /reset clears the conversation, /exit quits (so do Ctrl-D and Ctrl-C)."


class ChatSession:
    """A conversation with one model: the history, the generation settings, and `reply()`.

    Args:
        model: a transformers causal LM (or encoder-decoder) in eval mode.
        tokenizer: its tokenizer.
        system: optional system message, put before every rendering of the history.
        max_new_tokens: the longest answer, in tokens.
        temperature: 0 for greedy decoding; above 0 samples with this temperature.
        top_p: nucleus sampling mass (only used when sampling).
        chat_template: None = use the tokenizer's chat template when it has one; False = plain text.

    Example:
        >>> session = ChatSession(model, tokenizer, max_new_tokens=32)
        >>> session.reply("Where is my order #48213?")
        'Your order #48213 is on its way and should arrive within 3-5 business days. ...'
        >>> len(session.history)
        2
    """

    def __init__(
        self, model: Any, tokenizer: Any, system: str | None = None, max_new_tokens: int = 256,
        temperature: float = 0.0, top_p: float = 1.0, chat_template: bool | None = None,
    ) -> None:
        _check_generation_settings(max_new_tokens, temperature, top_p)
        self.model = model
        self.tokenizer = tokenizer
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.encoder_decoder = is_encoder_decoder(model)
        # Encoder-decoder models train on the raw prompt (tokenize.encode_seq2seq): no chat template.
        self.use_template = not self.encoder_decoder and uses_chat_template(tokenizer, chat_template)
        self.history: list[dict[str, str]] = []

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.history = []

    def messages(self, user_text: str) -> list[dict[str, str]]:
        """The system message (if any), the history, and `user_text` as the next user turn."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": user_text}]

    def render_prompt(self, user_text: str) -> str:
        """The exact text the model sees before answering `user_text`."""
        if self.use_template:
            return self.tokenizer.apply_chat_template(
                self.messages(user_text), tokenize=False, add_generation_prompt=True
            )
        # Plain text: the last turn looks like a prompt/completion training prompt.
        parts = [self.system + "\n\n"] if self.system else []
        for user, assistant in zip(self.history[::2], self.history[1::2]):
            prompt = format_prompt(self.tokenizer, user["content"], False)
            parts.append(prompt + assistant["content"] + "\n\n")
        parts.append(user_text if self.encoder_decoder else format_prompt(self.tokenizer, user_text, False))
        return "".join(parts)

    def reply(self, user_text: str, stream: Callable[[str], Any] | None = None) -> str:
        """Generate the answer to `user_text` and add both turns to the history.

        Args:
            user_text: the user's message.
            stream: called with each new piece of text as it is generated; None = no streaming.

        Returns:
            The answer, without special tokens or surrounding whitespace.
        """
        answer = self._answer(self.render_prompt(user_text), stream)
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]
        return answer

    def _answer(self, prompt: str, stream: Callable[[str], Any] | None) -> str:
        """The model's answer to the rendered `prompt`, through Hugging Face `generate`."""
        import torch

        # A chat template already writes its special tokens (BOS included); plain text gets the
        # tokenizer's own (e.g. T5's </s>).
        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not self.use_template)
        input_ids = encoded["input_ids"].to(self.model.device)  # (1, T)
        kwargs = dict(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **self._generation_kwargs()
        )
        with torch.no_grad():
            if stream is None:
                output_ids = self.model.generate(**kwargs)
            else:
                output_ids = self._generate_streaming(kwargs, stream)
        new_ids = output_ids[0] if self.encoder_decoder else output_ids[0, input_ids.shape[1]:]
        return self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()

    def _generation_kwargs(self) -> dict[str, Any]:
        # Hugging Face `generate` with the same explicit settings batch generation uses (hf_engine.py).
        sampling = Sampling(self.temperature, self.top_p) if self.temperature > 0 else None
        request = Request(prompts=[], max_new_tokens=self.max_new_tokens,
                          stop_ids=stop_token_ids(self.model, self.tokenizer), sampling=sampling)
        return {"generation_config": hf_engine.generation_config(self.model, self.tokenizer, request)}

    def _generate_streaming(self, kwargs: dict[str, Any], stream: Callable[[str], Any]) -> Any:
        """Run generate in a thread and pass text to `stream` as it comes; Ctrl-C stops it early."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()

        class _StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **_):
                return torch.full((input_ids.shape[0],), stop.is_set(), device=input_ids.device)  # (B,)

        result: dict[str, Any] = {}

        def _run() -> None:
            try:
                result["ids"] = self.model.generate(
                    **kwargs, streamer=streamer, stopping_criteria=StoppingCriteriaList([_StopWhenAsked()])
                )
            except BaseException as error:  # re-raised in the caller's thread below
                result["error"] = error
                streamer.end()

        thread = threading.Thread(target=_run, daemon=True)
        thread.start()
        try:
            for text in streamer:
                stream(text)
        except BaseException:  # Ctrl-C, or a failing `stream` (e.g. a closed pipe): stop generating too
            stop.set()
            thread.join()
            raise
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["ids"]


class GgufChatSession(ChatSession):
    """A conversation with a GGUF file, run by llama.cpp as `llama-server` runs it (llamacpp_engine.py).

    The history and the prompt are `ChatSession`'s, but every step goes through llama.cpp: the prompt
    is the file's own chat template rendered by llama.cpp's Jinja engine (`GgufTokenizer`), tokenized
    by llama.cpp, and answered by llama.cpp's sampler (greedy, or temperature/top-p as
    `llamacpp_engine.sampler_settings`), stopping at the file's end-of-turn and EOS tokens as
    `instructune eval --model FILE.gguf` does. Answers are not streamed: `stream` gets the whole answer.

    Args:
        model, tokenizer: the pair `llamacpp_engine.load_gguf` returns; the rest as `ChatSession`.

    Example:
        >>> model, tokenizer = load_gguf("exported/support-bot.q8_0.gguf", slots=1)
        >>> GgufChatSession(model, tokenizer, max_new_tokens=32).reply("Where is my order?")
        'Your order has shipped and will arrive in three days.'
    """

    def _answer(self, prompt: str, stream: Callable[[str], Any] | None) -> str:
        prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=not self.use_template)
        sampling = Sampling(self.temperature, self.top_p) if self.temperature > 0 else None
        stop_ids = stop_token_ids(self.model, self.tokenizer)  # as eval's llama.cpp path: EOS and end of turn
        [new_ids] = llamacpp_engine.generate_ids(self.model.engine, [prompt_ids], max_new_tokens=self.max_new_tokens,
                                                 stop_ids=stop_ids, sampling=sampling)
        answer = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        if stream is not None:
            stream(answer)
        return answer


def chat_loop(
    session: ChatSession, input_fn: Callable[[str], str] | None = None, output: TextIO | None = None
) -> None:
    """Read user messages and print streamed answers until /exit, EOF or Ctrl-C.

    Args:
        session: the conversation.
        input_fn: reads one line given a prompt string; None = `input` (a fake in tests).
        output: where answers and notices are written; None = sys.stdout at call time.
    """
    input_fn = input_fn or input
    output = output or sys.stdout

    def write(text: str) -> None:
        output.write(text)
        output.flush()

    write(HELP_TEXT + "\n")
    while True:
        try:
            user_text = input_fn(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not user_text:
            continue
        if user_text in ("/exit", "/quit"):
            return
        if user_text == "/reset":
            session.reset()
            write("(conversation cleared)\n")
            continue
        if user_text.startswith("/") and " " not in user_text:
            write(f"unknown command {user_text}. {HELP_TEXT}\n")
            continue
        try:
            session.reply(user_text, stream=write)
        except KeyboardInterrupt:
            write("\n(answer stopped; it is not kept in the conversation)")
        write("\n")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune chat",
        description="Chat with a model in the terminal, or print one answer with --prompt.",
    )
    parser.add_argument("--model", default=None,
                        help="local Hugging Face model folder, a built-in model (default: SmolLM2-135M-Instruct; "
                             "gemma3-270m), or a .gguf file (run in llama.cpp with its own chat template)")
    parser.add_argument("--adapter", default=None,
                        help="LoRA adapter folder to load on top of the model (over a .gguf model: a LoRA .gguf file)")
    parser.add_argument("--prompt", default=None, help="answer this one message, print the answer and exit")
    parser.add_argument("--system", default=None, help="system message put before the conversation")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, in tokens")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 = greedy (deterministic); above 0 samples, higher is more random")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="nucleus sampling: keep the most likely tokens up to this total probability")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="plain-text prompts even if the tokenizer has a chat template "
                             "(match a model trained without one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`instructune chat`: load the model, then chat (or answer --prompt once)."""
    args = make_parser().parse_args(argv)
    # Check the settings before the (slow) model load.
    _check_generation_settings(args.max_new_tokens, args.temperature, args.top_p)
    gguf = args.model is not None and str(args.model).endswith(".gguf")
    model, tokenizer = _load_gguf(args.model, args.adapter) if gguf else load_model(args.model, args.adapter)
    try:
        session = (GgufChatSession if gguf else ChatSession)(
            model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_p=args.top_p,
            chat_template=False if args.no_chat_template else None,
        )
        if gguf and not args.no_chat_template and not session.use_template:
            print(f"chat: {args.model} has no chat template (tokenizer.chat_template); prompts are plain text",
                  file=sys.stderr)
        if args.prompt is not None:
            print(session.reply(args.prompt))
            return 0
        try:
            import readline  # noqa: F401  (arrow keys and line history for input(); absent on Windows)
        except ImportError:
            pass
        chat_loop(session)
        return 0
    finally:
        if gguf:
            model.close()  # llama.cpp's server stops with the chat


def _load_gguf(model_path: str, adapter: str | None) -> tuple[Any, Any]:
    """A GGUF file (and a LoRA GGUF adapter) in llama.cpp: one sequence at a time, slots grown as the history does."""
    return llamacpp_engine.load_gguf(model_path, slots=1, lora=llamacpp_engine.lora_files(adapter))


def _check_generation_settings(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise InstructuneError(f"chat: --max-new-tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise InstructuneError(f"chat: --temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise InstructuneError(f"chat: --top-p must be in (0, 1], got {top_p}")
