"""The Ollama Modelfile: its TEMPLATE reproduces the model's own Jinja chat template turn by turn
(and, where the Go toolchain is installed, Go's text/template, Ollama's engine, renders it the same)."""

import json
import os
import shutil
import subprocess

import pytest

import tiny
from instructune.export.modelfile import chat_pieces, go_template, stop_tokens, write_modelfile
from instructune.models.chat_templates import GEMMA

CONVERSATIONS = [
    [{"role": "user", "content": "Where is my order?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Refund, please.\nOrder 12345."}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}],
]


@pytest.fixture()
def tokenizer():
    return tiny.make_tokenizer()  # SmolLM2's ChatML template, default system turn included


@pytest.fixture()
def gemma_tokenizer():
    """Gemma's turn tokens and built-in template (no system role: a system message opens the first user turn)."""
    tokenizer = tiny.make_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<bos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = GEMMA
    return tokenizer


class TestChatPieces:
    def test_pieces_reproduce_the_jinja_template(self, tokenizer):
        pieces = chat_pieces(tokenizer)
        for messages in CONVERSATIONS:
            for generation in (False, True):
                expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
                assert pieces.render(messages, generation) == expected

    def test_chatml_pieces(self, tokenizer):
        pieces = chat_pieces(tokenizer)
        assert pieces.user == ("<|im_start|>user\n", "<|im_end|>\n")
        assert pieces.head == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        assert pieces.generation == "<|im_start|>assistant\n"

    def test_template_with_content_dependent_logic_is_not_split(self, tokenizer):
        tokenizer.chat_template = (
            "{% for m in messages %}{% if m['content'] | length > 20 %}LONG {% endif %}"
            "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        )
        assert chat_pieces(tokenizer) is None

    def test_gemma_pieces_fold_the_system_message_into_the_first_user_turn(self, gemma_tokenizer):
        pieces = chat_pieces(gemma_tokenizer)
        assert pieces.system_in_user and pieces.head == "<bos>"
        assert pieces.system == ("<bos><start_of_turn>user\n", "\n\n")
        assert pieces.user == ("<start_of_turn>user\n", "<end_of_turn>\n")
        assert pieces.assistant == ("<start_of_turn>model\n", "<end_of_turn>\n")
        assert pieces.generation == "<start_of_turn>model\n"
        for messages in CONVERSATIONS:
            for generation in (False, True):
                assert pieces.render(messages, generation) == gemma_tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=generation)

    def test_no_template_no_pieces(self, tokenizer):
        tokenizer.chat_template = None
        assert chat_pieces(tokenizer) is None


class TestWriteModelfile:
    def test_modelfile_names_the_file_template_and_stops(self, tokenizer, tmp_path):
        path = write_modelfile(tmp_path / "bot.Modelfile", tmp_path / "bot.gguf", tokenizer)
        text = path.read_text()
        assert text.startswith("FROM ./bot.gguf\nTEMPLATE \"\"\"")
        assert go_template(chat_pieces(tokenizer)) in text
        assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text
        assert stop_tokens(tokenizer, chat_pieces(tokenizer)) == ["<|im_end|>", "<|im_start|>"]

    def test_gemma_modelfile_stops_at_end_of_turn_and_leaves_the_bos_to_ollama(self, gemma_tokenizer, tmp_path):
        text = write_modelfile(tmp_path / "g.Modelfile", tmp_path / "g.gguf", gemma_tokenizer).read_text()
        assert text.count("<bos>") == 2  # head and system opening: this tokenizer adds no BOS itself
        assert stop_tokens(gemma_tokenizer, chat_pieces(gemma_tokenizer)) == ["<|im_end|>", "<end_of_turn>", "<start_of_turn>"]
        # A tokenizer that adds BOS itself (Gemma's; the GGUF says add_bos_token) gets it from Ollama too.
        from tokenizers import processors

        gemma_tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", gemma_tokenizer.bos_token_id)])
        assert gemma_tokenizer("Hi")["input_ids"][0] == gemma_tokenizer.bos_token_id
        text = write_modelfile(tmp_path / "h.Modelfile", tmp_path / "h.gguf", gemma_tokenizer).read_text()
        assert "<bos>" not in text and '"system" }}<start_of_turn>user\n{{ .Content }}\n\n{{ end }}' in text

    def test_go_template_keeps_each_piece_verbatim_without_whitespace_trimming(self, tokenizer):
        template = go_template(chat_pieces(tokenizer))
        assert "{{-" not in template and "-}}" not in template  # trimming would eat the pieces' newlines
        assert '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n{{ end }}' in template

    def test_unsplittable_template_gives_a_modelfile_without_template(self, tokenizer, tmp_path, capsys):
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
        text = write_modelfile(tmp_path / "x.Modelfile", tmp_path / "x.gguf", tokenizer).read_text()
        assert "TEMPLATE" not in text and "no TEMPLATE" in capsys.readouterr().out


GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

func main() {
	src, _ := os.ReadFile(os.Args[1])
	var conversations [][]map[string]string
	data, _ := os.ReadFile(os.Args[2])
	if err := json.Unmarshal(data, &conversations); err != nil {
		panic(err)
	}
	tpl := template.Must(template.New("t").Parse(string(src)))
	var outputs []string
	for _, conversation := range conversations {
		var messages []map[string]string
		for _, m := range conversation {
			messages = append(messages, map[string]string{"Role": m["role"], "Content": m["content"]})
		}
		var out strings.Builder
		if err := tpl.Execute(&out, map[string]any{"Messages": messages}); err != nil {
			panic(err)
		}
		outputs = append(outputs, out.String())
	}
	json.NewEncoder(os.Stdout).Encode(outputs)
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain (Ollama's template engine)")
class TestGoTemplate:
    @pytest.mark.parametrize("which", ["tokenizer", "gemma_tokenizer"])
    def test_go_text_template_renders_like_the_jinja_template(self, which, request, tmp_path):
        # Ollama executes TEMPLATE with Go's text/template over .Messages (Role, Content).
        tokenizer = request.getfixturevalue(which)
        (tmp_path / "main.go").write_text(GO_RENDER)
        (tmp_path / "t.tmpl").write_text(go_template(chat_pieces(tokenizer)))
        (tmp_path / "c.json").write_text(json.dumps(CONVERSATIONS))
        done = subprocess.run(["go", "run", "main.go", "t.tmpl", "c.json"], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "GO111MODULE": "off"}, timeout=300)
        assert done.returncode == 0, done.stderr
        expected = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in CONVERSATIONS]
        assert json.loads(done.stdout) == expected
