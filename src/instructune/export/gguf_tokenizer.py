"""A tokenizer as GGUF metadata: vocabulary, token types, merges or scores, special ids, chat template.

llama.cpp does not read `tokenizer.json`. It rebuilds the tokenizer from `tokenizer.ggml.*` keys, in
one of two kinds this file writes, chosen from the tokenizer itself:
- byte-level BPE (GPT-2 style, SmolLM2's; GGUF tokenizer model "gpt2"): the merges, and the
  text-splitting rule (the "pre-tokenizer") named in the file. A wrong name still loads but splits
  text differently from the model's training, which shows as degraded answers. This file chooses
  that name the way llama.cpp's converter does (a fingerprint of known tokenizers) and, for
  tokenizers it does not know, by checking which of llama.cpp's split rules reproduces the
  tokenizer's own encodings.
- SentencePiece-style BPE with byte fallback (Gemma's; GGUF tokenizer model "llama"): llama.cpp
  merges the adjacent pair whose joined token has the highest score, where transformers' tokenizer
  applies its merge list in order. So each token's score is its place in that list (the first merge
  that makes it), which reproduces the tokenizer, and on Gemma 3's vocabulary equals the score
  llama.cpp's converter read from the original SentencePiece model for every token a merge makes.
  Token types as that converter writes them: added special tokens CONTROL, other added tokens and
  Gemma's runs of spaces USER_DEFINED, `<0x..>` byte tokens BYTE. llama.cpp matches user-defined
  tokens in the raw text first, as SentencePiece does, so on Gemma 3 two kinds of text split
  differently from transformers' tokenizer, in our files as in the converter's own: runs of more than
  31 spaces (its longest such token) and a literal "▁" (U+2581) in the text.
What it leaves out: unigram vocabularies (T5) and SentencePiece tokenizers that prepend a space (Llama 2),
which raise an error naming what is supported, and the model weights (gguf.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from instructune.errors import InstructuneError
from instructune.models.chat_templates import end_of_turn_token

# llama.cpp token types (gguf.TokenType): what its tokenizer does with each vocabulary entry.
NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 3, 4, 5, 6
# Scores llama.cpp's converter gives tokens its SentencePiece merging never makes (special, added, padding).
_NOT_MERGED_SCORE = -1000.0
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
SPACE_MARK = "\u2581"  # "▁", SentencePiece's spelling of a space

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


def _tokenizer_json(tokenizer: Any) -> dict:
    """The tokenizer's tokenizer.json as a dict ({} for a slow tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else {}


def tokenizer_kind(spec: dict, name: str = "") -> str:
    """llama.cpp's tokenizer model for a tokenizer.json: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style).

    SentencePiece-style means what Gemma's tokenizer is: BPE with byte fallback over text whose spaces
    became "▁" (a normalizer replacing " "), with no space put in front, so llama.cpp's SentencePiece
    tokenizer with `add_space_prefix` false splits text the same way.

    Example:
        >>> tokenizer_kind(_tokenizer_json(gemma_tokenizer))
        'llama'
    """
    model = spec.get("model") or {}
    if model.get("type") == "BPE" and not model.get("byte_fallback"):
        return "gpt2"
    spaces = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK}
    normalizer = spec.get("normalizer") or {}
    normalizers = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    split = spec.get("pre_tokenizer")  # Gemma's splits at " ", which the normalizer has already replaced: no-op
    no_op_split = split is None or (split.get("type") == "Split" and split.get("pattern") == {"String": " "})
    if model.get("type") == "BPE" and normalizers == [spaces] and no_op_split:
        return "llama"
    raise InstructuneError(
        f"tokenizer {name!r}: GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) and "
        f"SentencePiece-style BPE with byte fallback and no prefix space (Gemma's); this one is "
        f"{model.get('type', 'not a fast tokenizer')}{' with byte fallback' if model.get('byte_fallback') else ''} "
        f"with normalizer {normalizer.get('type')} and pre-tokenizer {(split or {}).get('type')}"
    )


def _typed_tokens(tokenizer: Any, vocab_size: int, spell: Any) -> tuple[list[str], list[int]]:
    """Tokens by id and their llama.cpp types, padded to `vocab_size` with UNUSED "[PAD{id}]" placeholders (as
    llama.cpp's converter writes ids the tokenizer lacks); `spell(token, added_token_or_None)` gives
    (text in the file, type) for each entry the tokenizer has."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # {id: AddedToken}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        text, kind = (f"[PAD{index}]", UNUSED) if token is None else spell(token, added.get(index))
        tokens.append(text)
        types.append(kind)
    return tokens, types


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, and their llama.cpp token types, padded to the model's `vocab_size` (byte-level BPE).

    Added tokens marked special (or shaped like `<|...|>`) are CONTROL: llama.cpp matches them whole
    and does not print them. Other added tokens are USER_DEFINED; ids the tokenizer lacks are UNUSED
    placeholders, as llama.cpp's converter writes them.
    """
    def spell(token: str, added: Any) -> tuple[str, int]:
        if added is None:
            return token, NORMAL
        looks_special = token.startswith("<|") and token.endswith("|>")
        return token, CONTROL if added.special or looks_special else USER_DEFINED

    return _typed_tokens(tokenizer, vocab_size, spell)


def _merge_text(merge: Any) -> str:
    """The token a merge makes; tokenizers writes a merge as a pair (newer) or as "a b" (older)."""
    return "".join(merge) if not isinstance(merge, str) else merge.replace(" ", "", 1)


def sentencepiece_vocabulary(tokenizer: Any, vocab_size: int,
                             merges: list | None = None) -> tuple[list[str], list[float], list[int]]:
    """Tokens by id, their scores and their llama.cpp token types, for a SentencePiece-style tokenizer.

    Scores: a token some merge makes scores -(its place among such tokens, in merge order), so llama.cpp's
    highest-score-first merging applies the merges in transformers' order; the other normal tokens
    (single characters) follow, in id order; byte tokens 0, special, added and padding entries -1000.
    Gemma's runs of two or more spaces are USER_DEFINED tokens written with real spaces (transformers
    spells them "▁▁"): llama.cpp matches those in the raw text, before any merging.

    Args:
        tokenizer: a transformers fast tokenizer whose `tokenizer_kind` is "llama".
        vocab_size: rows of the embedding matrix; ids the tokenizer lacks become UNUSED "[PAD{id}]".
        merges: its merge list (default: read from the tokenizer).

    Example:
        >>> tokens, scores, types = sentencepiece_vocabulary(gemma_tokenizer, 262144)
        >>> tokens[2], types[2], tokens[494], scores[494], tokens[138], types[138]
        ('<bos>', 3, '▁t', -0.0, '  ', 4)
    """
    if merges is None:
        merges = _tokenizer_json(tokenizer)["model"]["merges"]
    def spell(token: str, added: Any) -> tuple[str, int]:
        if added is not None:
            return token, CONTROL if added.special else USER_DEFINED
        if _BYTE_TOKEN.fullmatch(token):
            return token, BYTE
        if len(token) > 1 and set(token) == {SPACE_MARK}:
            return " " * len(token), USER_DEFINED
        return token, NORMAL

    tokens, types = _typed_tokens(tokenizer, vocab_size, spell)
    scores = [0.0 if kind == BYTE else _NOT_MERGED_SCORE for kind in types]
    vocab = tokenizer.get_vocab()
    # (normal token ids in the order merges first make them, then the rest in id order)
    order = {}
    for merge in merges:
        index = vocab.get(_merge_text(merge))
        if index is not None and index < vocab_size and types[index] == NORMAL:
            order.setdefault(index, len(order))
    for index in range(vocab_size):
        if types[index] == NORMAL:
            order.setdefault(index, len(order))
    for index, place in order.items():
        scores[index] = -float(place)
    return tokens, scores, types


def add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> str:
    """Write the tokenizer as `tokenizer.ggml.*` keys plus the chat template.

    Special ids include the chat template's end-of-turn token (`eot_token_id`) when it is not EOS, so
    llama.cpp and Ollama stop there.

    Args:
        writer: a gguf.GGUFWriter.
        tokenizer: a transformers fast tokenizer (byte-level BPE, or SentencePiece-style as Gemma's).
        vocab_size: rows of the embedding matrix; the token list is padded to it.

    Returns:
        The pre-tokenizer name written ("default" for a SentencePiece-style tokenizer, as llama.cpp's
        converter writes it).

    Example:
        >>> add_tokenizer(writer, gemma_tokenizer, 262144)
        'default'
    """
    spec = _tokenizer_json(tokenizer)
    kind = tokenizer_kind(spec, getattr(tokenizer, "name_or_path", ""))
    if max(tokenizer.get_vocab().values()) >= vocab_size:
        raise InstructuneError(f"tokenizer has ids beyond the model's vocab_size {vocab_size}; resize the embeddings")
    if kind == "gpt2":
        pre = pre_tokenizer_name(tokenizer)
        tokens, types = vocabulary(tokenizer, vocab_size)
        writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        # GGUF wants a merge as "a b"
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    else:
        pre = "default"
        tokens, scores, types = sentencepiece_vocabulary(tokenizer, vocab_size, spec["model"]["merges"])
        writer.add_tokenizer_model("llama")  # llama.cpp's name for SentencePiece
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
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
    writer.add_add_space_prefix(False)  # a leading space is part of the text (byte-level BPE, Gemma's)
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and full[:1] == [tokenizer.bos_token_id] != plain[:1])
    if tokenizer.eos_token_id is not None and full[-1:] == [tokenizer.eos_token_id] != plain[-1:]:
        writer.add_add_eos_token(True)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    return pre
