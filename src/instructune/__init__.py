"""instructune: instruction fine-tuning of language models, from raw records to a tuned, evaluated model."""

__version__ = "0.1.0"
