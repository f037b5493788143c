"""GGUF export of Gemma 3 (issue 31.5), read and run by llama.cpp itself (xllamacpp).

What sets the `gemma3` file apart from a Llama one: the SentencePiece-style vocabulary (GGUF tokenizer
model "llama": tokens, scores in merge order, token types), every RMSNorm weight stored as 1 + weight,
the gemma3.* keys (sliding window, both RoPE bases, the layer list where it is not llama.cpp's default),
and Gemma's chat template with <end_of_turn> as the end of a turn. Checked on a tiny Gemma 3 (6 layers,
5 local with a window of 8 and 1 global, 1 KV head, a vocabulary larger than its tokenizer) with a tiny
Gemma-style tokenizer built offline, trained a few seconds so that its answers are confident and end
with <end_of_turn>: llama.cpp renders the template and tokenizes a hard corpus as transformers does,
greedy answers equal transformers' for f32 and f16 (prompts run past the window), q8_0 agreement is
measured and bounded, answers stop at <end_of_turn>. On the real Gemma 3 270M (INSTRUCTUNE_SLOW_TESTS=1,
skipped when it is not cached): the file's vocabulary, keys and norms against the GGUF llama.cpp's own
converter wrote (the model's source), tokenization, and greedy answers.
"""

import copy
import importlib.util
import json
import os

import gguf
import numpy as np
import pytest
import torch

pytest.importorskip("xllamacpp", reason="llama.cpp tests need the xllamacpp wheel: pip install 'instructune[test]'")

from tokenizers import AddedToken, Tokenizer, models as tokenizer_models, normalizers, trainers
from transformers import Gemma3TextConfig, GemmaTokenizer
from transformers.tokenization_utils_base import generate_merges

import tiny
from instructune import models
from instructune.errors import InstructuneError
from instructune.export.gguf import GGUF_TYPES, export_gguf, write_gguf
from instructune.export.merge import main as merge_main
from instructune.export.gguf_tokenizer import (
    BYTE, CONTROL, NORMAL, UNUSED, USER_DEFINED, sentencepiece_vocabulary, tokenizer_kind,
)
from instructune.export.modelfile import chat_pieces, write_modelfile
from instructune.generation.llamacpp_engine import LlamaCppServer, forced_top1_agreement, generate_ids
from instructune.models import gemma3 as gemma_family
from instructune.models.chat_templates import GEMMA
import test_llamacpp as llamacpp_tests
from test_llamacpp import (
    CONVERSATIONS, HARD_CORPUS, PAIRS, UNSEEN, agreement, chat_ids, rounded, tiny_server, train_to_answer,
)
from tiny_gemma import SLIDING_WINDOW, make_gemma3

SPACE = "\u2581"
S, F = "sliding_attention", "full_attention"
# llama.cpp's own layer pattern (every 6th global), so the file needs no layer list.
LAYERS = (S,) * 5 + (F,)
# Gemma-only strings for the tokenizer checks: turn tokens inside text, added plain tokens, runs of
# spaces (user-defined tokens in Gemma's vocabulary), byte-fallback characters.
GEMMA_CORPUS = [
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nok<end_of_turn>\n",
    "<bos> and <eos> inside text, [multimodal] and a fake <start_of_tu rn> <0x41>",
    "two  three   four    five     six      spaces, \t\ttabs\t \n\n\n\n newlines",
    "  ", "   x   ", "\u00e9\u00e8 \u4f60\u597d \U0001f680",
]


def gemma_style_tokenizer() -> GemmaTokenizer:
    """A tiny tokenizer shaped like Gemma 3's, built offline: BPE with byte fallback over text whose spaces are
    "▁", merges derived from the vocabulary order (as transformers derives Gemma's), ids laid out as Gemma's
    (special tokens, turn tokens, added "\\n" runs, "▁" runs up to 8, 256 byte tokens, merged pieces,
    single characters), BOS added, Gemma's chat template."""
    learner = Tokenizer(tokenizer_models.BPE())
    learner.normalizer = normalizers.Replace(" ", SPACE)
    learner.train_from_iterator(tiny._CORPUS * 20, trainers.BpeTrainer(vocab_size=400, show_progress=False))
    learned = [token for token, _ in sorted(learner.get_vocab().items(), key=lambda item: item[1])]
    control = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    plain = ["[multimodal]", "\n", "\n\n", "\n\n\n", "\t", "\t\t"]
    pieces = (control + plain + [SPACE * n for n in range(2, 9)] + [f"<0x{b:02X}>" for b in range(256)]
              + [t for t in learned if len(t) > 1] + [t for t in learned if len(t) == 1])
    vocab = {piece: index for index, piece in enumerate(dict.fromkeys(pieces))}
    merges = generate_merges(vocab, {piece: -index for piece, index in vocab.items()})
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(t, normalized=False, special=True)
                                                                for t in control[4:]]},
                                 replace_extra_special_tokens=False)
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in plain])
    tokenizer.chat_template = GEMMA
    return tokenizer


def tokenizer_json(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def stop_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id]


def hf_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """transformers greedy answers, one prompt at a time, cut before <end_of_turn> or <eos>."""
    return llamacpp_tests.hf_greedy(model, tokenizer, prompts, max_new_tokens, stops=stop_ids(tokenizer))


def read_back(server, tokenizer, texts: list[str], conversations: list[list[dict]]) -> None:
    """llama.cpp's template rendering, tokenization and detokenization equal transformers'.

    llama.cpp drops the template's leading <bos> from the rendered text because the file says a BOS is
    added when tokenizing (`add_bos_token`); tokenized, the prompt is the same."""
    bos = tokenizer.bos_token
    for messages in conversations:
        for generation in (True, False):
            want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            got = server.apply_template(messages, generation)
            assert want == bos + got, (messages, generation)
            assert server.tokenize(got, add_special=True) == tokenizer(want, add_special_tokens=False)["input_ids"]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert server.tokenize(text) == ids, text
        assert server.tokenize(text, add_special=True) == tokenizer(text)["input_ids"], text
        assert server.detokenize(ids) == tokenizer.decode(ids), text


# ---- the vocabulary ----

class TestSentencePieceVocabulary:
    def test_types_and_spellings_are_the_converters(self):
        tokenizer = gemma_style_tokenizer()
        tokens, scores, types = sentencepiece_vocabulary(tokenizer, 1024)
        ids = tokenizer.convert_tokens_to_ids
        assert [types[ids(t)] for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<end_of_turn>")] == [CONTROL] * 5
        assert [types[ids(t)] for t in ("[multimodal]", "\n", "\n\n", "\t")] == [USER_DEFINED] * 4
        # runs of "▁" are Gemma's user-defined runs of spaces, written with real spaces
        assert tokens[ids(SPACE * 3)] == "   " and types[ids(SPACE * 3)] == USER_DEFINED
        assert tokens[ids("<0x41>")] == "<0x41>" and types[ids("<0x41>")] == BYTE and scores[ids("<0x41>")] == 0
        assert types[len(tokenizer):] == [UNUSED] * (1024 - len(tokenizer)) and tokens[-1] == "[PAD1023]"
        assert types[ids("or")] == NORMAL and types[ids("x")] == NORMAL

    def test_scores_follow_the_merge_order(self):
        # llama.cpp merges the best-scoring pair first; transformers applies its merges in list order
        tokenizer = gemma_style_tokenizer()
        _, scores, types = sentencepiece_vocabulary(tokenizer, len(tokenizer))
        made = []
        for merge in tokenizer_json(tokenizer)["model"]["merges"]:
            index = tokenizer.convert_tokens_to_ids("".join(merge))
            if types[index] == NORMAL and index not in made:
                made.append(index)
        assert [scores[index] for index in made] == [-float(i) for i in range(len(made))]
        rest = [scores[i] for i, kind in enumerate(types) if kind == NORMAL and i not in made]  # single characters
        assert rest and max(rest) < min(scores[i] for i in made)

    def test_other_tokenizers_get_one_line_naming_the_supported_kinds(self):
        tokenizer = gemma_style_tokenizer()
        tokenizer.backend_tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])  # Llama 2's prefix space
        with pytest.raises(InstructuneError, match="byte-level BPE tokenizers .* SentencePiece-style BPE with byte "
                                                   "fallback and no prefix space"):
            tokenizer_kind(tokenizer_json(tokenizer))
        assert tokenizer_kind(tokenizer_json(gemma_style_tokenizer())) == "llama"
        assert tokenizer_kind(tokenizer_json(tiny.make_tokenizer())) == "gpt2"


# ---- the family's GGUF side ----

def gguf_config(**overrides) -> Gemma3TextConfig:
    """A small Gemma 3 config llama.cpp runs as written (the layer pattern and attention scale it assumes)."""
    settings = dict(num_hidden_layers=6, layer_types=list(LAYERS), head_dim=16, query_pre_attn_scalar=16,
                    hidden_size=32, num_attention_heads=4, num_key_value_heads=1)
    return Gemma3TextConfig(**{**settings, **overrides})


def read_keys(path) -> dict:
    """The file's key/value pairs, arrays of the tokenizer left out."""
    fields = gguf.GGUFReader(path).fields
    return {k: f.contents() for k, f in fields.items() if not k.startswith("tokenizer.ggml.") or
            k in ("tokenizer.ggml.model", "tokenizer.ggml.pre") or k.endswith(("_id", "_token"))}


class TestGemmaGgufSide:
    def test_every_norm_is_stored_as_one_plus_its_weight_and_projections_as_they_are(self):
        config, weight = gguf_config(), np.linspace(-1, 1, 16, dtype=np.float32)
        for name in ("model.norm.weight", "model.layers.0.input_layernorm.weight",
                     "model.layers.0.post_attention_layernorm.weight", "model.layers.0.pre_feedforward_layernorm.weight",
                     "model.layers.0.post_feedforward_layernorm.weight", "model.layers.0.self_attn.q_norm.weight",
                     "model.layers.0.self_attn.k_norm.weight"):
            assert (gemma_family.gguf_tensor(name, weight, config) == weight + 1).all(), name
        q = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                     "model.embed_tokens.weight"):
            assert gemma_family.gguf_tensor(name, q, config) is q  # llama.cpp rotates Gemma's q/k NEOX style

    def test_what_llama_cpp_would_run_differently_is_refused_in_one_line(self):
        reason = gemma_family.gguf_unsupported_reason
        assert reason(gguf_config()) is None and reason(Gemma3TextConfig()) is None  # Gemma 3 1B's shape
        assert "scales attention by 1/sqrt(16); this model's query_pre_attn_scalar is 24" in reason(
            gguf_config(query_pre_attn_scalar=24))
        assert "soft-capping" in reason(gguf_config(final_logit_softcapping=30.0))
        assert "no attention biases" in reason(gguf_config(attention_bias=True))
        local = gguf_config()
        local.rope_parameters[S] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
        assert "does not scale the sliding-window layers' RoPE" in reason(local)
        yarn = gguf_config()
        yarn.rope_parameters[F] = {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e6}
        assert "default or linear RoPE on global layers" in reason(yarn)
        with pytest.raises(InstructuneError, match="1/sqrt"):
            write_gguf(make_gemma3(gemma_style_tokenizer()), gemma_style_tokenizer(), "/nonexistent/x.gguf", "f32")

    def test_keys_llama_cpp_reads(self, tmp_path):
        tokenizer = gemma_style_tokenizer()
        model = make_gemma3(tokenizer, layer_types=LAYERS, query_pre_attn_scalar=16, vocab_size=1024)
        keys = read_keys(write_gguf(model, tokenizer, tmp_path / "g.gguf", "f32"))
        assert keys["general.architecture"] == "gemma3" and keys["tokenizer.ggml.model"] == "llama"
        assert {k: v for k, v in keys.items() if k.startswith("gemma3.")} == {
            "gemma3.context_length": 512, "gemma3.embedding_length": 32, "gemma3.block_count": 6,
            "gemma3.feed_forward_length": 64, "gemma3.attention.head_count": 4,
            "gemma3.attention.layer_norm_rms_epsilon": pytest.approx(1e-6), "gemma3.attention.key_length": 16,
            "gemma3.attention.value_length": 16, "gemma3.rope.freq_base": 1e6, "gemma3.rope.freq_base_swa": 1e4,
            "gemma3.attention.sliding_window": SLIDING_WINDOW, "gemma3.attention.head_count_kv": 1}
        assert (keys["tokenizer.ggml.bos_token_id"], keys["tokenizer.ggml.eos_token_id"],
                keys["tokenizer.ggml.eot_token_id"], keys["tokenizer.ggml.add_bos_token"]) == (2, 1, 6, True)
        assert keys["tokenizer.chat_template"] == GEMMA
        # a layer pattern llama.cpp would not assume is listed; linear RoPE on the global layers is written
        other = make_gemma3(tokenizer, query_pre_attn_scalar=16, vocab_size=1024)  # local, global, local
        other.config.rope_parameters[F] = {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
        keys = read_keys(write_gguf(other, tokenizer, tmp_path / "o.gguf", "f32"))
        assert keys["gemma3.attention.sliding_window_pattern"] == [True, False, True]
        assert (keys["gemma3.rope.scaling.type"], keys["gemma3.rope.scaling.factor"]) == ("linear", 8.0)


# ---- the tiny model in llama.cpp ----

MAX_NEW_TOKENS = 32
# Measured (tiny model, 13 prompts x 32 tokens, against transformers fp32): see the test's printout.
Q8_BOUNDS = (0.75, 0.97)  # (share of equal answers, share of forced reference tokens ranked first)


@pytest.fixture(scope="module")
def trained():
    """The tiny Gemma 3 (hidden 64, vocabulary 1024 > the tokenizer's ~680) trained ~5 s to answer PAIRS and close
    the turn with <end_of_turn>; (model, tokenizer)."""
    tokenizer = gemma_style_tokenizer()
    model = make_gemma3(tokenizer, layer_types=LAYERS, query_pre_attn_scalar=16, hidden_size=64, vocab_size=1024)
    model.train()
    return train_to_answer(model, tokenizer, lambda q: chat_ids(tokenizer, q), "<end_of_turn>\n"), tokenizer


# gguf_type -> the tiny model's GGUF file, written once: test_llamacpp's fixture, over this module's `trained`.
tiny_files = llamacpp_tests.tiny_files


@pytest.fixture(scope="module")
def reference(trained):
    """(prompts, gguf_type -> transformers greedy answers on the file's weights: rounded for f16, else fp32)."""
    model, tokenizer = trained
    prompts, cache = [q for q, _ in PAIRS] + UNSEEN, {}

    def answers(gguf_type: str):
        key = "f16" if gguf_type == "f16" else "f32"
        if key not in cache:
            cache[key] = hf_greedy(rounded(model, key), tokenizer, prompts, MAX_NEW_TOKENS)
        return cache[key]

    return prompts, answers


class TestTinyGemmaInLlamaCpp:
    @pytest.mark.parametrize("gguf_type", sorted(GGUF_TYPES))
    def test_loads_and_reads_back_template_and_tokenizer(self, trained, tiny_files, gguf_type):
        with tiny_server(tiny_files(gguf_type)) as server:
            assert (server.props()["bos_token"], server.props()["eos_token"]) == ("<bos>", "<eos>")
            read_back(server, trained[1], HARD_CORPUS + GEMMA_CORPUS, CONVERSATIONS)

    @pytest.mark.parametrize("gguf_type", ("f32", "f16"))
    def test_greedy_answers_equal_transformers_past_the_window(self, trained, tiny_files, reference, gguf_type):
        _, tokenizer = trained
        prompts, want = reference
        encoded = [chat_ids(tokenizer, p) for p in prompts]
        assert min(len(row) for row in encoded) > SLIDING_WINDOW  # every prompt runs past the local layers' window
        with tiny_server(tiny_files(gguf_type)) as server:
            got = generate_ids(server, encoded, max_new_tokens=MAX_NEW_TOKENS, stop_ids=stop_ids(tokenizer))
        assert got == want(gguf_type)
        assert [tokenizer.decode(row) for row in got[:len(PAIRS)]] == [a for _, a in PAIRS]

    def test_q8_0_agreement_is_measured_and_bounded(self, trained, tiny_files, reference):
        _, tokenizer = trained
        prompts, want = reference
        encoded = [chat_ids(tokenizer, p) for p in prompts]
        with tiny_server(tiny_files("q8_0")) as server:
            got = generate_ids(server, encoded, max_new_tokens=MAX_NEW_TOKENS, stop_ids=stop_ids(tokenizer))
            top1 = forced_top1_agreement(server, encoded, want("f32"))
        share, first = agreement(got, want("f32"))
        print(f"\ntiny Gemma q8_0: {share:.2f} of {len(prompts)} answers equal transformers fp32, first divergent "
              f"positions {first}; {top1:.3f} of the reference tokens ranked first with the reference forced")
        assert share >= Q8_BOUNDS[0] and top1 >= Q8_BOUNDS[1]
        assert all(position is None for position in first[:len(PAIRS)])  # the confident answers stay

    def test_answers_stop_at_end_of_turn(self, trained, tiny_files):
        # <end_of_turn> is not EOS: the file's eot_token_id makes llama.cpp (and Ollama) stop there
        _, tokenizer = trained
        end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        with tiny_server(tiny_files("f16")) as server:
            for question, answer in PAIRS:
                result = server.complete(chat_ids(tokenizer, question), 64)
                assert result["stop_type"] == "eos" and result["tokens"][-1] == end
                assert result["content"] == answer  # no text past the turn, no "<end_of_turn>" written out


class TestExportCommand:
    def test_model_folder_to_gguf_and_modelfile(self, trained, tmp_path):
        model, tokenizer = trained
        folder = tmp_path / "tuned"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        path, modelfile = export_gguf(tmp_path / "out" / "bot.f16.gguf", "f16", model=str(folder))
        text = modelfile.read_text()
        assert 'PARAMETER stop "<end_of_turn>"' in text and "TEMPLATE" in text and "<bos>" not in text
        # the Modelfile's template writes what llama.cpp renders from the file (both without the BOS they add)
        pieces = chat_pieces(tokenizer).without_start(tokenizer.bos_token)
        with tiny_server(path) as server:
            for messages in CONVERSATIONS:
                assert pieces.render(messages) == server.apply_template(messages)
            assert generate_ids(server, [chat_ids(tokenizer, PAIRS[0][0])], max_new_tokens=MAX_NEW_TOKENS,
                                stop_ids=stop_ids(tokenizer)) == hf_greedy(rounded(model, "f16"), tokenizer,
                                                                            [PAIRS[0][0]], MAX_NEW_TOKENS)


    def test_a_base_model_exported_with_its_familys_template(self, trained, tmp_path):
        # `export --model BASE --gguf f32 --chat-template gemma`: a base model asked in the turns its tuned
        # copy learned (issue 32's chat, base vs tuned): the file carries the template, llama.cpp renders it,
        # the Modelfile stops at <end_of_turn>; `--chat-template none` writes none.
        model, tokenizer = trained
        folder = tmp_path / "base"
        model.save_pretrained(folder)
        plain = copy.deepcopy(tokenizer)
        plain.chat_template = None
        plain.save_pretrained(folder)
        path = tmp_path / "base.f32.gguf"
        assert merge_main(["--model", str(folder), "--gguf", "f32", "--chat-template", "gemma", "-o", str(path)]) == 0
        assert read_keys(path)["tokenizer.chat_template"] == GEMMA
        assert 'PARAMETER stop "<end_of_turn>"' in path.with_suffix(".Modelfile").read_text()
        with tiny_server(path) as server:
            for messages in CONVERSATIONS:
                assert server.apply_template(messages) == tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True).removeprefix(tokenizer.bos_token)
        bare = tmp_path / "bare.f32.gguf"
        assert merge_main(["--model", str(folder), "--gguf", "f32", "--chat-template", "none", "-o", str(bare)]) == 0
        assert "tokenizer.chat_template" not in read_keys(bare)

    def test_a_base_model_without_template_gets_a_modelfile_saying_so(self, tmp_path, capsys):
        tokenizer = gemma_style_tokenizer()
        tokenizer.chat_template = None  # Gemma 3 270M base ships none
        text = write_modelfile(tmp_path / "base.Modelfile", tmp_path / "base.gguf", tokenizer).read_text()
        assert text == 'FROM ./base.gguf\nPARAMETER stop "<eos>"\n'
        assert "the model has no chat template" in capsys.readouterr().out

class TestGgufFileForEvaluation:
    def test_the_file_formats_and_encodes_prompts_as_the_original_bos_included(self, trained, tiny_files):
        # `instructune eval --model FILE.gguf`: llama.cpp renders Gemma's template without the <bos> it adds
        # when tokenizing; the file's tokenizer puts it back, so prompts are the ids transformers gives
        from instructune.data.tokenize import format_prompt, prompt_token_ids
        from instructune.generation import llamacpp_engine

        _, tokenizer = trained
        model, file_tokenizer = llamacpp_engine.load_gguf(tiny_files("f32"), slots=1, ctx_per_slot=256, threads=1)
        try:
            for question, _ in PAIRS:
                assert format_prompt(file_tokenizer, question) == format_prompt(tokenizer, question)
                assert prompt_token_ids(file_tokenizer, question) == prompt_token_ids(tokenizer, question)
                assert prompt_token_ids(file_tokenizer, question)[0] == tokenizer.bos_token_id
        finally:
            model.close()

# ---- the real Gemma 3 270M (INSTRUCTUNE_SLOW_TESTS=1; skipped when it is not converted in the cache) ----

REAL_FOLDER = models.cache_dir() / "models" / models.GEMMA_MODEL
REAL_NEW_TOKENS = 32
# The default model's prompts, and one of ~700 tokens: past the 512-position window of the local layers.
REAL_PROMPTS = llamacpp_tests.DEFAULT_PROMPTS + ["Summarize this dialogue:\n\n" + " ".join(
    f"#Person{1 + i % 2}#: Line {i}: my order {1000 + i} has not arrived and the tracking page says nothing new."
    for i in range(30))]
# Gemma 3 270M (base, with Gemma's template), 5 prompts x 32 tokens against transformers fp32 (f16: on the file's
# rounded weights), Intel Xeon with AMX, xllamacpp 2026.10.11549, 2026-12-07. Measured: equal answers (first
# divergent tokens); reference tokens ranked first with the reference forced:
#   f32 5/5, 1.000; f16 5/5, 1.000; q8_0 4/5 (-, -, -, 10, -), 0.988.
# Bounds on q8_0 (share of equal answers, forced top-1):
REAL_Q8_BOUNDS = (0.6, 0.97)


@pytest.fixture(scope="module")
def real():
    """(Gemma 3 270M in fp32, its tokenizer carrying Gemma's chat template as a tuned model's does)."""
    if not os.environ.get("INSTRUCTUNE_SLOW_TESTS"):
        pytest.skip("INSTRUCTUNE_SLOW_TESTS=1 runs the real Gemma 3 270M checks (~9 min on 2 cores)")
    if not (REAL_FOLDER / "config.json").is_file():
        pytest.skip(f"the real Gemma 3 270M is not converted at {REAL_FOLDER} (pip install 'instructune[gemma]', "
                    "then instructune chat --model gemma3-270m)")
    from transformers import AutoModelForCausalLM

    from instructune.data.tokenize import apply_chat_template_setting

    tokenizer = apply_chat_template_setting(models.load_tokenizer(REAL_FOLDER), "gemma", say=lambda line: None)
    return AutoModelForCausalLM.from_pretrained(REAL_FOLDER, dtype=torch.float32).eval(), tokenizer


def converters_file():
    """The GGUF llama.cpp's converter wrote for Gemma 3 270M (the built-in model's source), or skip."""
    if importlib.util.find_spec(models.GEMMA_PACKAGE) is None:
        pytest.skip(f"the Gemma wheels are not installed ({models.GEMMA_INSTALL})")
    return gguf.GGUFReader(models.find_gemma_gguf())


class TestRealGemma:
    def test_vocabulary_keys_and_norms_equal_the_converters_file(self, real, tmp_path):
        model, tokenizer = real
        theirs = converters_file()
        ours = gguf.GGUFReader(write_gguf(model, tokenizer, tmp_path / "g.f32.gguf", "f32"))
        mine, their = ours.fields, theirs.fields
        assert mine["tokenizer.ggml.tokens"].contents() == their["tokenizer.ggml.tokens"].contents()
        types = np.array(their["tokenizer.ggml.token_type"].contents())
        assert mine["tokenizer.ggml.token_type"].contents() == types.tolist()
        # scores: equal for every token a merge makes; the single characters' follow in the same order,
        # shifted by a constant the original SentencePiece model has and transformers' tokenizer does not
        my_scores = np.array(mine["tokenizer.ggml.scores"].contents())
        their_scores = np.array(their["tokenizer.ggml.scores"].contents())
        shift = np.unique(my_scores - their_scores)
        assert len(shift) == 2 and shift[0] == 0
        assert (np.argsort(-my_scores[types == NORMAL], kind="stable")
                == np.argsort(-their_scores[types == NORMAL], kind="stable")).all()
        print(f"\nGemma 3 270M scores: {(my_scores == their_scores).mean():.4f} equal the converter's, the rest "
              f"shifted by {shift[1]:g}")
        for key, field in their.items():
            if key.startswith("gemma3.") or key in ("tokenizer.ggml.model", "tokenizer.ggml.bos_token_id",
                                                    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                                                    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
                                                    "tokenizer.ggml.add_space_prefix"):
                assert mine[key].contents() == pytest.approx(field.contents()), key
        # every norm (F32 in both files) equal to the bit: 1 + the weight transformers holds
        their_tensors = {t.name: t for t in theirs.tensors if t.tensor_type == gguf.GGMLQuantizationType.F32}
        my_tensors = {t.name: t for t in ours.tensors}
        assert len(their_tensors) == 18 * 6 + 1
        for name, tensor in their_tensors.items():
            assert np.array_equal(np.asarray(my_tensors[name].data), np.asarray(tensor.data)), name

    @pytest.mark.parametrize("gguf_type", ("f32", "f16", "q8_0"))
    def test_llama_cpp_reads_back_and_answers(self, real, gguf_type, tmp_path):
        model, tokenizer = real
        path = write_gguf(model, tokenizer, tmp_path / f"g.{gguf_type}.gguf", gguf_type)
        encoded = [chat_ids(tokenizer, p) for p in REAL_PROMPTS]
        assert max(len(row) for row in encoded) > model.config.sliding_window
        want = hf_greedy(rounded(model, gguf_type), tokenizer, REAL_PROMPTS, REAL_NEW_TOKENS)
        with LlamaCppServer(path, slots=len(encoded), ctx_per_slot=1024, threads=2) as server:
            read_back(server, tokenizer, HARD_CORPUS + GEMMA_CORPUS, CONVERSATIONS)
            got = generate_ids(server, encoded, max_new_tokens=REAL_NEW_TOKENS, stop_ids=stop_ids(tokenizer))
            top1 = forced_top1_agreement(server, encoded, want)
        share, first = agreement(got, want)
        print(f"\nGemma 3 270M {gguf_type}: {share:.2f} of {len(got)} answers equal transformers "
              f"{'f16 weights' if gguf_type == 'f16' else 'fp32'}, first divergent positions {first}; {top1:.3f} of "
              f"the reference tokens ranked first with the reference forced")
        if gguf_type in ("f32", "f16"):
            assert got == want
        else:
            assert share >= REAL_Q8_BOUNDS[0] and top1 >= REAL_Q8_BOUNDS[1]
