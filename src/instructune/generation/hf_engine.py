"""Hugging Face `generate` as an engine: the reference every other engine is tested against, and the fallback.

It runs any model transformers runs (encoder-decoder, quantized, any family) and every decoding
setting (`Decoding`: beam search, n-gram blocking, repetition penalty; `Sampling`), in the model's
own dtype, `request.batch_size` prompts per call, left-padded so every row's answer starts at the
same column. Every setting is passed explicitly, defaults included, so a model's own
generation_config cannot change what a result file records. What it leaves out: continuous batching
and the other speed-ups of the native and OpenVINO engines.
"""

from __future__ import annotations

from typing import Any, Callable

from instructune.data.tokenize import pad_rows
from instructune.generation.engines import Request, Where, cut_at_stop
from instructune.models import is_encoder_decoder

NAME = "hf"
COMPUTE_TYPES: tuple[str, ...] = ()  # the model's own dtype
SEARCHES = True
SAMPLES = True
NEEDS_EXPORT = False
BESIDE_ALLOCATOR = True


def unsupported_reason(model: Any, compute_type: str | None, where: Where) -> str | None:
    """Always None: Hugging Face `generate` runs whatever transformers loaded."""
    return None


def pad_id(tokenizer: Any, stop_ids: list[int]) -> int:
    """The id padding rows get: the tokenizer's pad token, else the first stop token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


def generation_config(model: Any, tokenizer: Any, request: Request) -> Any:
    """A transformers GenerationConfig with every setting of `request` explicit, defaults included.

    Neutral sampling values when greedy, so the knobs a model's own generation_config may carry
    (a Hub model may ship num_beams, top_k or a repetition penalty) play no part.
    """
    from transformers import GenerationConfig

    sampling = request.sampling
    config = GenerationConfig(
        max_new_tokens=request.max_new_tokens, do_sample=sampling is not None, eos_token_id=request.stop_ids,
        pad_token_id=pad_id(tokenizer, request.stop_ids),
        temperature=sampling.temperature if sampling else 1.0, top_p=sampling.top_p if sampling else 1.0,
        top_k=sampling.top_k if sampling else 50, num_return_sequences=request.num_return_sequences,
        **request.decoding.to_dict(),
    )
    if is_encoder_decoder(model):
        config.decoder_start_token_id = model.config.decoder_start_token_id
    return config


def run(model: Any, tokenizer: Any, request: Request, where: Where, on_done: Callable[[int], None]) -> list[list[int]]:
    """New token ids of every prompt (the best beam's, or `num_return_sequences` samples together), in request
    order, each cut before its first stop token. A sampling seed seeds torch's generator for this call only."""
    import torch

    with torch.random.fork_rng(enabled=request.sampling is not None and request.sampling.seed is not None):
        if request.sampling is not None and request.sampling.seed is not None:
            torch.manual_seed(request.sampling.seed)
        return _run(model, tokenizer, request, on_done)


def _run(model: Any, tokenizer: Any, request: Request, on_done: Callable[[int], None]) -> list[list[int]]:
    import torch

    encoder_decoder = is_encoder_decoder(model)
    stop_ids = request.stop_ids
    config = generation_config(model, tokenizer, request)
    per_prompt = request.num_return_sequences
    model.eval()
    answers: list[list[int]] = []
    for start in range(0, len(request.prompts), request.batch_size):
        rows = request.prompts[start:start + request.batch_size]
        input_ids, attention_mask = pad_rows(rows, config.pad_token_id, left=True)
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                                    generation_config=config)
        # Decoder-only output repeats the prompt; seq2seq output starts with the decoder start token.
        new_tokens = output[:, 1:] if encoder_decoder else output[:, input_ids.shape[1]:]
        for offset, row in enumerate(new_tokens.tolist()):  # generate returns each prompt's sequences together
            answers.append(cut_at_stop(row, stop_ids))
            if (offset + 1) % per_prompt == 0:
                on_done(start + offset // per_prompt)
    return answers
