"""The chat template's end-of-turn token travels to llama.cpp and Ollama even when it is not EOS (issue 30).

A tuned model ends its answer with the token that closes an assistant turn. llama.cpp stops only at
end-of-generation tokens (EOS, EOT, and texts on its own list such as `<|im_end|>`), Ollama at those and
the Modelfile's stops: a template that closes turns with another token made exported models ramble.
tests/test_llamacpp.py checks that llama.cpp itself stops there.
"""

import gguf

import tiny
from instructune.export.gguf import write_gguf
from instructune.export.modelfile import chat_pieces, stop_tokens
from instructune.models.chat_templates import end_of_turn_token


def turn_end_tokenizer():
    """ChatML-shaped turns closed by <|turn_end|>, a token llama.cpp does not know, with EOS <|endoftext|>."""
    tokenizer = tiny.make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|turn_end|>"]})
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.chat_template = tiny.CHATML_TEMPLATE.replace("<|im_end|>", "<|turn_end|>")
    return tokenizer


def field(path, key):
    found = gguf.GGUFReader(path).fields.get(key)
    return None if found is None else found.contents()


class TestEndOfTurnToken:
    def test_chatml_closes_turns_with_im_end(self, tokenizer):
        assert end_of_turn_token(tokenizer) == "<|im_end|>"

    def test_a_turn_end_that_is_not_eos_becomes_a_modelfile_stop(self):
        tokenizer = turn_end_tokenizer()
        assert end_of_turn_token(tokenizer) == "<|turn_end|>"
        assert stop_tokens(tokenizer, chat_pieces(tokenizer)) == ["<|endoftext|>", "<|turn_end|>", "<|im_start|>"]

    def test_no_chat_template_no_end_of_turn(self, tokenizer):
        plain = tiny.make_tokenizer()
        plain.chat_template = None
        assert end_of_turn_token(plain) is None


class TestEotKey:
    def test_written_when_the_turn_end_is_not_eos(self, tmp_path):
        tokenizer = turn_end_tokenizer()
        path = write_gguf(tiny.make_llama(tokenizer), tokenizer, tmp_path / "m.gguf", "f32")
        assert field(path, "tokenizer.ggml.eot_token_id") == tokenizer.convert_tokens_to_ids("<|turn_end|>")
        assert field(path, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id

    def test_left_out_when_eos_ends_the_turn(self, tokenizer, tmp_path):
        # as llama.cpp's converter writes SmolLM2: the default model's round trip compares every key
        path = write_gguf(tiny.make_llama(tokenizer), tokenizer, tmp_path / "m.gguf", "f32")
        assert field(path, "tokenizer.ggml.eot_token_id") is None
