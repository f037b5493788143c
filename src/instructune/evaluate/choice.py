"""Multiple-choice scoring by log-likelihood, with acc and acc_norm as lm-evaluation-harness defines them.

Each option is scored as the summed log-probability of its continuation tokens given the prompt:
acc takes the argmax of that sum, acc_norm the argmax of the sum divided by the option's length in
characters. Context and continuation are tokenized as training tokenizes prompt and completion
(`prompt_token_ids`, then the option alone), so a tuned model is scored on the very tokens it
learned. The continuation is the option text with no leading space after a context that ends in
whitespace (the chat template's "assistant\n"), one space otherwise (the harness's target delimiter).

The prompt is computed once per example: a batch of left-padded prompts runs through the decoder
with the KV cache, the cache is repeated once per option, and all options of the batch run in a
second forward. Encoder-decoder models encode the prompt once and score each option by the
decoder's log-likelihood. Left out: generative multiple choice (letter answers), calibration.
"""

from __future__ import annotations

from typing import Any

from instructune.errors import InstructuneError
from instructune.evaluate.generate import pad_rows
from instructune.models import is_encoder_decoder
from instructune.tokenize import format_prompt, prompt_token_ids


def _check_example(example: dict, index: int) -> None:
    options = example.get("options")
    if not isinstance(example.get("prompt"), str):
        raise InstructuneError(f"multiple-choice example {index}: expected a 'prompt' string")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) and o.strip() for o in options):
        raise InstructuneError(f"multiple-choice example {index}: expected 'options' as a list of non-empty strings")
    label = example.get("label")
    if not isinstance(label, int) or not 0 <= label < len(options):
        raise InstructuneError(
            f"multiple-choice example {index}: 'label' is {label!r}; expected an option index 0..{len(options) - 1}"
        )


def _continuation_text(context: str, option: str) -> str:
    option = option.strip()
    return option if not context or context[-1].isspace() else " " + option


def _encode_decoder_only(tokenizer: Any, example: dict, chat_template: bool | None):
    """Context ids and each option's ids, tokenized apart and concatenated exactly as training does."""
    context = format_prompt(tokenizer, example["prompt"], chat_template)
    context_ids = prompt_token_ids(tokenizer, example["prompt"], chat_template)
    continuations = [_continuation_text(context, option) for option in example["options"]]
    continuation_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in continuations]
    return context_ids, continuations, continuation_ids


def _encode_encoder_decoder(tokenizer: Any, example: dict):
    context_ids = tokenizer(example["prompt"])["input_ids"]
    continuations = [option.strip() for option in example["options"]]
    continuation_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in continuations]
    return context_ids, continuations, continuation_ids


def _target_logprob_sums(logits, targets, target_mask):
    """Sum over unmasked positions of log p(targets[r, t]). Shapes (R, T, V), (R, T) -> (R,)."""
    logits = logits.float()
    # gather - logsumexp: the log-softmax of the target only, without a second (R, T, V) tensor.
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (R, T)
    return (picked * target_mask).sum(-1)


def _score_batch_decoder_only(model, contexts, continuations, pad_id):
    """Summed continuation logprob of every (example, option) row of one batch, prompts computed once."""
    import torch

    device = model.device
    row_example = torch.tensor([b for b, options in enumerate(continuations) for _ in options], device=device)
    rows = [ids for options in continuations for ids in options]

    # Prompts, left-padded so that every prompt ends at the last column: (B, P)
    context_ids, context_mask = (t.to(device) for t in pad_rows(contexts, pad_id, left=True))
    context_positions = (context_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=context_ids, attention_mask=context_mask, position_ids=context_positions,
        use_cache=True, logits_to_keep=1,
    )
    first_logprobs = out.logits[:, -1].float().log_softmax(-1)  # (B, V): predicts each option's first token
    cont_ids, cont_mask = (t.to(device) for t in pad_rows(rows, pad_id, left=False))  # (R, C)
    sums = first_logprobs[row_example, cont_ids[:, 0]]  # (R,)
    if cont_ids.shape[1] == 1:
        return sums

    # One cache row per option, then every option's tokens in one forward after its prompt.
    cache = out.cache
    cache.reorder_cache(row_example)
    attention_mask = torch.cat([context_mask[row_example], cont_mask], dim=1)  # (R, P + C)
    positions = context_mask.sum(-1)[row_example, None] + torch.arange(cont_ids.shape[1], device=device)
    out = model(input_ids=cont_ids, attention_mask=attention_mask, position_ids=positions, cache=cache)
    # Logits at column j predict continuation token j + 1: (R, C-1, V)
    return sums + _target_logprob_sums(out.logits[:, :-1], cont_ids[:, 1:], cont_mask[:, 1:])


def _score_batch_encoder_decoder(model, contexts, continuations, pad_id):
    """Summed decoder logprob of every option, each example's prompt encoded once."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    device = model.device
    row_example = torch.tensor([b for b, options in enumerate(continuations) for _ in options], device=device)
    rows = [ids for options in continuations for ids in options]
    encoder_ids, encoder_mask = (t.to(device) for t in pad_rows(contexts, pad_id, left=False))
    hidden = model.get_encoder()(input_ids=encoder_ids, attention_mask=encoder_mask).last_hidden_state  # (B, E, D)
    start = model.config.decoder_start_token_id
    targets, target_mask = (t.to(device) for t in pad_rows(rows, pad_id, left=False))  # (R, C)
    decoder_ids = torch.cat([torch.full_like(targets[:, :1], start), targets[:, :-1]], dim=1)
    out = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden[row_example]),
        attention_mask=encoder_mask[row_example], decoder_input_ids=decoder_ids, decoder_attention_mask=target_mask,
    )
    return _target_logprob_sums(out.logits, targets, target_mask)


def score_choices(
    model: Any,
    tokenizer: Any,
    examples: list[dict],
    *,
    batch_size: int = 8,
    chat_template: bool | None = None,
    progress: bool = True,
) -> tuple[dict[str, float], list[dict]]:
    """Score multiple-choice examples by the log-likelihood of each option.

    Args:
        model: a transformers causal LM or seq2seq LM (PEFT-wrapped is fine).
        tokenizer: its tokenizer.
        examples: dicts with "prompt" (str), "options" (list[str]) and "label" (gold option index).
        batch_size: examples per forward pass (all their options run together).
        chat_template: wrap prompts in the tokenizer's chat template; None = when it has one.
        progress: show a tqdm bar over batches.

    Returns:
        (metrics, per_example): metrics {"acc", "acc_norm"} as fractions; per example, in input order,
        {"logprobs": [sum per option], "pred": argmax of sums, "pred_norm": argmax of sums / characters,
        "label", "correct", "correct_norm"}.

    Example:
        >>> metrics, rows = score_choices(model, tokenizer, [
        ...     {"prompt": "The sky is", "options": ["blue", "a sandwich"], "label": 0}])
        >>> metrics
        {'acc': 1.0, 'acc_norm': 1.0}
    """
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise InstructuneError(f"score_choices: batch_size must be >= 1, got {batch_size}")
    if not examples:
        raise InstructuneError("score_choices: no examples to score; expected at least one")
    for index, example in enumerate(examples):
        _check_example(example, index)
    encoder_decoder = is_encoder_decoder(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [
        _encode_encoder_decoder(tokenizer, ex) if encoder_decoder else _encode_decoder_only(tokenizer, ex, chat_template)
        for ex in examples
    ]
    score_batch = _score_batch_encoder_decoder if encoder_decoder else _score_batch_decoder_only
    # Similar prompt lengths share a batch, so little compute goes to padding.
    order = sorted(range(len(examples)), key=lambda i: -len(encoded[i][0]))
    per_example: list[dict] = [{} for _ in examples]
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc="score choices", unit="batch", disable=not progress):
        indices = order[start:start + batch_size]
        with torch.inference_mode():
            sums = score_batch(model, [encoded[i][0] for i in indices], [encoded[i][2] for i in indices], pad_id)
        sums = sums.tolist()
        for index in indices:
            n_options = len(encoded[index][2])
            logprobs, sums = sums[:n_options], sums[n_options:]
            lengths = [len(text) for text in encoded[index][1]]
            pred = max(range(n_options), key=lambda k: logprobs[k])
            pred_norm = max(range(n_options), key=lambda k: logprobs[k] / lengths[k])
            label = examples[index]["label"]
            per_example[index] = {
                "logprobs": logprobs, "pred": pred, "pred_norm": pred_norm, "label": label,
                "correct": pred == label, "correct_norm": pred_norm == label,
            }
    metrics = {
        "acc": sum(row["correct"] for row in per_example) / len(examples),
        "acc_norm": sum(row["correct_norm"] for row in per_example) / len(examples),
    }
    return metrics, per_example
