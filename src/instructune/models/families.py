"""Model families: which module knows a model's architecture, and what falls back when none does.

A family module (llama.py, gemma3.py) holds everything instructune's own code needs to know of one architecture:
the decoder layer its engines run and trace, its GGUF architecture, tensor names and norm convention,
its tokenizer kind and the chat template to use when a model has none. Everything else in instructune
is family-blind: a model of a family with no module still trains, evaluates and chats through
transformers, and `fallbacks` says at run time what it runs without. A new family is one module here,
one line in FAMILIES, and its tests.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from instructune.models import gemma3, llama
from instructune.models.kinds import is_encoder_decoder, unwrapped_model

# transformers model_type -> the family module that covers it.
FAMILIES: dict[str, ModuleType] = {model_type: family for family in (llama, gemma3) for model_type in family.MODEL_TYPES}


def family_of(model_or_config: Any) -> ModuleType | None:
    """The family module of a model (or its config, PEFT wrapper included), or None.

    Example:
        >>> family_of(load_model()[0]).NAME
        'llama'
    """
    config = getattr(model_or_config, "config", model_or_config)
    return FAMILIES.get(getattr(config, "model_type", None))


def engine_unsupported_reason(model: Any) -> str | None:
    """Why instructune's own engines (native, OpenVINO) cannot run `model`, or None: the one eligibility check.

    They run decoder-only models of a known family, unquantized, on the CPU, through the family's layer.

    Example:
        >>> engine_unsupported_reason(t5_model)
        'encoder-decoder models use Hugging Face generate'
    """
    base = unwrapped_model(model)
    config = base.config
    if is_encoder_decoder(config):
        return "encoder-decoder models use Hugging Face generate"
    family = family_of(config)
    if family is None:
        return f"model type {config.model_type!r} is not one of {', '.join(FAMILIES)}"
    if getattr(config, "quantization_config", None) is not None:
        return "quantized models use Hugging Face generate"
    if any(p.device.type != "cpu" for p in base.parameters()):
        return "instructune's engines run on the CPU"
    return family.engine_unsupported_reason(config)


def fallbacks(model_or_config: Any) -> list[str]:
    """What a model of no known family runs without, one phrase each ([] for a known family).

    Example:
        >>> fallbacks(t5_config)
        ["generation on Hugging Face generate (instructune's engines cover gemma3_text, llama, mistral, qwen2)", 'no GGUF export']
    """
    if family_of(model_or_config) is not None:
        return []
    known = ", ".join(sorted(FAMILIES))
    return [f"generation on Hugging Face generate (instructune's engines cover {known})", "no GGUF export"]
