"""What kind of model an object is, asked the same way everywhere: encoder-decoder or not, and the model under a PEFT wrapper.

Both questions are answered here only (tests/test_structure.py checks it), below the family modules
(families.py) and the loader (models/__init__.py), which both ask them.
"""

from __future__ import annotations

from typing import Any


def is_encoder_decoder(model_or_config: Any) -> bool:
    """True for a seq2seq model (T5, BART) or its config; PEFT wrappers answer through their config."""
    config = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(config, "is_encoder_decoder", False))


def unwrapped_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
