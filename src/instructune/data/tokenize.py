"""Turn examples into model inputs: prompt text formatting, token ids and labels (-100 on the prompt).

Two example shapes flow in from the data stages:
- prompt/completion: {"prompt": str, "completion": str, ...}
- chat: {"messages": [{"role": ..., "content": ...}, ...]}, loss on assistant turns only.

The turn format is the tokenizer's chat template, which `apply_chat_template_setting` sets from
`model.chat_template` (a built-in one, a .jinja file, the model family's for a base model that has none,
or none at all); training saves that tokenizer, so every later step writes the same text.

Labels are derived from token boundaries, never from token ids, because the default model's pad
token is also its EOS: masking `input_ids == pad_id` would hide the real EOS and the model would
never learn to stop. Packing lives in pack.py.

Too long examples are cut, never silently: every encoder reports how many prompt and answer tokens it
removed, and `tokenize_examples` (the one function training and `prepare --max-length` both use)
counts the examples whose prompt or answer was cut, those left with no label (dropped) and those
skipped for an empty answer, naming the first rows of each as `file:LINE`. A cut answer never ends in
EOS, for either model kind: an answer that stops mid-sentence must not teach the model to stop there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from jinja2 import TemplateError
from tqdm.auto import tqdm

from instructune.data.sources import record_locations
from instructune.errors import InstructuneError
from instructune.models.chat_templates import answer_tail, chat_template_text, end_of_turn_token
from instructune.models.families import family_of

IGNORE_INDEX = -100
ROLES = ("user", "assistant", "system", "tool")
FIRST_ROWS = 5  # rows a report names per kind of cut; the counts cover them all


def apply_chat_template_setting(tokenizer: Any, setting: bool | str | None, model: Any = None,
                                say: Callable[[str], None] = print) -> Any:
    """The tokenizer a run formats with: `model.chat_template` put on it, so training saves it with the tuned model.

    What the tokenizer carries is what every later step writes: training's prompts and chat turns here,
    and eval, chat and export read the template back from the saved folder with no flag of their own.

    Args:
        tokenizer: the base model's tokenizer; never changed itself.
        setting: `model.chat_template`. None or True: the tokenizer's own template, else the one its
            model family names (models/families.py; "gemma" for Gemma 3, whose base model has none),
            else none. False: none (plain-text prompts; the tokenizer's own template is dropped, so the
            tuned model is evaluated and chatted with in plain text too). A built-in name ("chatml",
            "gemma") or a .jinja path: that template, in place of the tokenizer's own.
        model: the model (or its config), to find its family.
        say: where the one line goes when a family's template is used.

    Returns:
        `tokenizer` when nothing changes, else a copy carrying the template.

    Raises:
        InstructuneError: an unreadable .jinja file, or a template whose end-of-turn token the
            tokenizer lacks (generation could not stop at it), as one line naming the key.

    Example:
        >>> apply_chat_template_setting(gemma_tokenizer, None, gemma_model).chat_template == TEMPLATES["gemma"]
        True
    """
    own = getattr(tokenizer, "chat_template", None)
    if setting is False:
        return tokenizer if not own else _with_template(tokenizer, None)
    if isinstance(setting, str):
        return _with_template(tokenizer, chat_template_text(setting), setting)
    family = family_of(model) if model is not None else None
    name = getattr(family, "CHAT_TEMPLATE", None)
    if own or not name:
        return tokenizer
    say(f"model.chat_template: the model has no chat template; using its family's ({name}); "
        "model.chat_template=false for plain-text prompts")
    return _with_template(tokenizer, chat_template_text(name), name)


def _with_template(tokenizer: Any, text: str | None, setting: str | None = None) -> Any:
    # A shallow copy: the template is a plain attribute; the vocabulary and its backend stay shared, unchanged.
    changed = copy.copy(tokenizer)
    changed.chat_template = text
    if text is not None:
        _check_end_of_turn(changed, setting)
    return changed


def _check_end_of_turn(tokenizer: Any, setting: str | None) -> None:
    """A template's answers must end in one token of the vocabulary, or generation would never stop there."""
    try:
        tail = answer_tail(tokenizer).strip()
    except Exception as error:  # jinja2's syntax errors, the template's raise_exception, transformers' checks
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InstructuneError(f"config key 'model.chat_template': {setting}: the template does not render "
                               f"a user turn and an answer ({reason})") from None
    if tail and end_of_turn_token(tokenizer) is None:
        raise InstructuneError(f"config key 'model.chat_template': {setting} ends an answer with {tail!r}, which is "
                               "not a special token of this tokenizer, so generation could not stop there; "
                               "use the model's own turn format")


def uses_chat_template(tokenizer: Any, chat_template: bool | None = None) -> bool:
    """Whether prompts are wrapped in the tokenizer's chat template (None = auto: when it has one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return has_template if chat_template is None else (chat_template and has_template)


def format_prompt(tokenizer: Any, prompt: str, chat_template: bool | None = None) -> str:
    """The exact text a decoder-only model sees before its answer, at training and at inference alike.

    Args:
        tokenizer: a transformers tokenizer.
        prompt: the rendered instruction (template input).
        chat_template: wrap as one user turn plus the assistant generation prompt; None = when the
            tokenizer has a chat template.

    Example:
        >>> format_prompt(tok, "Hi")   # SmolLM2
        '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM...<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if uses_chat_template(tokenizer, chat_template):
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt if prompt.endswith(("\n", " ")) else prompt + "\n"


def prompt_token_ids(tokenizer: Any, prompt: str, chat_template: bool | None = None) -> list[int]:
    """Token ids of the formatted prompt, exactly as training sees them (use this for generation too).

    With a chat template the rendered text already carries its special tokens, so none are added.
    """
    chat = uses_chat_template(tokenizer, chat_template)
    text = format_prompt(tokenizer, prompt, chat)
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


def encode_prompt_completion(
    example: dict, tokenizer: Any, max_length: int, chat_template: bool | None = None
) -> dict:
    """Tokenize one prompt/completion example for a decoder-only model; loss on the completion + EOS.

    The prompt and the completion are tokenized apart and concatenated, so the prompt tokens are
    the same ones the model sees at generation time. Too long: the prompt loses tokens from its
    start (its end holds the instruction to answer), then the completion from its end.

    Returns:
        {"input_ids": list[int], "labels": list[int], "truncated": bool, "prompt_cut": int,
         "answer_cut": int}; the `*_cut` values count the tokens removed from each side.

    Example:
        >>> encode_prompt_completion({"prompt": "2+2?", "completion": "4"}, tok, 512)
        {'input_ids': [..., 30, 2], 'labels': [-100, ..., -100, 30, 2], 'truncated': False, 'prompt_cut': 0, 'answer_cut': 0}
    """
    prompt_ids = prompt_token_ids(tokenizer, example["prompt"], chat_template)
    completion_ids = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
    completion_ids = completion_ids + [tokenizer.eos_token_id]
    full_prompt, full_completion = len(prompt_ids), len(completion_ids)
    if full_prompt + full_completion > max_length:
        # Keep at least a quarter of the budget for the prompt: an answer with no question teaches nothing.
        prompt_keep = max(max_length // 4, max_length - len(completion_ids))
        prompt_ids = prompt_ids[-prompt_keep:] if prompt_keep < len(prompt_ids) else prompt_ids
        # Cut from the end, EOS first: a cut answer must not teach the model to stop mid-sentence.
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return _encoded(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
                    full_prompt - len(prompt_ids), full_completion - len(completion_ids))


def _encoded(input_ids: list[int], labels: list[int], prompt_cut: int, answer_cut: int,
             truncated: bool | None = None) -> dict:
    """The encoders' common output: ids, labels and how many tokens were cut from each side."""
    truncated = bool(prompt_cut or answer_cut) if truncated is None else truncated
    return {"input_ids": input_ids, "labels": labels, "truncated": truncated,
            "prompt_cut": prompt_cut, "answer_cut": answer_cut}


def _assistant_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and return the character spans of every assistant turn (answer + end token)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat 'messages' need a chat template and the tokenizer has none (model.chat_template "
                         "false drops the model's own): set model.chat_template to chatml, gemma or a .jinja file")
    try:
        full = tokenizer.apply_chat_template(messages, tokenize=False)
    except TemplateError as error:  # the template's own raise_exception, e.g. Gemma's alternating turns
        raise ValueError(f"the chat template refuses this conversation: {error}") from None
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise ValueError(f"turn {i}: the chat template does not render turns as a growing prefix")
        spans.append((len(before), len(through.rstrip())))
    return full, spans


def check_messages(messages: Any) -> None:
    """Check a chat example's `messages`: a non-empty list of turns with a known role and string content.

    Raises:
        ValueError: one line naming the turn, e.g. `turn 1: unknown role 'robot' (expected one of
            user, assistant, system, tool)`; callers add the file and line.

    Example:
        >>> check_messages("hi")
        ValueError: 'messages' must be a list of turns, got a string
    """
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if isinstance(messages, list) else _json_type(messages)
        raise ValueError(f"'messages' must be a list of turns, got {got}")
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i}: expected an object with 'role' and 'content', got {_json_type(turn)}")
        if turn.get("role") not in ROLES:
            raise ValueError(f"turn {i}: unknown role {turn.get('role')!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(turn.get("content"), str):
            raise ValueError(f"turn {i}: 'content' must be a string, got {_json_type(turn.get('content'))}")
    if not any(turn["role"] == "assistant" for turn in messages):
        raise ValueError("conversation has no assistant turn: nothing to learn from")


def _json_type(value: Any) -> str:
    """A value's type as a JSON file spells it, for errors about data files."""
    if value is None:
        return "null"
    names = {bool: "a boolean", str: "a string", dict: "an object", list: "a list", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def encode_messages(example: dict, tokenizer: Any, max_length: int) -> dict:
    """Tokenize a chat example with the tokenizer's chat template; only assistant turns carry loss.

    Too long: the conversation is cut at its end; the removed tokens count as answer cut where they
    carried labels, as prompt cut where an answer follows them (the template's tail counts as neither).

    Returns:
        {"input_ids", "labels", "truncated", "prompt_cut", "answer_cut"} as `encode_prompt_completion`.

    Raises:
        ValueError: the messages are malformed (see `check_messages`).
    """
    messages = example["messages"]
    check_messages(messages)
    text, spans = _assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, labels = encoded["input_ids"], []
    for token_id, (start, _end) in zip(input_ids, encoded["offset_mapping"]):
        inside = any(lo <= start < hi for lo, hi in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    answer_cut = sum(i >= max_length for i in labelled)
    # Cut text before an answer is its prompt; the template's tail after the last answer is neither.
    prompt_cut = max(0, labelled[-1] + 1 - max_length) - answer_cut if labelled else 0
    return _encoded(input_ids[:max_length], labels[:max_length], prompt_cut, answer_cut,
                    truncated=len(input_ids) > max_length)


def _tokenize_capped(tokenizer: Any, text: str, max_length: int) -> tuple[list[int], int]:
    """Token ids with the tokenizer's special tokens, cut by the tokenizer itself (it keeps T5's </s>),
    and how many were cut."""
    ids = tokenizer(text)["input_ids"]
    if len(ids) <= max_length:
        return ids, 0
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"], len(ids) - max_length


def encode_seq2seq(example: dict, tokenizer: Any, max_length: int) -> dict:
    """Tokenize for an encoder-decoder model: the prompt is the encoder input, the completion + EOS the target.

    Both sides get the tokenizer's own special tokens and no chat template (T5 appends </s>). A whole
    target ends in EOS: a tokenizer that does not append it itself gets it here, or the decoder would
    never learn to stop. Too long: the prompt is cut by the tokenizer (the encoder input keeps its
    </s>); the target is cut from its end, EOS first, as the decoder-only path does, so an answer
    cut mid-sentence does not teach the model to stop there.

    Returns:
        {"input_ids", "labels", "truncated", "prompt_cut", "answer_cut"} as `encode_prompt_completion`;
        no -100 in labels.

    Example:
        >>> encode_seq2seq({"prompt": "2+2?", "completion": "4"}, t5_tokenizer, 512)   # </s> is 1
        {'input_ids': [..., 1], 'labels': [..., 1], 'truncated': False, 'prompt_cut': 0, 'answer_cut': 0}
    """
    if not isinstance(example.get("prompt"), str) or not isinstance(example.get("completion"), str):
        raise ValueError("encoder-decoder models take 'prompt' and 'completion' strings "
                         "(chat 'messages' need a decoder-only model)")
    input_ids, prompt_cut = _tokenize_capped(tokenizer, example["prompt"], max_length)
    target = tokenizer(example["completion"])["input_ids"]
    eos = tokenizer.eos_token_id
    if target[-1:] != [eos]:
        target = target + [eos]
    return _encoded(input_ids, target[:max_length], prompt_cut, len(target[max_length:]))


def encode_example(
    example: dict, tokenizer: Any, max_length: int, *, encoder_decoder: bool = False,
    chat_template: bool | None = None,
) -> dict:
    """Dispatch on the example's shape (messages or prompt/completion) and the model kind.

    Raises:
        ValueError: the example is neither shape, or its messages are malformed (one line).
    """
    if encoder_decoder:
        return encode_seq2seq(example, tokenizer, max_length)
    if _is_chat(example):
        return encode_messages(example, tokenizer, max_length)
    return encode_prompt_completion(example, tokenizer, max_length, chat_template)


def _is_chat(example: dict) -> bool:
    """True for a chat example, False for prompt/completion; anything else is a ValueError.

    `messages` wins when set: a file mixing both shapes loads with `messages: null` on its pair rows.
    """
    if example.get("messages") is not None:
        return True
    if isinstance(example.get("prompt"), str) and isinstance(example.get("completion"), str):
        return False
    raise ValueError("expected 'prompt' and 'completion' strings, or 'messages'")


def _has_empty_answer(example: dict) -> bool:
    """An empty or whitespace completion (or assistant turn): training on it teaches answering nothing."""
    if not _is_chat(example):
        return not example["completion"].strip()
    check_messages(example["messages"])
    return any(turn["role"] == "assistant" and not turn["content"].strip() for turn in example["messages"])


@dataclass
class TokenizeReport:
    """What `tokenize_examples` did to one split: examples cut, dropped and skipped, by row.

    The lists hold example indices (all of them); `locations` names the first few of each as
    `file:LINE` (or `example N` for examples not read from a file).
    """

    max_length: int
    examples: int = 0
    lengths: list[int] = field(default_factory=list)  # tokens before cutting, per encoded example
    prompt_cut: list[int] = field(default_factory=list)
    answer_cut: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)  # no label left after cutting
    empty: list[int] = field(default_factory=list)  # skipped: an empty answer teaches answering nothing
    locations: dict[int, str] = field(default_factory=dict)

    KINDS = ("prompt_cut", "answer_cut", "dropped", "empty")

    def to_dict(self) -> dict[str, Any]:
        """Counts and first rows per kind, for summary.json and the run's metrics.

        Example:
            >>> report.to_dict()
            {'examples': 200, 'max_length': 128, 'prompt_cut': {'count': 1, 'first': ['train.jsonl:7']},
             'answer_cut': {'count': 0, 'first': []}, 'dropped': {...}, 'empty': {...}}
        """
        out: dict[str, Any] = {"examples": self.examples, "max_length": self.max_length}
        for kind in self.KINDS:
            rows = getattr(self, kind)
            out[kind] = {"count": len(rows), "first": [self.locations[i] for i in rows[:FIRST_ROWS]]}
        return out

    def _locate(self, source: str | Path | None) -> None:
        first = sorted({i for kind in self.KINDS for i in getattr(self, kind)[:FIRST_ROWS]})
        self.locations = dict(zip(first, _locations(source, first)))


def describe_report(report: dict[str, Any]) -> str:
    """`TokenizeReport.to_dict()` as one line for the terminal (training and `prepare` print the same).

    Example:
        >>> describe_report(report.to_dict())
        '200 examples, max_length 128: prompt cut 1 (train.jsonl:7), answer cut 0, dropped (no label left) 0'
    """
    parts = [describe_rows("prompt cut", report["prompt_cut"]), describe_rows("answer cut", report["answer_cut"]),
             describe_rows("dropped (no label left)", report["dropped"])]
    if report["empty"]["count"]:
        parts.append(describe_rows("skipped (empty answer)", report["empty"]))
    return f"{report['examples']} examples, max_length {report['max_length']}: " + ", ".join(parts)


def describe_rows(label: str, rows: dict[str, Any]) -> str:
    """`label COUNT (first rows, ...)` from a {"count", "first"} entry of a report."""
    if not rows["count"]:
        return f"{label} 0"
    more = ", ..." if rows["count"] > len(rows["first"]) else ""
    return f"{label} {rows['count']} ({', '.join(rows['first'])}{more})"


def _locations(source: str | Path | None, indices: list[int]) -> list[str]:
    if source is None:
        return [f"example {index}" for index in indices]
    return record_locations(source, indices)


def tokenize_examples(
    examples: list[dict], tokenizer: Any, max_length: int, *, encoder_decoder: bool = False,
    chat_template: bool | None = None, desc: str = "tokenize", source: str | Path | None = None,
) -> tuple[list[dict], TokenizeReport]:
    """Encode examples for training; skip those with an empty answer, drop those left with no label.

    The one place that decides what training sees: `Trainer` and `prepare --max-length` both call
    it, so prepare's counts are training's.

    Args:
        examples: prompt/completion or chat examples.
        tokenizer, max_length, encoder_decoder, chat_template: as in `encode_example`.
        desc: progress bar label.
        source: the file the examples were read from (in order), so errors and reports say `file:LINE`.

    Returns:
        (encoded examples, report).

    Raises:
        InstructuneError: a malformed example, as `file:LINE: turn 0: unknown role 'robot' ...`.

    Example:
        >>> encoded, report = tokenize_examples(read_examples("train.jsonl"), tok, 64, source="train.jsonl")
        >>> describe_report(report.to_dict())
        '3 examples, max_length 64: prompt cut 1 (train.jsonl:2), answer cut 0, dropped (no label left) 0'
    """
    report = TokenizeReport(max_length=max_length, examples=len(examples))
    encoded = []
    for index, example in enumerate(tqdm(examples, desc=desc, leave=False, mininterval=1)):
        try:
            if _has_empty_answer(example):
                report.empty.append(index)
                continue
            item = encode_example(example, tokenizer, max_length, encoder_decoder=encoder_decoder,
                                  chat_template=chat_template)
        except ValueError as error:
            raise InstructuneError(f"{_locations(source, [index])[0]}: {error}") from None
        kept = len(item["input_ids"]) + item["prompt_cut"]
        report.lengths.append(max(kept, len(item["labels"]) + item["answer_cut"]) if encoder_decoder
                              else kept + item["answer_cut"])
        if item["prompt_cut"]:
            report.prompt_cut.append(index)
        if item["answer_cut"]:
            report.answer_cut.append(index)
        # The first label of a decoder-only example is never predicted (nothing comes before it).
        if any(label != IGNORE_INDEX for label in item["labels"][0 if encoder_decoder else 1:]):
            encoded.append(item)
        else:
            report.dropped.append(index)
    report._locate(source)
    return encoded, report


def pad_rows(rows: list[list[int]], pad_id: int, *, left: bool = False, width: int | None = None):
    """Token id rows as (ids, attention_mask) tensors of shape (N, width), padded left or right.

    The one place rows become a padded batch: training's collation (labels padded with -100),
    Hugging Face generation (left) and multiple-choice scoring (right). `width` defaults to the
    longest row.

    Example:
        >>> pad_rows([[5, 6, 7], [8]], 0, left=True)[0].tolist()
        [[5, 6, 7], [0, 0, 8]]
    """
    import torch

    width = width or max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
    return ids, attention_mask
