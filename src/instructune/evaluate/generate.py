"""Batched text generation for evaluation: prompts in, the model's answers out, in input order.

Decoder-only models see each prompt exactly as training formatted it (`format_prompt`, the chat
template when the tokenizer has one); batches are left-padded so every row's answer starts at the
same column, and prompts are sorted by length so rows in a batch carry little padding. Generation
uses the KV cache and stops at EOS or `<|im_end|>`. Encoder-decoder models (T5, FLAN-T5) get the raw
prompt as encoder input and no chat template. Beam search, streaming and stop strings other than end
tokens are left out (chat.py streams).
"""

from __future__ import annotations

from typing import Any

from instructune.errors import InstructuneError
from instructune.models import is_encoder_decoder
from instructune.tokenize import prompt_token_ids

CHAT_END_TOKEN = "<|im_end|>"


def encode_prompt(model: Any, tokenizer: Any, prompt: str, chat_template: bool | None = None) -> list[int]:
    """Token ids of the text the model reads before its answer.

    Decoder-only: `prompt_token_ids`, exactly as training tokenizes the prompt. Encoder-decoder: the
    raw prompt with the tokenizer's own special tokens (T5 appends </s>).

    Example:
        >>> tokenizer.decode(encode_prompt(model, tokenizer, "Hi"))
        '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if is_encoder_decoder(model):
        return tokenizer(prompt)["input_ids"]
    return prompt_token_ids(tokenizer, prompt, chat_template)


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids of the model and tokenizer, plus `<|im_end|>` when the vocabulary has it."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for candidate in (config_eos, tokenizer.eos_token_id):
        ids.extend(candidate if isinstance(candidate, list) else [candidate])
    chat_end = tokenizer.convert_tokens_to_ids(CHAT_END_TOKEN)
    if chat_end is not None and chat_end != tokenizer.unk_token_id:
        ids.append(chat_end)
    return sorted({i for i in ids if i is not None})


def pad_rows(rows: list[list[int]], pad_id: int, *, left: bool):
    """Token id rows as (input_ids, attention_mask) tensors of shape (N, longest row), padded left or right."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


def _cut_at_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position]
    return ids


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    chat_template: bool | None = None,
    progress: bool = True,
) -> list[str]:
    """Generate one answer per prompt, greedy by default.

    Args:
        model: a transformers causal LM or seq2seq LM (PEFT-wrapped is fine).
        tokenizer: its tokenizer.
        prompts: rendered instructions (template inputs), unformatted.
        max_new_tokens: cap on generated tokens per answer.
        batch_size: prompts per `generate` call.
        do_sample: sample instead of greedy decoding; then `temperature` and `top_p` apply.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        chat_template: wrap prompts in the tokenizer's chat template; None = when it has one.
            Ignored for encoder-decoder models.
        progress: show a tqdm bar over batches.

    Returns:
        The decoded new text of each prompt, stripped, in the order of `prompts`.

    Example:
        >>> generate(model, tokenizer, ["Summarize: #Person1#: Hi. #Person2#: Hello."], max_new_tokens=32)
        ['Two people greet each other.']
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    if batch_size < 1 or max_new_tokens < 1:
        raise InstructuneError(f"generate: batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
    if not prompts:
        return []
    encoder_decoder = is_encoder_decoder(model)
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=stop_ids, pad_token_id=pad_id, **sampling
    )
    if encoder_decoder:
        generation_config.decoder_start_token_id = model.config.decoder_start_token_id

    encoded = [encode_prompt(model, tokenizer, prompt, chat_template) for prompt in prompts]
    # Longest first: similar lengths share a batch (less padding), and a memory error shows at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(prompts)
    model.eval()
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        indices = order[start:start + batch_size]
        input_ids, attention_mask = pad_rows([encoded[i] for i in indices], pad_id, left=True)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                generation_config=generation_config,
            )
        # Decoder-only output repeats the prompt; seq2seq output starts with the decoder start token.
        new_tokens = output[:, 1:] if encoder_decoder else output[:, input_ids.shape[1]:]
        for index, row in zip(indices, new_tokens.tolist()):
            answer_ids = _cut_at_stop(row, set(stop_ids))
            answers[index] = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
    return answers
