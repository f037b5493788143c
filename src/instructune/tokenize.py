"""Turn examples into model inputs: prompt text formatting, token ids and labels (-100 on the prompt).

Two example shapes flow in from the data stages:
- prompt/completion: {"prompt": str, "completion": str, ...}
- chat: {"messages": [{"role": ..., "content": ...}, ...]}, loss on assistant turns only.

Labels are derived from token boundaries, never from token ids, because the default model's pad
token is also its EOS: masking `input_ids == pad_id` would hide the real EOS and the model would
never learn to stop. Packing lives in pack.py.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from .errors import InstructuneError

IGNORE_INDEX = -100


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
        {"input_ids": list[int], "labels": list[int], "truncated": bool}

    Example:
        >>> encode_prompt_completion({"prompt": "2+2?", "completion": "4"}, tok, 512)
        {'input_ids': [..., 30, 2], 'labels': [-100, ..., -100, 30, 2], 'truncated': False}
    """
    prompt_ids = prompt_token_ids(tokenizer, example["prompt"], chat_template)
    completion_ids = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
    completion_ids = completion_ids + [tokenizer.eos_token_id]
    overflow = len(prompt_ids) + len(completion_ids) - max_length
    truncated = overflow > 0
    if truncated:
        # Keep at least a quarter of the budget for the prompt: an answer with no question teaches nothing.
        prompt_keep = max(max_length // 4, max_length - len(completion_ids))
        prompt_ids = prompt_ids[-prompt_keep:] if prompt_keep < len(prompt_ids) else prompt_ids
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        "truncated": truncated,
    }


def _assistant_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and return the character spans of every assistant turn (answer + end token)."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant", "system", "tool"):
            raise ValueError(f"turn {i}: unknown role {message.get('role')!r} (expected user, assistant, system)")
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise ValueError(f"turn {i}: the chat template does not render turns as a growing prefix")
        spans.append((len(before), len(through.rstrip())))
    return full, spans


def encode_messages(example: dict, tokenizer: Any, max_length: int) -> dict:
    """Tokenize a chat example with the tokenizer's chat template; only assistant turns carry loss.

    Returns:
        {"input_ids": list[int], "labels": list[int], "truncated": bool}
    """
    messages = example["messages"]
    if not any(m.get("role") == "assistant" for m in messages):
        raise ValueError("conversation has no assistant turn: nothing to learn from")
    text, spans = _assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, labels = encoded["input_ids"], []
    for token_id, (start, _end) in zip(input_ids, encoded["offset_mapping"]):
        inside = any(lo <= start < hi for lo, hi in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    truncated = len(input_ids) > max_length
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length], "truncated": truncated}


def _tokenize_capped(tokenizer: Any, text: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids with the tokenizer's special tokens, cut by the tokenizer itself (it keeps T5's </s>)."""
    ids = tokenizer(text)["input_ids"]
    if len(ids) <= max_length:
        return ids, False
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"], True


def encode_seq2seq(example: dict, tokenizer: Any, max_length: int) -> dict:
    """Tokenize for an encoder-decoder model: the prompt is the encoder input, the completion + EOS the target.

    Both sides get the tokenizer's own special tokens and no chat template (T5 appends </s>). The
    target always ends in EOS: a tokenizer that does not append it itself gets it here, or the
    decoder would never learn to stop. Too long: each side is cut to max_length by the tokenizer.

    Returns:
        {"input_ids": list[int], "labels": list[int], "truncated": bool}; no -100 in labels.

    Example:
        >>> encode_seq2seq({"prompt": "2+2?", "completion": "4"}, t5_tokenizer, 512)   # </s> is 1
        {'input_ids': [..., 1], 'labels': [..., 1], 'truncated': False}
    """
    if not isinstance(example.get("prompt"), str) or not isinstance(example.get("completion"), str):
        raise ValueError("encoder-decoder models take 'prompt' and 'completion' strings "
                         "(chat 'messages' need a decoder-only model)")
    input_ids, source_cut = _tokenize_capped(tokenizer, example["prompt"], max_length)
    labels, target_cut = _tokenize_capped(tokenizer, example["completion"], max_length)
    eos = tokenizer.eos_token_id
    if labels[-1:] != [eos]:
        labels = labels[: max_length - 1] + [eos]
    return {"input_ids": input_ids, "labels": labels, "truncated": source_cut or target_cut}


def encode_example(
    example: dict, tokenizer: Any, max_length: int, *, encoder_decoder: bool = False,
    chat_template: bool | None = None,
) -> dict:
    """Dispatch on the example's shape (messages or prompt/completion) and the model kind."""
    if encoder_decoder:
        return encode_seq2seq(example, tokenizer, max_length)
    if "messages" in example and example["messages"]:
        return encode_messages(example, tokenizer, max_length)
    return encode_prompt_completion(example, tokenizer, max_length, chat_template)


def tokenize_examples(
    examples: list[dict], tokenizer: Any, max_length: int, *, encoder_decoder: bool = False,
    chat_template: bool | None = None, desc: str = "tokenize",
) -> tuple[list[dict], int]:
    """Encode examples; drop those left with no label. Returns (encoded, truncated count)."""
    encoded, truncated = [], 0
    for index, example in enumerate(tqdm(examples, desc=desc, leave=False, mininterval=1)):
        try:
            item = encode_example(example, tokenizer, max_length, encoder_decoder=encoder_decoder,
                                  chat_template=chat_template)
        except ValueError as error:
            raise InstructuneError(f"example {index}: {error}") from None
        truncated += item["truncated"]
        if any(label != IGNORE_INDEX for label in item["labels"][1:]) or encoder_decoder:
            encoded.append(item)
    return encoded, truncated
