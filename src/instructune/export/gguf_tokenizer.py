"""A byte-level BPE tokenizer as GGUF metadata: vocabulary, merges, token types, special ids, pre-tokenizer name.

llama.cpp does not read `tokenizer.json`. It rebuilds the tokenizer from `tokenizer.ggml.*` keys and
picks the text-splitting rule (the "pre-tokenizer") by a name stored in the file. A wrong name still
loads but splits text differently from the model's training, which shows as degraded answers. This
file chooses that name the way llama.cpp's converter does (a fingerprint of known tokenizers) and,
for tokenizers it does not know, by checking which of llama.cpp's split rules reproduces the
tokenizer's own encodings. What it leaves out: sentencepiece/unigram vocabularies (Llama 2, T5),
which raise an error naming what is supported, and the model weights (gguf.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from instructune.errors import InstructuneError
from instructune.models.chat_templates import end_of_turn_token

# llama.cpp token types (gguf.TokenType): what its tokenizer does with each vocabulary entry.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 6

# llama.cpp's converter names a pre-tokenizer by the sha256 of the token ids a tokenizer gives for one
# check text (convert_hf_to_gguf_update.py, ggml-org/llama.cpp#6920). The text and two of its hashes,
# for the tokenizers this toolkit ships with, are reproduced as data so our files carry the same name.
_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
    "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 "
    "3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785"
    "\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make "
    "it, 'D you like some tea? We'Ve a'lL"
)
_KNOWN_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
}

# The split rules llama.cpp applies for each supported name (llama-vocab.cpp), in its regex dialect,
# applied one after the other. The GPT-2 rule splits off contractions, letter runs, digit runs,
# punctuation runs and whitespace; "smollm" first isolates every digit.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PRE_TOKENIZER_SPLITS = {"gpt-2": [_GPT2_SPLIT], "smollm": [r"\p{N}", _GPT2_SPLIT]}

# Probe texts for tokenizers llama.cpp's table does not know: digits, contractions, code, unicode, runs
# of spaces and newlines, and a chat turn; a split rule must reproduce the tokenizer on all of them.
_PROBES = [
    _CHECK_TEXT,
    "Order 12345 shipped on 2024-03-07 for $1,299.99; call 555-0100.",
    "def f(x):\n    return x**2  # square\n\n\tdone",
    "<|im_start|>user\nWhere's my order?<|im_end|>\n<|im_start|>assistant\nIt's on its way!",
    "Caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001f600   spaces   and\n\n\nnewlines",
]


def llama_cpp_fingerprint(tokenizer: Any) -> str:
    """The sha256 llama.cpp's converter uses to recognise a tokenizer (ids of its check text)."""
    return hashlib.sha256(str(tokenizer.encode(_CHECK_TEXT)).encode()).hexdigest()


def _reproduces(tokenizer: Any, splits: list[str]) -> bool:
    """Whether splitting with `splits` then byte-level BPE gives the tokenizer's own ids on every probe."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    candidate = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    candidate.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rule), behavior="isolated") for rule in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    return all(
        candidate.encode(text, add_special_tokens=False).ids == tokenizer.encode(text, add_special_tokens=False)
        for text in _PROBES
    )


def pre_tokenizer_name(tokenizer: Any) -> str:
    """The `tokenizer.ggml.pre` name llama.cpp should use for this byte-level BPE tokenizer.

    Known tokenizers are recognised by llama.cpp's own fingerprint; others get the first split rule in
    PRE_TOKENIZER_SPLITS that reproduces their encodings of the probe texts.

    Example:
        >>> pre_tokenizer_name(AutoTokenizer.from_pretrained(default_model_path()))
        'smollm'
    """
    known = _KNOWN_TOKENIZERS.get(llama_cpp_fingerprint(tokenizer))
    if known is not None:
        return known
    for name, splits in PRE_TOKENIZER_SPLITS.items():
        if _reproduces(tokenizer, splits):
            return name
    raise InstructuneError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: its pre-tokenizer matches none llama.cpp "
        f"names that instructune can export (supported: {', '.join(PRE_TOKENIZER_SPLITS)})"
    )


def _bpe_model(tokenizer: Any) -> dict:
    """The `model` section of the tokenizer's tokenizer.json; only byte-level BPE is supported."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise InstructuneError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: GGUF export supports byte-level BPE tokenizers "
            f"(GPT-2 style, as SmolLM2's); this one is {model.get('type', 'not a fast tokenizer')}"
        )
    return model


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, and their llama.cpp token types, padded to the model's `vocab_size`.

    Added tokens marked special (or shaped like `<|...|>`) are CONTROL: llama.cpp matches them whole
    and does not print them. Other added tokens are USER_DEFINED; ids the tokenizer lacks are UNUSED
    placeholders, as llama.cpp's converter writes them.
    """
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # {id: AddedToken}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
        elif index in added:
            tokens.append(token)
            looks_special = token.startswith("<|") and token.endswith("|>")
            types.append(CONTROL if added[index].special or looks_special else USER_DEFINED)
        else:
            tokens.append(token)
            types.append(NORMAL)
    return tokens, types


def add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> str:
    """Write the tokenizer as `tokenizer.ggml.*` keys plus the chat template.

    Special ids include the chat template's end-of-turn token (`eot_token_id`) when it is not EOS, so
    llama.cpp and Ollama stop there.

    Args:
        writer: a gguf.GGUFWriter.
        tokenizer: a transformers fast tokenizer (byte-level BPE).
        vocab_size: rows of the embedding matrix; the token list is padded to it.

    Returns:
        The pre-tokenizer name written.
    """
    model = _bpe_model(tokenizer)
    if max(tokenizer.get_vocab().values()) >= vocab_size:
        raise InstructuneError(f"tokenizer has ids beyond the model's vocab_size {vocab_size}; resize the embeddings")
    pre = pre_tokenizer_name(tokenizer)
    tokens, types = vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # tokenizers writes a merge as a pair (newer) or as "a b" (older); GGUF wants "a b".
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for key, token_id in (
        ("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
        ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id),
    ):
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(token_id)
    # The token that ends an assistant turn, when it is not EOS: llama.cpp (and Ollama over it) stops at
    # end-of-generation tokens only, which are EOS, EOT and the texts on its own list (<|im_end|>,
    # <|eot_id|>...). A template closing turns with another token would otherwise ramble on.
    end_of_turn = end_of_turn_token(tokenizer)
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn else None
    if end_of_turn_id is not None and end_of_turn_id != tokenizer.eos_token_id:
        writer.add_eot_token_id(end_of_turn_id)
    # Whether the tokenizer itself adds BOS/EOS around a plain encode; llama.cpp follows these flags.
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    writer.add_add_space_prefix(False)  # byte-level BPE: a leading space is part of the text
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and full[:1] == [tokenizer.bos_token_id] != plain[:1])
    if tokenizer.eos_token_id is not None and full[-1:] == [tokenizer.eos_token_id] != plain[-1:]:
        writer.add_add_eos_token(True)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    return pre
