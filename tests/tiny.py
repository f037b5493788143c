"""Tiny randomly initialised models and a byte-level BPE tokenizer, built offline (as transformers' tests do).

The tokenizer mirrors SmolLM2's conventions: a ChatML chat template with a default system turn, and
pad == eos == <|im_end|>, so tests exercise the same edge cases as the real default model.
`train_capturing_first_grads` runs a Trainer and keeps the gradients of its first optimizer step, for
the gradient-accumulation tests of both model kinds.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Summarize the dialogue. #Person1#: Hello, how are you? #Person2#: I am fine, thank you.",
    "Where is my order? Your order has shipped and will arrive in three days.",
    "I want a refund for my purchase. I have started the refund process for you.",
    "How do I reset my password? Click the link in the email we sent you.",
    "Question: which option is correct? Answer: yes no maybe the first one the second one.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,:;'\"()[]{}-_/\\",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def make_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_llama(tokenizer, seed: int = 0, hidden_size: int = 32) -> LlamaForCausalLM:
    import torch

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def make_t5(tokenizer, seed: int = 0) -> T5ForConditionalGeneration:
    import torch

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5ForConditionalGeneration(config)


def save_tiny_llama(path: Path, seed: int = 0, hidden_size: int = 32) -> Path:
    """hidden_size 64 or more for 4-bit tests: bitsandbytes quantizes in blocks of 64."""
    tokenizer = make_tokenizer()
    make_llama(tokenizer, seed, hidden_size).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_capturing_first_grads(trainer) -> tuple[dict, dict]:
    """Set up and run a Trainer, keeping the gradients its first optimizer step sees.

    Returns:
        ({parameter name: gradient tensor}, the summary `trainer.train()` returns).
    """
    trainer.setup()
    grads = []
    step = trainer.optimizer.step

    def capture_then_step(*args, **kwargs):
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = capture_then_step
    summary = trainer.train()
    return grads[0], summary


def run_trainer(config, **kwargs):
    """Set up and run a quiet Trainer; the summary lands on `trainer.summary`."""
    from instructune.train.trainer import Trainer

    trainer = Trainer(config, progress=False, **kwargs)
    trainer.setup()
    trainer.summary = trainer.train()
    return trainer
