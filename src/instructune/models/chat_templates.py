"""Built-in chat templates for models that ship none, and the token that ends a turn in any template.

A base model (Gemma 3 270M) has no chat template: instruction-tuning it must pick a turn format, and
every step after training must write the same one. `model.chat_template` names it (config.py), and
data/tokenize.py puts it on the tokenizer that training uses and saves. Two formats are built in:
- "chatml": `<|im_start|>{role}\\n{content}<|im_end|>\\n` per turn (SmolLM2, Qwen), with no default
  system turn;
- "gemma": Gemma's own turns, `<bos><start_of_turn>user\\n{content}<end_of_turn>\\n` and `model` for the
  assistant. Gemma has no system role: a system message opens the first user turn, followed by a
  blank line, as Gemma's template does; turns must alternate user, assistant, user, ...
`end_of_turn_token` reads off any template (built in, a model's own, a .jinja file) the special token
that closes an assistant turn, so generation stops there. What it leaves out: choosing the template
for a run (data/tokenize.py: apply_chat_template_setting) and its Ollama form (export/modelfile.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instructune.errors import InstructuneError

# ChatML, with no default system turn (SmolLM2's own template adds one; a built-in format should not).
CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Gemma's turn format: BOS once, user and model turns only, contents trimmed as Gemma's template trims
# them; a system message's text and a blank line open the first user turn.
GEMMA = (
    "{{- bos_token -}}"
    "{%- set has_system = messages | length > 0 and messages[0]['role'] == 'system' -%}"
    "{%- set opening = messages[0]['content'] + '\\n\\n' if has_system else '' -%}"
    "{%- for message in (messages[1:] if has_system else messages) -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Gemma turns alternate user, assistant, user, ... after an optional first system "
    "message; turn ' ~ (loop.index0 + (1 if has_system else 0)) ~ ' is ' ~ message['role']) -}}"
    "{%- endif -%}"
    "{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' -}}"
    "{{- (opening if loop.first else '') + message['content'] | trim -}}"
    "{{- '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

TEMPLATES: dict[str, str] = {"chatml": CHATML, "gemma": GEMMA}
_MARK = "@@ANSWER_5813@@"


def chat_template_text(setting: str) -> str:
    """The Jinja text of a `model.chat_template` value that names a template: a built-in name or a .jinja file.

    Raises:
        InstructuneError: one line naming the key and the file, e.g. `config key 'model.chat_template':
            chat.jinja: not UTF-8 text`.

    Example:
        >>> chat_template_text("chatml")[:40]
        "{%- for message in messages -%}{{- '<|im"
    """
    if setting in TEMPLATES:
        return TEMPLATES[setting]
    path = Path(setting).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InstructuneError(f"config key 'model.chat_template': {setting}: chat template file not found") from None
    except UnicodeDecodeError:
        raise InstructuneError(f"config key 'model.chat_template': {setting}: not UTF-8 text") from None
    except OSError as error:
        raise InstructuneError(f"config key 'model.chat_template': {setting}: cannot read ({error.strerror})") from None
    if not text.strip():
        raise InstructuneError(f"config key 'model.chat_template': {setting}: the file is empty")
    return text


def answer_tail(tokenizer: Any) -> str:
    """What the tokenizer's chat template writes right after an assistant's answer (leading whitespace dropped).

    Raises:
        Exception: whatever the template raises (jinja2's errors, its own raise_exception).

    Example:
        >>> answer_tail(gemma_tokenizer)
        '<end_of_turn>\n'
    """
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARK}]
    return tokenizer.apply_chat_template(messages, tokenize=False).partition(_MARK)[2].lstrip()


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The special token the tokenizer's chat template writes right after an assistant's answer, or None.

    Read off the template itself, so it holds for any template: `<|im_end|>` for ChatML,
    `<end_of_turn>` for Gemma, a .jinja file's own.

    Example:
        >>> end_of_turn_token(gemma_tokenizer)
        '<end_of_turn>'
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        after = answer_tail(tokenizer)
    except Exception:  # a template that refuses this conversation (tools only, say): no token to read
        return None
    found = [token for token in special_tokens(tokenizer) if after.startswith(token)]
    return max(found, key=len) if found else None


def special_tokens(tokenizer: Any) -> set[str]:
    """The tokenizer's special tokens: its named ones and every added token marked special (Gemma's
    `<start_of_turn>` and `<end_of_turn>` are only the latter); not added plain text such as Gemma's "\n".

    Example:
        >>> {"<end_of_turn>", "\n"} & special_tokens(gemma_tokenizer)
        {'<end_of_turn>'}
    """
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {token for token in tokenizer.all_special_tokens if token} | {
        added_token.content for added_token in added.values() if added_token.special and added_token.content}
