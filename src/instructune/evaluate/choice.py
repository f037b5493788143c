"""Multiple-choice scoring by log-likelihood, in two named modes, with acc and acc_norm.

Each option is scored as the summed log-probability of its continuation tokens given the prompt:
acc takes the argmax of that sum, acc_norm the argmax of the sum divided by the option's length in
characters. The modes differ in how prompt and option become tokens:

- "instruct": context and continuation are tokenized as training tokenizes prompt and completion
  (`prompt_token_ids`, usually through the chat template, then the option alone), so a tuned model
  is scored on the very tokens it learned. The continuation is the option text with no leading space
  after a context that ends in whitespace (a plain prompt gets "\n"), one space otherwise.
- "lm-eval": lm-evaluation-harness 0.4's rules. No chat template; the continuation is " " + option
  (its target delimiter), trailing whitespace of the context moves into the continuation, and
  context + continuation are tokenized whole and split after the context's own tokens; acc_norm
  divides by the option's characters without the delimiter.

The prompt is computed once per example: a decoder-only model scores each context followed by all
its options in one tree-packed row, many items per forward pass and no padding between them
(choice_pack.py). Encoder-decoder models encode the prompt once and score each option by the
decoder's log-likelihood, in batches of items. Left out: generative multiple choice (letter
answers), calibration.
"""

from __future__ import annotations

from typing import Any

from instructune.data.templates import EVAL_MODES
from instructune.data.tokenize import format_prompt, pad_rows, prompt_token_ids
from instructune.errors import InstructuneError
from instructune.evaluate.choice_pack import score_packed
from instructune.generation import llamacpp_engine
from instructune.models import is_encoder_decoder


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
    return [context_ids] * len(continuation_ids), continuations, continuation_ids


def _encode_encoder_decoder(tokenizer: Any, example: dict):
    context_ids = tokenizer(example["prompt"])["input_ids"]
    continuations = [option.strip() for option in example["options"]]
    continuation_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in continuations]
    return [context_ids] * len(continuation_ids), continuations, continuation_ids


def encode_lm_eval(tokenizer: Any, context: str, option: str, *, encoder_decoder: bool = False):
    """One (context, option) pair tokenized by lm-evaluation-harness 0.4's rule for multiple choice.

    The continuation is " " + option; whitespace that ends the context moves to the continuation's
    start; a decoder-only model's tokens are those of context + continuation encoded whole, split
    after as many tokens as the context alone encodes to (an encoder-decoder's are encoded apart).
    An empty context is the end-of-text token.

    Args:
        tokenizer: a transformers tokenizer (its own special-token default applies, as in the harness).
        context: the rendered prompt, no chat template.
        option: the option text, as it is (not stripped).
        encoder_decoder: encode the continuation apart from the context.

    Returns:
        (context_ids, continuation_ids).

    Example:
        >>> encode_lm_eval(tok, "Question: Open a jar\nAnswer:", "Twist the lid")   # SmolLM2
        ([17872, 42, 7115, 253, 19244, 198, 21350, 42], [44947, 260, 19033])
    """
    continuation = " " + option
    moved = len(context) - len(context.rstrip())
    if moved:
        context, continuation = context[:-moved], context[-moved:] + continuation
    if not context:
        eot = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        return ([eot], ids) if ids[:1] != [eot] else (ids[:1], ids[1:])
    context_ids = tokenizer(context)["input_ids"]
    if encoder_decoder:
        return context_ids, tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return context_ids, tokenizer(context + continuation)["input_ids"][len(context_ids):]


def _encode_lm_eval_example(tokenizer: Any, example: dict, encoder_decoder: bool):
    """Context ids per option, the option texts (acc_norm's lengths) and each option's continuation ids."""
    pairs = [encode_lm_eval(tokenizer, example["prompt"], option, encoder_decoder=encoder_decoder)
             for option in example["options"]]
    # Kept per option: options with equal context ids share one context in the packed forward
    # (choice_pack.build_segments), any other gets its own copy.
    return [context for context, _ in pairs], list(example["options"]), [continuation for _, continuation in pairs]


def _target_logprob_sums(logits, targets, target_mask):
    """Sum over unmasked positions of log p(targets[r, t]). Shapes (R, T, V), (R, T) -> (R,)."""
    logits = logits.float()
    # gather - logsumexp: the log-softmax of the target only, without a second (R, T, V) tensor.
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (R, T)
    return (picked * target_mask).sum(-1)


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


def _score_encoder_decoder(model, encoded, batch_size, pad_id, on_items_done) -> list[float]:
    """Every option's sum, items in order; batches of items with similar prompt lengths."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0][0]))
    by_item: list[list[float]] = [[] for _ in encoded]
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        # An encoder-decoder's prompt is encoded alone, so every option of an item has the same one.
        sums = _score_batch_encoder_decoder(model, [encoded[i][0][0] for i in indices],
                                            [encoded[i][2] for i in indices], pad_id).tolist()
        for index in indices:
            by_item[index], sums = sums[:len(encoded[index][2])], sums[len(encoded[index][2]):]
        on_items_done(len(indices))
    return [value for sums in by_item for value in sums]


def score_choices(
    model: Any,
    tokenizer: Any,
    examples: list[dict],
    *,
    batch_size: int = 8,
    chat_template: bool | None = None,
    mode: str = "instruct",
    progress: bool = True,
    row_tokens: int = 256,
    batch_tokens: int = 2048,
) -> tuple[dict[str, float], list[dict]]:
    """Score multiple-choice examples by the log-likelihood of each option.

    Args:
        model: a transformers causal LM or seq2seq LM (PEFT-wrapped is fine).
        tokenizer: its tokenizer.
        examples: dicts with "prompt" (str), "options" (list[str]) and "label" (gold option index).
        batch_size: encoder-decoder models: examples per forward pass (all their options run together).
            Decoder-only models pack by tokens instead (row_tokens, batch_tokens).
        chat_template: wrap prompts in the tokenizer's chat template; None = when it has one
            ("instruct" mode only: "lm-eval" never uses it, and True is an error there).
        mode: "instruct" (training's tokenization) or "lm-eval" (lm-evaluation-harness 0.4's rules);
            see the module docstring.
        progress: show a tqdm bar with items/s and the time left.
        row_tokens: decoder-only: items (a context and its options) packed into one row up to this
            many tokens; attention costs the square of a row's length.
        batch_tokens: decoder-only: rows x row length per forward pass; memory grows with it (the
            logits of its scored tokens, x the vocabulary, in float32).

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

    if min(batch_size, row_tokens, batch_tokens) < 1:
        raise InstructuneError(f"score_choices: batch_size, row_tokens and batch_tokens must be >= 1, "
                               f"got {batch_size}, {row_tokens}, {batch_tokens}")
    if mode not in EVAL_MODES:
        raise InstructuneError(f"score_choices: mode {mode!r}; expected one of {', '.join(EVAL_MODES)}")
    if mode == "lm-eval" and chat_template:
        raise InstructuneError("score_choices: mode 'lm-eval' scores plain text; drop chat_template=True (or use mode 'instruct')")
    if not examples:
        raise InstructuneError("score_choices: no examples to score; expected at least one")
    for index, example in enumerate(examples):
        _check_example(example, index)
    encoder_decoder = is_encoder_decoder(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if mode == "lm-eval":
        encoded = [_encode_lm_eval_example(tokenizer, ex, encoder_decoder) for ex in examples]
    elif encoder_decoder:
        encoded = [_encode_encoder_decoder(tokenizer, ex) for ex in examples]
    else:
        encoded = [_encode_decoder_only(tokenizer, ex, chat_template) for ex in examples]
    for index, (contexts, _, _) in enumerate(encoded):
        if not all(contexts):
            raise InstructuneError(f"multiple-choice example {index}: the prompt encodes to no tokens; expected a non-empty prompt")
    model.eval()
    bar = tqdm(total=len(examples), desc=f"score choices ({mode})", unit="item", disable=not progress)
    with torch.inference_mode():
        if encoder_decoder:
            sums = _score_encoder_decoder(model, encoded, batch_size, pad_id, bar.update)
        elif isinstance(model, llamacpp_engine.GgufModel):
            sums = llamacpp_engine.score_items(model.engine, [(contexts, continuations) for contexts, _, continuations
                                                              in encoded], on_items_done=bar.update)
        else:
            sums = score_packed(model, [(contexts, continuations) for contexts, _, continuations in encoded],
                                row_tokens=row_tokens, batch_tokens=batch_tokens, on_items_done=bar.update)
    bar.close()
    per_example: list[dict] = []
    offset = 0
    for example, (_, texts, _) in zip(examples, encoded):
        logprobs, offset = sums[offset:offset + len(texts)], offset + len(texts)
        lengths = [len(text) for text in texts]
        pred = max(range(len(texts)), key=lambda k: logprobs[k])
        pred_norm = max(range(len(texts)), key=lambda k: logprobs[k] / lengths[k])
        label = example["label"]
        per_example.append({
            "logprobs": logprobs, "pred": pred, "pred_norm": pred_norm, "label": label,
            "correct": pred == label, "correct_norm": pred_norm == label,
        })
    metrics = {
        "acc": sum(row["correct"] for row in per_example) / len(examples),
        "acc_norm": sum(row["correct_norm"] for row in per_example) / len(examples),
    }
    return metrics, per_example
