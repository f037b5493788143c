"""Chat templates for models that have none: the built-in formats render what their families write, and the
template a run is configured with is the text at every step: training, the saved model, eval, chat, the
merged export, the GGUF file, the Ollama Modelfile, and llama.cpp's own rendering of that GGUF."""

import importlib.util
import json
import urllib.request
from types import SimpleNamespace

import gguf
import pytest
from jinja2 import TemplateError

import tiny
from instructune import models
from instructune.config import CHAT_TEMPLATE_NAMES, load_config
from instructune.data.tokenize import apply_chat_template_setting, prompt_token_ids, tokenize_examples
from instructune.errors import InstructuneError
from instructune.export.gguf import export_gguf
from instructune.export.merge import export_merged
from instructune.export.modelfile import chat_pieces
from instructune.generation.chat import ChatSession
from instructune.generation.generate import encode_prompt, stop_token_ids
from instructune.models import families, load_model
from instructune.models.chat_templates import CHATML, GEMMA, TEMPLATES, end_of_turn_token

GEMMA_SPECIALS = {"bos_token": "<bos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
CONVERSATIONS = [
    [{"role": "user", "content": "Where is my order?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Refund, please.\nOrder 12345."}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
     {"role": "user", "content": "U2"}],
]
EXAMPLES = [
    {"prompt": "Where is my order?", "completion": "It has shipped."},
    {"prompt": "I want a refund.", "completion": "Done."},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}]},
    {"prompt": "Say yes.", "completion": "yes"},
]


def gemma_like_tokenizer(template: str | None = None):
    """The tiny byte-level tokenizer with Gemma's turn tokens and BOS added, and no chat template (a base model's)."""
    tokenizer = tiny.make_tokenizer()
    tokenizer.add_special_tokens(GEMMA_SPECIALS)
    tokenizer.chat_template = template
    return tokenizer


def render(tokenizer, messages, generation=True):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


@pytest.fixture(scope="module")
def gemma_tokenizer():
    return gemma_like_tokenizer(GEMMA)


class TestBuiltinTemplates:
    def test_the_built_in_names_are_the_ones_config_accepts(self):
        assert tuple(TEMPLATES) == CHAT_TEMPLATE_NAMES

    def test_gemma_writes_gemmas_turns(self, gemma_tokenizer):
        # Gemma's format (FIELD-NOTES 2026-12-06): <bos><start_of_turn>user\n{msg}<end_of_turn>\n<start_of_turn>model\n
        assert render(gemma_tokenizer, CONVERSATIONS[0]) == (
            "<bos><start_of_turn>user\nWhere is my order?<end_of_turn>\n<start_of_turn>model\n")
        assert render(gemma_tokenizer, CONVERSATIONS[2], generation=False) == (
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nRefund, please.\nOrder 12345.<end_of_turn>\n")

    def test_gemma_folds_a_system_message_into_the_first_user_turn(self, gemma_tokenizer):
        assert render(gemma_tokenizer, CONVERSATIONS[1]) == (
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")
        assert render(gemma_tokenizer, CONVERSATIONS[3]) == (
            "<bos><start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"
            "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n")

    def test_gemma_trims_contents_as_gemmas_template_does(self, gemma_tokenizer):
        assert render(gemma_tokenizer, [{"role": "user", "content": "  Hi \n"}]).count("\nHi<end_of_turn>") == 1

    @pytest.mark.parametrize("roles", [["user", "user"], ["assistant"], ["user", "assistant", "system", "user"]])
    def test_gemma_refuses_turns_that_do_not_alternate(self, gemma_tokenizer, roles):
        with pytest.raises(TemplateError, match="alternate"):
            render(gemma_tokenizer, [{"role": role, "content": "x"} for role in roles])

    def test_chatml_writes_each_turn_and_no_default_system_turn(self):
        tokenizer = tiny.make_tokenizer()
        tokenizer.chat_template = CHATML
        assert render(tokenizer, CONVERSATIONS[3]) == (
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
            "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n")
        assert render(tokenizer, CONVERSATIONS[0], generation=False) == "<|im_start|>user\nWhere is my order?<|im_end|>\n"


class TestEndOfTurnToken:
    def test_read_off_each_template(self, gemma_tokenizer):
        chatml = tiny.make_tokenizer()
        assert end_of_turn_token(chatml) == "<|im_end|>"  # SmolLM2's own template
        assert end_of_turn_token(gemma_tokenizer) == "<end_of_turn>"
        chatml.chat_template = None
        assert end_of_turn_token(chatml) is None

    def test_a_jinja_files_own_token_and_never_plain_text(self, gemma_tokenizer):
        tokenizer = gemma_like_tokenizer("{% for m in messages %}{{ m['content'] }}\n<end_of_turn>{% endfor %}")
        assert end_of_turn_token(tokenizer) == "<end_of_turn>"  # after the newline
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\nUser: {% endfor %}"
        assert end_of_turn_token(tokenizer) is None

    def test_generation_stops_at_it(self, gemma_tokenizer, llama):
        stops = gemma_tokenizer.convert_ids_to_tokens(stop_token_ids(llama, gemma_tokenizer))
        assert "<end_of_turn>" in stops and "<|im_end|>" in stops  # the tiny tokenizer's EOS is <|im_end|>


class TestApplyChatTemplateSetting:
    def test_the_tokenizers_own_template_is_kept_by_default(self, tokenizer, llama):
        assert apply_chat_template_setting(tokenizer, None, llama) is tokenizer
        assert apply_chat_template_setting(tokenizer, True, llama) is tokenizer

    def test_a_model_with_none_gets_its_familys_and_says_so(self, llama, monkeypatch):
        base = gemma_like_tokenizer()
        monkeypatch.setitem(families.FAMILIES, "llama", SimpleNamespace(NAME="llama", CHAT_TEMPLATE="gemma"))
        said = []
        tuned = apply_chat_template_setting(base, None, llama, say=said.append)
        assert tuned.chat_template == GEMMA and base.chat_template is None  # the caller's tokenizer is untouched
        assert said == ["model.chat_template: the model has no chat template; using its family's (gemma); "
                        "model.chat_template=false for plain-text prompts"]
        assert apply_chat_template_setting(base, False, llama).chat_template is None

    def test_the_gemma3_family_names_gemmas_template(self):
        from transformers import Gemma3TextConfig

        family = families.family_of(Gemma3TextConfig())
        if family is None:
            pytest.skip("the Gemma 3 family (models/gemma3.py) is not registered in models/families.py")
        if getattr(family, "CHAT_TEMPLATE", None) is None:
            pytest.skip("models/gemma3.py names no CHAT_TEMPLATE yet: add CHAT_TEMPLATE = 'gemma' (its base model has none)")
        assert family.CHAT_TEMPLATE == "gemma"

    def test_a_name_or_a_jinja_file_replaces_the_own_template(self, tokenizer, tmp_path):
        assert apply_chat_template_setting(tokenizer, "chatml").chat_template == CHATML
        path = tmp_path / "mine.jinja"
        path.write_text("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
        assert apply_chat_template_setting(tokenizer, str(path)).chat_template == path.read_text()
        assert tokenizer.chat_template == tiny.CHATML_TEMPLATE

    def test_false_drops_the_own_template_so_every_later_step_writes_plain_text(self, tokenizer, llama):
        plain = apply_chat_template_setting(tokenizer, False, llama)
        assert plain.chat_template is None and tokenizer.chat_template
        assert encode_prompt(llama, plain, "Hi") == tokenizer("Hi\n")["input_ids"]
        with pytest.raises(InstructuneError, match=r"^example 2: chat 'messages' need a chat template"):
            tokenize_examples(EXAMPLES, plain, 64)

    def test_a_template_whose_end_is_not_a_token_of_the_model_is_one_line(self, gemma_tokenizer, tmp_path):
        with pytest.raises(InstructuneError) as error:
            apply_chat_template_setting(tiny.make_tokenizer(), "gemma")
        assert str(error.value) == ("config key 'model.chat_template': gemma ends an answer with '<end_of_turn>', "
                                    "which is not a special token of this tokenizer, so generation could not stop "
                                    "there; use the model's own turn format")

    @pytest.mark.parametrize("text, message", [
        (b"{% for m in messages %}", "mine.jinja: the template does not render a user turn and an answer"),
        (b"\xff\xfe", "mine.jinja: not UTF-8 text"),
        (b"  \n", "mine.jinja: the file is empty"),
    ])
    def test_a_bad_jinja_file_is_one_line_naming_it(self, tokenizer, tmp_path, text, message):
        path = tmp_path / "mine.jinja"
        path.write_bytes(text)
        with pytest.raises(InstructuneError) as error:
            apply_chat_template_setting(tokenizer, str(path))
        assert str(error.value).startswith(f"config key 'model.chat_template': {path.parent}/{message}")
        assert "\n" not in str(error.value)

    def test_a_conversation_the_template_refuses_names_its_row(self, gemma_tokenizer):
        bad = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                            {"role": "assistant", "content": "c"}]}
        with pytest.raises(InstructuneError, match=r"^example 1: the chat template refuses this conversation: "
                                                   r"Gemma turns alternate .* turn 1 is user$"):
            tokenize_examples([EXAMPLES[0], bad], gemma_tokenizer, 64)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny base model whose tokenizer has no chat template, LoRA-tuned 2 steps with model.chat_template=gemma."""
    base = tmp_path_factory.mktemp("base")
    tokenizer = gemma_like_tokenizer()
    tiny.make_llama(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp_path_factory.mktemp("runs")
    config = load_config(None, [f"output_dir={out}", "run_name=gemma", f"model.name={base}", "model.chat_template=gemma",
                                "train.max_steps=2", "train.batch_size=2", "data.packing=false", "data.max_length=64",
                                "train.precision=fp32", "train.num_threads=1", "train.warmup_ratio=0"])
    trainer = tiny.run_trainer(config, train_examples=EXAMPLES)
    return SimpleNamespace(base=base, trainer=trainer, adapter=out / "gemma" / "adapter", tokenizer=trainer.tokenizer)


class TestSameTextAtEveryStep:
    PROMPT = EXAMPLES[0]["prompt"]

    def expected_ids(self, tokenizer, messages):
        return tokenizer(render(tokenizer, messages), add_special_tokens=False)["input_ids"]

    def test_training_writes_the_gemma_turns(self, tuned):
        tokenizer = tuned.tokenizer
        assert tokenizer.chat_template == GEMMA
        rows = tuned.trainer.train_rows  # unpacked: one row per example, in order
        prompt = self.expected_ids(tokenizer, [{"role": "user", "content": self.PROMPT}])
        answer = tokenizer("It has shipped.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert rows[0]["input_ids"] == prompt + answer
        chat = self.expected_ids(tokenizer, EXAMPLES[2]["messages"][:2]) + tokenizer(
            "Hello.<end_of_turn>", add_special_tokens=False)["input_ids"]
        assert rows[2]["input_ids"][: len(chat)] == chat
        assert tokenizer.decode(rows[2]["input_ids"]).startswith("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>")

    def test_the_saved_adapter_carries_it_and_eval_and_chat_use_it(self, tuned):
        model, tokenizer = load_model(tuned.base, adapter=tuned.adapter)
        assert tokenizer.chat_template == GEMMA
        assert encode_prompt(model, tokenizer, self.PROMPT) == prompt_token_ids(tuned.tokenizer, self.PROMPT)
        assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in stop_token_ids(model, tokenizer)
        session = ChatSession(model, tokenizer, system="Be brief.", max_new_tokens=4)
        assert session.render_prompt("Hi") == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        _, base_tokenizer = load_model(tuned.base)
        assert base_tokenizer.chat_template is None  # the base folder is left as it was

    def test_the_merged_export_gguf_and_modelfile_carry_it(self, tuned, tmp_path):
        merged = export_merged(tuned.adapter, tmp_path / "merged")
        assert load_model(merged)[1].chat_template == GEMMA
        gguf_path, modelfile = export_gguf(tmp_path / "bot.gguf", "f16", adapter=str(tuned.adapter))
        field = gguf.GGUFReader(gguf_path).get_field("tokenizer.chat_template")
        assert field.contents() == GEMMA
        text = modelfile.read_text()
        assert '{{ if eq .Role "user" }}{{ if or (ne $i 1) (ne (index $.Messages 0).Role "system") }}' \
               "<start_of_turn>user\n{{ end }}{{ .Content }}<end_of_turn>\n{{ end }}" in text
        assert 'PARAMETER stop "<end_of_turn>"' in text and 'PARAMETER stop "<start_of_turn>"' in text
        pieces = chat_pieces(load_model(merged)[1])
        for messages in CONVERSATIONS:
            assert pieces.render(messages) == render(tuned.tokenizer, messages)


def _llama_cpp_server(path, chat_template=None):
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx, params.warmup = 256, False
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    if chat_template is not None:
        params.use_jinja, params.chat_template = True, chat_template
    return xllamacpp.Server(params)


def _post(server, route, body):
    request = urllib.request.Request(server.listening_address + route, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _llama_cpp_ids(server, messages):
    """llama.cpp's chat rendering of `messages`, tokenized as its server tokenizes a prompt (BOS as the file says)."""
    prompt = _post(server, "/apply-template", {"messages": messages})["prompt"]
    return _post(server, "/tokenize", {"content": prompt, "add_special": True, "parse_special": True})["tokens"]


@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs xllamacpp (llama.cpp in-process)")
class TestLlamaCpp:
    def test_llama_cpp_renders_the_exported_template_to_the_same_tokens(self, tuned, tmp_path):
        gguf_path, _ = export_gguf(tmp_path / "bot.gguf", "f16", adapter=str(tuned.adapter))
        server = _llama_cpp_server(gguf_path)
        tokenizer = tuned.tokenizer
        for messages in CONVERSATIONS:
            assert _llama_cpp_ids(server, messages) == tokenizer(render(tokenizer, messages), add_special_tokens=False)["input_ids"]


GEMMA_FOLDER = models.cache_dir() / "models" / models.GEMMA_MODEL


@pytest.mark.skipif(not (GEMMA_FOLDER / "tokenizer_config.json").is_file(),
                    reason=f"the real Gemma 3 270M is not converted at {GEMMA_FOLDER} (pip install 'instructune[gemma]', "
                           "then instructune chat --model gemma3-270m)")
class TestRealGemma:
    @pytest.fixture(scope="class")
    def real(self):
        tokenizer = models.load_tokenizer(GEMMA_FOLDER)
        return tokenizer, apply_chat_template_setting(tokenizer, "gemma")

    def test_the_base_model_has_none_and_gemma_writes_its_own_tokens(self, real):
        base, tuned = real
        assert base.chat_template is None
        ids = tuned(render(tuned, CONVERSATIONS[0]), add_special_tokens=False)["input_ids"]
        # <bos> 2, <start_of_turn> 105, "user" 2364, "\n" 107, ..., <end_of_turn> 106, "\n" 107, <start_of_turn> 105, "model" 4368, "\n" 107
        assert ids[:4] == [2, 105, 2364, 107] and ids[-5:] == [106, 107, 105, 4368, 107]
        assert end_of_turn_token(tuned) == "<end_of_turn>"
        assert 106 in stop_token_ids(SimpleNamespace(generation_config=None), tuned)

    def test_the_modelfile_pieces_leave_out_the_bos_ollama_adds(self, real, tmp_path):
        from instructune.export.modelfile import write_modelfile

        text = write_modelfile(tmp_path / "g.Modelfile", tmp_path / "g.gguf", real[1]).read_text()
        assert "<bos>" not in text and 'PARAMETER stop "<end_of_turn>"' in text

    @pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs xllamacpp (llama.cpp in-process)")
    def test_llama_cpp_renders_gemma_to_the_same_tokens_on_the_real_vocabulary(self, real):
        path = models.find_gemma_gguf() if importlib.util.find_spec(models.GEMMA_PACKAGE) else None
        if path is None:
            pytest.skip(f"the Gemma wheels are not installed ({models.GEMMA_INSTALL})")
        server = _llama_cpp_server(path, chat_template=GEMMA)
        tuned = real[1]
        for messages in CONVERSATIONS:
            assert _llama_cpp_ids(server, messages) == tuned(render(tuned, messages), add_special_tokens=False)["input_ids"]
