"""An Ollama Modelfile for an exported GGUF: FROM the file, a TEMPLATE equal to the model's chat template, stop tokens.

Ollama does not run Jinja chat templates; it wants a Go template. Rather than translate Jinja, this
file renders the model's own chat template on marker messages and reads off what it puts around each
role's content (prefix, suffix), the default system turn it adds when none is given, and the
generation prompt. Those pieces are then spliced into a fixed Go template. Templates that do not
decompose that way (content-dependent logic, tool calls) get a Modelfile without TEMPLATE and a
printed note. What it leaves out: running Ollama itself, and the GGUF file (gguf.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MARK = {role: f"@@{role.upper()}_CONTENT_7361@@" for role in ("system", "user", "assistant", "user2")}


@dataclass
class ChatPieces:
    """What a chat template writes around each turn: text = head + turns + generation prompt.

    `head` is written before the first turn when it is not a system turn (a default system turn, and
    anything the template writes at the very start); `system[0]` already includes that start text.
    """

    head: str
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str

    def literals(self) -> list[str]:
        return [self.head, *self.system, *self.user, *self.assistant, self.generation]

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """What the spliced template produces for `messages` (the Go template below does the same)."""
        text = "" if messages and messages[0]["role"] == "system" else self.head
        for message in messages:
            prefix, suffix = getattr(self, message["role"])
            text += prefix + message["content"] + suffix
        if add_generation_prompt:
            text += self.generation
        return text


def _split(text: str, mark: str) -> tuple[str, str] | None:
    before, found, after = text.partition(mark)
    return (before, after) if found and mark not in after else None


def chat_pieces(tokenizer: Any) -> ChatPieces | None:
    """Decompose the tokenizer's chat template, or None when it is not a plain per-turn template.

    Example:
        >>> chat_pieces(tokenizer).user      # SmolLM2 (ChatML)
        ('<|im_start|>user\\n', '<|im_end|>\\n')
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
    except Exception:  # a template that raises on these shapes (e.g. requires alternation) is not plain
        return None
    if not (s_u.startswith(with_system) and s_u_a.startswith(s_u) and s_u_a_u.startswith(s_u_a)
            and u_generation.startswith(u)):
        return None
    system, user, assistant = (_split(with_system, _MARK["system"]), _split(s_u_a_u[len(s_u_a):], _MARK["user2"]),
                               _split(s_u_a[len(s_u):], _MARK["assistant"]))
    head = _split(u, _MARK["user"])
    if None in (system, user, assistant, head) or not head[0].endswith(user[0]):
        return None
    pieces = ChatPieces(head[0][: len(head[0]) - len(user[0])], system, user, assistant, u_generation[len(u):])
    # The pieces must reproduce the template on these and on a longer conversation, else it is not plain.
    check = [{"role": r, "content": f"{r} {i}"} for i, r in enumerate(["system", "user", "assistant"] * 2 + ["user"])]
    for messages in (check, check[1:], check[1:4]):
        for generation in (False, True):
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            if pieces.render(messages, generation) != expected:
                return None
    return pieces


def go_template(pieces: ChatPieces) -> str:
    """The Ollama (Go text/template) form of `pieces`; no whitespace trimming, the literals are exact.

    Ollama always asks for a reply, so the generation prompt follows the last message, as the Jinja
    template writes it with add_generation_prompt=True.
    """
    def turn(role: str) -> str:
        prefix, suffix = getattr(pieces, role)
        return f'{{{{ if eq .Role "{role}" }}}}{prefix}{{{{ .Content }}}}{suffix}{{{{ end }}}}'

    return (
        f'{{{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}}}{pieces.head}{{{{ end }}}}'
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + turn("system") + turn("user") + turn("assistant")
        + f"{{{{ if $last }}}}{pieces.generation}{{{{ end }}}}"
        "{{ end }}"
    )


def end_of_turn_token(tokenizer: Any, pieces: ChatPieces | None = None) -> str | None:
    """The special token that closes an assistant turn in the chat template (ChatML's `<|im_end|>`), or None.

    A tuned model ends its answer with it, and it need not be EOS (ChatML models with EOS
    `<|endoftext|>`): llama.cpp and Ollama must be told to stop there, or the model rambles on.

    Example:
        >>> end_of_turn_token(tokenizer)   # SmolLM2
        '<|im_end|>'
    """
    pieces = pieces or chat_pieces(tokenizer)
    if pieces is None:
        return None
    suffix = pieces.assistant[1].lstrip()
    special = {added.content for added in tokenizer.added_tokens_decoder.values() if added.special}
    special |= set(tokenizer.all_special_tokens)
    matches = [token for token in special if token and suffix.startswith(token)]
    return max(matches, key=len) if matches else None


def stop_tokens(tokenizer: Any, pieces: ChatPieces | None) -> list[str]:
    """EOS, the token that ends an assistant turn, and the special tokens that open a turn (a model that
    starts a new turn has finished its own)."""
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    end_of_turn = end_of_turn_token(tokenizer, pieces) if pieces else None
    if end_of_turn and end_of_turn not in stops:
        stops.append(end_of_turn)
    openers = (pieces.user[0] + pieces.assistant[0]) if pieces else ""
    stops += [t for t in tokenizer.all_special_tokens if t in openers and t not in stops]
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
    lines = [f"FROM ./{Path(gguf_path).name}"]
    if pieces is None:
        print(f"note: the chat template does not split into per-turn pieces; {path.name} has no TEMPLATE "
              "(Ollama will send raw prompts)")
    else:
        lines.append(f'TEMPLATE """{go_template(pieces)}"""')
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens(tokenizer, pieces)]
    path.write_text("\n".join(lines) + "\n")
    return path
