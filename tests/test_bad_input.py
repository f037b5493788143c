"""Issue 28: bad files and places are one line through the real `instructune` entry, in every command.

A truncated adapter or a config that is not JSON gives the same line in eval, chat, export and
export --gguf; an out-of-memory while scoring names the batch shape and the flag to lower; an
unreadable -o is refused before the model loads. Exit code 2, no traceback, nothing written.
Module-level cases live beside their modules (test_models, test_checkpoint, test_train, test_export*).
"""

import json
import shutil

import pytest
import transformers

import tiny
from instructune import cli
from instructune.errors import OutOfMemory, is_out_of_memory
from instructune.evaluate.score import EVAL_SETTINGS, evaluate_examples

FORGETFUL = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 53687091200 bytes. Error code 12"


def error_line(capsys) -> str:
    """The one error line on stderr; no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_llama_dir):
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules="all-linear")).save_pretrained(folder)
    return folder


def _broken_copy(adapter, tmp_path, broken):
    """A copy of the adapter with its weights cut in half, or a hand edit that lost a comma in its config."""
    folder = shutil.copytree(adapter, tmp_path / f"{broken}-adapter")
    if broken == "truncated":
        data = (folder / "adapter_model.safetensors").read_bytes()
        (folder / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (folder / "adapter_config.json").write_text('{\n  "peft_type": "LORA"\n  "r": 4\n}\n')
    return folder


EXPECTED = {
    "truncated": "adapter_model.safetensors: truncated or corrupt safetensors file "
                 "(incomplete metadata, file not fully covered)",
    "not-json": "adapter_config.json:3: not valid JSON (Expecting ',' delimiter, column 3)",
}


def _commands(tiny_llama_dir, broken, out):
    data = out / "d.jsonl"
    data.write_text(json.dumps({"dialogue": "#Person1#: Hi.", "summary": "A greeting."}) + "\n")
    common = ["--model", str(tiny_llama_dir), "--adapter", str(broken)]
    return {
        "eval": ["eval", *common, "--task", "dialogsum", "--data", str(data), "--no-progress", "-o", str(out / "e" / "m.json")],
        "chat": ["chat", *common, "--prompt", "hi"],
        "export": ["export", *common, "-o", str(out / "x" / "merged")],
        "export --gguf": ["export", *common, "--gguf", "f16", "-o", str(out / "g" / "m.gguf")],
    }


class TestBrokenAdapter:
    @pytest.mark.parametrize("broken", ["truncated", "not-json"])
    @pytest.mark.parametrize("command", ["eval", "chat", "export", "export --gguf"])
    def test_one_line_naming_the_file_in_every_command(self, adapter, tiny_llama_dir, tmp_path, capsys, broken, command):
        folder = _broken_copy(adapter, tmp_path, broken)
        out = tmp_path / "out"
        out.mkdir()
        argv = _commands(tiny_llama_dir, folder, out)[command]
        assert cli.main(argv) == 2
        name = command.split()[0]
        assert error_line(capsys) == f"instructune {name}: error: {folder}/{EXPECTED[broken]}"
        assert sorted(p.name for p in out.iterdir()) == ["d.jsonl"]  # no output folder, file or .partial


class TestUnwritableOutput:
    @pytest.mark.parametrize("command", ["eval", "export", "export --gguf"])
    def test_a_path_under_a_file_is_refused_before_the_model_loads(self, adapter, tiny_llama_dir, tmp_path, capsys,
                                                                   command, monkeypatch):
        out = tmp_path / "out"
        out.mkdir()
        blocker = out / "taken"
        blocker.write_text("user data")
        argv = _commands(tiny_llama_dir, adapter, out)[command]
        argv[-1] = str(blocker / "sub" / ("m.gguf" if "gguf" in command else "m"))
        loads = []
        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                            lambda *a, **k: loads.append(1) or pytest.fail("the model loaded"))
        assert cli.main(argv) == 2
        assert error_line(capsys) == (f"instructune {command.split()[0]}: error: {argv[-1]}: cannot write there: "
                                      f"{blocker} is a file, not a folder")
        assert blocker.read_text() == "user data" and not loads

    def test_a_place_no_file_can_be_made_in_names_it(self, adapter, tiny_llama_dir, tmp_path, capsys):
        # /proc takes no new files, even for root (a permission check would say it does).
        argv = _commands(tiny_llama_dir, adapter, tmp_path)["export --gguf"]
        argv[-1] = "/proc/instructune-test.gguf"
        assert cli.main(argv) == 2
        assert error_line(capsys).startswith("instructune export: error: /proc/instructune-test.gguf: cannot write in /proc (")


class TestEvalOutOfMemory:
    def test_one_line_with_the_batch_shape_and_the_flags_to_lower(self, tiny_llama_dir, tmp_path, capsys, monkeypatch):
        data = tmp_path / "d.jsonl"
        data.write_text("".join(json.dumps({"dialogue": f"#Person1#: Hi {i}.", "summary": "A greeting."}) + "\n"
                                for i in range(5)))

        def forward(*args, **kwargs):
            raise RuntimeError(FORGETFUL)

        monkeypatch.setattr(transformers.LlamaForCausalLM, "forward", forward)
        out = tmp_path / "out" / "m.json"
        argv = ["eval", "--model", str(tiny_llama_dir), "--task", "dialogsum", "--data", str(data), "--engine", "hf",
                "--batch-size", "4", "--max-new-tokens", "16", "--no-progress", "-o", str(out)]
        assert cli.main(argv) == 2
        line = error_line(capsys)
        assert line.startswith("instructune eval: error: eval dialogsum: out of memory on batches of 4 prompt(s) of up to ")
        assert line.endswith(" tokens + up to 16 new tokens: lower --batch-size or --max-new-tokens")
        assert not out.parent.exists()

    def test_multiple_choice_says_the_batch_size_does_not_apply(self, tokenizer, monkeypatch):
        def forward(*args, **kwargs):
            raise MemoryError()

        monkeypatch.setattr(transformers.LlamaForCausalLM, "forward", forward)
        examples = [{"prompt": "Which one?", "options": ["the first one", "the second one"], "label": 0}]
        with pytest.raises(OutOfMemory) as error:
            evaluate_examples(tiny.make_llama(tokenizer), tokenizer, examples, kind="multiple_choice", progress=False,
                              label="eval piqa", settings=EVAL_SETTINGS)
        assert str(error.value) == ("eval piqa: out of memory on packed rows of items and their options (decoder-only "
                                    "multiple choice packs by tokens, so --batch-size does not change it): free memory "
                                    "or use a smaller model")

    @pytest.mark.parametrize("error, expected", [
        (RuntimeError(FORGETFUL), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
        (MemoryError(), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("out of memory"), False),
    ])
    def test_what_counts_as_out_of_memory(self, error, expected):
        assert is_out_of_memory(error) is expected
