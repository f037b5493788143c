"""An Ollama Modelfile for an exported GGUF: FROM the file, a TEMPLATE equal to the model's chat template, stop tokens.

Ollama does not run Jinja chat templates; it wants a Go template. Rather than translate Jinja, this
file renders the model's own chat template on marker messages and reads off what it puts around each
role's content (prefix, suffix), the default system turn it adds when none is given, and the
generation prompt. Those pieces are then spliced into a fixed Go template. A template with no system
role of its own (Gemma's) folds a first system message into the first user turn: that is read off
too. A BOS the template writes at the start is left out where the tokenizer adds one itself, as
llama.cpp and Ollama do when they tokenize the prompt. Templates that do not decompose that way
(content-dependent logic, tool calls) get a Modelfile without TEMPLATE and a printed note. Contents
go in verbatim: a template that trims them (Gemma's) renders the same for contents without
surrounding whitespace. What it leaves out: running Ollama itself, and the GGUF file (gguf.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from instructune.models.chat_templates import end_of_turn_token, special_tokens

_MARK = {role: f"@@{role.upper()}_CONTENT_7361@@" for role in ("system", "user", "assistant", "user2")}


@dataclass
class ChatPieces:
    """What a chat template writes around each turn: text = head + turns + generation prompt.

    `head` is written before the first turn when it is not a system turn (a default system turn, and
    anything the template writes at the very start); `system[0]` already includes that start text.
    With `system_in_user` (Gemma), a first system message opens the first user turn: `system[0]`
    holds the start text and the user turn's prefix, `system[1]` what separates it from the user's
    words, and that user turn is written without its own prefix.
    """

    head: str
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    system_in_user: bool = False

    def literals(self) -> list[str]:
        return [self.head, *self.system, *self.user, *self.assistant, self.generation]

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """What the spliced template produces for `messages` (the Go template below does the same)."""
        opened_by_system = bool(messages) and messages[0]["role"] == "system"
        text = "" if opened_by_system else self.head
        for i, message in enumerate(messages):
            prefix, suffix = getattr(self, message["role"])
            if self.system_in_user and opened_by_system and i == 1 and message["role"] == "user":
                prefix = ""
            text += prefix + message["content"] + suffix
        if add_generation_prompt:
            text += self.generation
        return text

    def without_start(self, start: str) -> "ChatPieces":
        """The pieces without `start` (a BOS) where they open the text."""
        return replace(self, head=self.head.removeprefix(start),
                       system=(self.system[0].removeprefix(start), self.system[1]))


def _split(text: str, mark: str) -> tuple[str, str] | None:
    before, found, after = text.partition(mark)
    return (before, after) if found and mark not in after else None


def chat_pieces(tokenizer: Any) -> ChatPieces | None:
    """Decompose the tokenizer's chat template, or None when it is not a plain per-turn template.

    Example:
        >>> chat_pieces(tokenizer).user      # SmolLM2 (ChatML)
        ('<|im_start|>user\\n', '<|im_end|>\\n')
        >>> chat_pieces(gemma_tokenizer).system, chat_pieces(gemma_tokenizer).system_in_user
        (('<bos><start_of_turn>user\\n', '\\n\\n'), True)
    """
    if not tokenizer.chat_template:
        return None

    def render(roles: list[str], generation: bool = False) -> str:
        messages = [{"role": role.rstrip("2"), "content": _MARK[role]} for role in roles]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    try:
        with_system = render(["system"])
        s_u = render(["system", "user"])
        s_u_a = render(["system", "user", "assistant"])
        s_u_a_u = render(["system", "user", "assistant", "user2"])
        u = render(["user"])
        u_generation = render(["user"], generation=True)
    except Exception:  # a template that raises on these shapes is not plain
        return None
    if not (s_u_a.startswith(s_u) and s_u_a_u.startswith(s_u_a) and u_generation.startswith(u)):
        return None
    user, assistant = _split(s_u_a_u[len(s_u_a):], _MARK["user2"]), _split(s_u_a[len(s_u):], _MARK["assistant"])
    head = _split(u, _MARK["user"])
    if None in (user, assistant, head) or not head[0].endswith(user[0]):
        return None
    head_text = head[0][: len(head[0]) - len(user[0])]
    system_in_user = _MARK["system"] not in with_system
    if system_in_user:  # no system turn of its own: does the system text open the first user turn?
        opening = _split(s_u, _MARK["system"])
        between = _split(opening[1], _MARK["user"]) if opening else None
        if opening is None or between is None or opening[0] != head[0] or between[1] != user[1]:
            return None
        system = (opening[0], between[0])
    else:
        system = _split(with_system, _MARK["system"])
        if system is None or not s_u.startswith(with_system):
            return None
    pieces = ChatPieces(head_text, system, user, assistant, u_generation[len(u):], system_in_user)
    # The pieces must reproduce the template on these and on longer conversations, else it is not plain.
    # A conversation the template itself refuses (Gemma's allow no system turn after the first) is skipped.
    turns = ["system", "user", "assistant"] * 2 + ["user"]
    check = [{"role": r, "content": f"{r} {i}"} for i, r in enumerate(turns)]
    alternating = [check[0]] + [{"role": r, "content": f"{r} {i}"} for i, r in enumerate(["user", "assistant"] * 2 + ["user"])]
    rendered = 0
    for messages in (check, check[1:], check[1:4], alternating, alternating[1:]):
        for generation in (False, True):
            try:
                expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            except Exception:
                continue
            if pieces.render(messages, generation) != expected:
                return None
            rendered += 1
    return pieces if rendered else None


def go_template(pieces: ChatPieces) -> str:
    """The Ollama (Go text/template) form of `pieces`; no whitespace trimming, the literals are exact.

    Ollama always asks for a reply, so the generation prompt follows the last message, as the Jinja
    template writes it with add_generation_prompt=True.
    """
    def turn(role: str) -> str:
        prefix, suffix = getattr(pieces, role)
        if role == "user" and pieces.system_in_user:  # the user turn a first system message opened has no prefix
            prefix = f'{{{{ if or (ne $i 1) (ne (index $.Messages 0).Role "system") }}}}{prefix}{{{{ end }}}}'
        return f'{{{{ if eq .Role "{role}" }}}}{prefix}{{{{ .Content }}}}{suffix}{{{{ end }}}}'

    return (
        f'{{{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}}}{pieces.head}{{{{ end }}}}'
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + turn("system") + turn("user") + turn("assistant")
        + f"{{{{ if $last }}}}{pieces.generation}{{{{ end }}}}"
        "{{ end }}"
    )


def adds_bos(tokenizer: Any) -> bool:
    """Whether tokenizing text adds the BOS token (Gemma's does; the GGUF's add_bos_token says the same)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos] != tokenizer("a", add_special_tokens=False)["input_ids"][:1]


def stop_tokens(tokenizer: Any, pieces: ChatPieces | None) -> list[str]:
    """EOS, the token that ends an answer (Gemma's `<end_of_turn>`), and the special tokens that open a turn
    (a model that starts a new turn has finished its own)."""
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    end = end_of_turn_token(tokenizer)
    if end and end not in stops:
        stops.append(end)
    openers = (pieces.user[0] + pieces.assistant[0]) if pieces else ""
    stops += sorted(t for t in special_tokens(tokenizer) if t in openers and t not in stops)
    return stops


def write_modelfile(path: str | os.PathLike, gguf_path: str | os.PathLike, tokenizer: Any) -> Path:
    """Write an Ollama Modelfile for `gguf_path` (referenced relative to the Modelfile's folder).

    Returns:
        The Modelfile's path.

    Example:
        >>> write_modelfile("exported/bot.Modelfile", "exported/bot.gguf", tokenizer)
        PosixPath('exported/bot.Modelfile')
    """
    path = Path(path)
    pieces = chat_pieces(tokenizer)
    if pieces is not None and any(bad in piece for piece in pieces.literals() for bad in ("{{", "}}", '"""')):
        pieces = None  # text the Go template or the Modelfile's quoting would misread
    if pieces is not None and adds_bos(tokenizer):
        pieces = pieces.without_start(tokenizer.bos_token)  # Ollama adds the GGUF's BOS when it tokenizes
    lines = [f"FROM ./{Path(gguf_path).name}"]
    if pieces is None:
        why = ("the model has no chat template (a base model: train it with model.chat_template set)"
               if not tokenizer.chat_template else "the chat template does not split into per-turn pieces")
        print(f"note: {why}; {path.name} has no TEMPLATE (Ollama will send raw prompts)")
    else:
        lines.append(f'TEMPLATE """{go_template(pieces)}"""')
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens(tokenizer, pieces)]
    path.write_text("\n".join(lines) + "\n")
    return path
