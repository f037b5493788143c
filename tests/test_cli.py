"""The `instructune` command end to end on a tiny model: prepare -> train, help, and exit code 2 on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from instructune import cli
from instructune.train.runlog import MetricsLog

INSTRUCTUNE = Path(sys.executable).parent / "instructune"
SUPPORT_ROWS = [
    {"instruction": f"Where is my order number {i}?", "intent": "track_order",
     "response": f"Your order {i} has shipped and will arrive in {i % 5 + 1} days."}
    for i in range(12)
]
# One thread: tiny matmuls only lose to thread start-up and contention on busy cores.
TINY_RUN = ["train.max_steps=2", "train.batch_size=2", "data.max_length=128", "lora.r=4", "train.num_threads=1"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if "error:" in line]


@pytest.fixture()
def run_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"# tiny test run\nrun_name: cli\noutput_dir: {tmp_path / 'runs'}\n"
                    f"data:\n  train: {tmp_path / 'train.jsonl'}\n  packing: true\ntrain:\n  lr: 0.001\n")
    return path


class TestHelp:
    def test_help_lists_every_command(self, capsys):
        assert cli.main(["--help"]) == 0
        out = capsys.readouterr().out
        for command in ("quickstart", "prepare", "train", "eval", "chat", "export"):
            assert f"  {command} " in out

    def test_unknown_command_exits_2(self, capsys):
        assert cli.main(["trian"]) == 2
        assert "unknown command 'trian'" in capsys.readouterr().err

    @pytest.mark.parametrize("command", ["prepare", "train"])
    def test_command_help_describes_options(self, command, capsys):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: instructune " + command in capsys.readouterr().out


class TestPrepareThenTrain:
    def test_end_to_end_on_a_tiny_model(self, tmp_path, run_yaml, tiny_llama_dir, capsys):
        raw = write_jsonl(tmp_path / "raw.jsonl", SUPPORT_ROWS)
        train_file = tmp_path / "train.jsonl"
        assert cli.main(["prepare", str(raw), "--task", "support_response", "-o", str(train_file)]) == 0
        examples = [json.loads(line) for line in train_file.read_text().splitlines()]
        assert len(examples) == 12 and examples[0]["task"] == "support_response"
        assert examples[0]["completion"] == SUPPORT_ROWS[0]["response"]

        assert cli.main(["train", str(run_yaml), f"model.name={tiny_llama_dir}", *TINY_RUN]) == 0
        assert "done: 2 steps" in capsys.readouterr().out
        run = tmp_path / "runs" / "cli"
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
        assert (run / "loss.png").is_file()
        assert [r["step"] for r in MetricsLog.read(run / "metrics.jsonl") if "loss" in r] == [1, 2]
        saved = (run / "config.yaml").read_text()
        assert str(tiny_llama_dir) in saved and "max_steps: 2" in saved

    def test_overrides_without_a_yaml_file(self, tmp_path, tiny_llama_dir, capsys):
        train_file = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": r["instruction"], "completion": r["response"]}
                                                            for r in SUPPORT_ROWS])
        argv = ["train", f"model.name={tiny_llama_dir}", f"data.train={train_file}", f"output_dir={tmp_path}",
                "run_name=bare", "lora.enabled=false", *TINY_RUN]
        assert cli.main(argv) == 0
        assert (tmp_path / "bare" / "model" / "config.json").is_file()

    def test_train_prints_and_logs_what_it_cut_and_skipped(self, tmp_path, run_yaml, tiny_llama_dir, capsys):
        # Issue 12 items 4-5: nothing is cut, dropped or skipped silently.
        long = {"prompt": "Where is my order? " * 40, "completion": "It has shipped."}
        rows = [{"prompt": r["instruction"], "completion": r["response"]} for r in SUPPORT_ROWS[:4]]
        train = write_jsonl(tmp_path / "train.jsonl", [*rows, long, {"prompt": "Summarize.", "completion": " "}])
        assert cli.main(["train", str(run_yaml), f"model.name={tiny_llama_dir}", *TINY_RUN, "train.max_steps=1"]) == 0
        out = capsys.readouterr().out
        assert (f"train: 6 examples, max_length 128: prompt cut 1 ({train}:5), answer cut 0, dropped (no label left) 0, "
                f"skipped (empty answer) 1 ({train}:6)") in out.splitlines()
        data = MetricsLog.read(tmp_path / "runs" / "cli" / "metrics.jsonl")[0]
        assert data["step"] == 0 and data["data"]["train"]["prompt_cut"] == {"count": 1, "first": [f"{train}:5"]}
        assert data["data"]["train"]["empty"] == {"count": 1, "first": [f"{train}:6"]}


class TestBadInput:
    def test_missing_raw_file(self, tmp_path, capsys):
        missing = tmp_path / "nope.jsonl"
        assert cli.main(["prepare", str(missing), "--task", "support_response", "-o", str(tmp_path / "o.jsonl")]) == 2
        assert error_lines(capsys) == [f"instructune prepare: error: {missing}: no such file or folder"]

    def test_malformed_jsonl_line_names_file_and_line(self, tmp_path, capsys):
        raw = tmp_path / "raw.jsonl"
        raw.write_text(json.dumps(SUPPORT_ROWS[0]) + "\n" + json.dumps(SUPPORT_ROWS[1]) + "\n{not json\n")
        assert cli.main(["prepare", str(raw), "--task", "support_response", "-o", str(tmp_path / "o.jsonl")]) == 2
        (line,) = error_lines(capsys)
        assert f"{raw}:3:" in line

    def test_malformed_training_file_names_file_and_line(self, tmp_path, run_yaml, tiny_llama_dir, capsys):
        (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n')
        assert cli.main(["train", str(run_yaml), f"model.name={tiny_llama_dir}", *TINY_RUN]) == 2
        (line,) = error_lines(capsys)
        assert f"{tmp_path / 'train.jsonl'}:2:" in line

    @pytest.mark.parametrize("row, error", [
        (b'{"messages": "hello"}', "'messages' must be a list of turns, got a string"),
        (b'{"messages": {"role": "user", "content": "hi"}}', "'messages' must be a list of turns, got an object"),
        (b'{"messages": ["hi", "there"]}', "turn 0: expected an object with 'role' and 'content', got a string"),
        (b'{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}',
         "turn 0: unknown role 'robot' (expected one of user, assistant, system, tool)"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "conversation has no assistant turn: nothing to learn from"),
        (b'{"prompt": "caf\xe9", "completion": "b"}', "not UTF-8 text (byte 0xe9 at byte offset 50); save the file as UTF-8"),
    ])
    def test_bad_training_row_names_file_and_line(self, tmp_path, run_yaml, tiny_llama_dir, capsys, row, error):
        # Issue 12 items 1-3: once AttributeError / UnicodeDecodeError tracebacks, or no file and line.
        train = tmp_path / "train.jsonl"
        train.write_bytes(b'{"prompt": "a", "completion": "b"}\n' + row + b"\n")
        assert cli.main(["train", str(run_yaml), f"model.name={tiny_llama_dir}", *TINY_RUN]) == 2
        assert error_lines(capsys) == [f"instructune train: error: {train}:2: {error}"]
        assert not (tmp_path / "runs" / "cli" / "config.yaml").exists()  # stopped before the run began

    def test_chat_row_whose_messages_clash_with_the_rows_before(self, tmp_path, run_yaml, tiny_llama_dir, capsys):
        chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        train = write_jsonl(tmp_path / "train.jsonl", [chat, chat, {"messages": "hello"}])
        assert cli.main(["train", str(run_yaml), f"model.name={tiny_llama_dir}", *TINY_RUN]) == 2
        (line,) = error_lines(capsys)
        assert line.startswith(f"instructune train: error: {train}:3: field 'messages' has another type")
        assert not (tmp_path / "runs" / "cli" / "config.yaml").exists()  # stopped before the run began

    def test_raw_csv_that_is_not_utf8_names_file_and_line(self, tmp_path, capsys):
        raw = tmp_path / "raw.csv"
        good = b"instruction,intent,response\nWhere is my order?,track_order,It has shipped.\n"
        raw.write_bytes(good + b"O\xf9 est ma commande?,track_order,Elle est partie.\n")
        assert cli.main(["prepare", str(raw), "--task", "support_response", "-o", str(tmp_path / "o.jsonl")]) == 2
        assert error_lines(capsys) == [f"instructune prepare: error: {raw}:3: not UTF-8 text "
                                       f"(byte 0xf9 at byte offset {len(good) + 1}); save the file as UTF-8"]
        assert not (tmp_path / "o.jsonl").exists()

    def test_empty_completion_with_strict(self, tmp_path, capsys):
        raw = write_jsonl(tmp_path / "raw.jsonl", [*SUPPORT_ROWS[:2], {**SUPPORT_ROWS[2], "response": ""}])
        argv = ["prepare", str(raw), "--task", "support_response", "-o", str(tmp_path / "o.jsonl"), "--strict"]
        assert cli.main(argv) == 2
        (line,) = error_lines(capsys)
        assert line.startswith(f"instructune prepare: error: {raw}:3: the completion renders empty")

    def test_unknown_config_key(self, run_yaml, capsys):
        assert cli.main(["train", str(run_yaml), "train.learning_rate=0.1"]) == 2
        assert error_lines(capsys) == [f"instructune train: error: {run_yaml}: unknown config key 'train.learning_rate'"]

    def test_missing_config_file(self, tmp_path, capsys):
        assert cli.main(["train", str(tmp_path / "none.yaml")]) == 2
        (line,) = error_lines(capsys)
        assert "none.yaml: config file not found" in line

    def test_empty_dataset_after_filtering(self, tmp_path, run_yaml, tiny_llama_dir, capsys):
        # Every conversation is cut before its assistant turn at max_length 16: nothing left to learn from.
        chats = [{"messages": [{"role": "user", "content": "hello " * 20}, {"role": "assistant", "content": "hi"}]}]
        write_jsonl(tmp_path / "train.jsonl", chats * 3)
        argv = ["train", str(run_yaml), f"model.name={tiny_llama_dir}", *TINY_RUN, "data.max_length=16"]
        assert cli.main(argv) == 2
        (line,) = error_lines(capsys)
        assert f"{tmp_path / 'train.jsonl'}: no examples left after filtering" in line

    def test_greedy_engine_asked_for_beams(self, tmp_path, tiny_llama_dir, capsys):
        data = write_jsonl(tmp_path / "d.jsonl", [{"dialogue": "#Person1#: Hi.", "summary": "A greeting."}])
        argv = ["eval", "--model", str(tiny_llama_dir), "--task", "dialogsum", "--data", str(data), "--engine", "native",
                "--num-beams", "4", "--no-progress", "-o", str(tmp_path / "o.json")]
        assert cli.main(argv) == 2
        assert error_lines(capsys) == ["instructune eval: error: generate: engine 'native' cannot run here: num_beams=4 "
                                       "needs Hugging Face generate; use engine 'auto' or 'hf'"]
        assert not (tmp_path / "o.json").exists()


class TestRealProcess:
    def test_exit_codes_and_one_line_errors(self, tmp_path):
        ok = subprocess.run([str(INSTRUCTUNE), "--help"], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and "train" in ok.stdout
        bad = subprocess.run([str(INSTRUCTUNE), "train", str(tmp_path / "missing.yaml")],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2
        assert bad.stderr.strip().splitlines() == [f"instructune train: error: {tmp_path / 'missing.yaml'}: config file not found"]

    def test_a_file_that_is_not_utf8_is_one_line_on_stderr(self, tmp_path):
        raw = tmp_path / "latin1.csv"
        raw.write_bytes(b"instruction,input,output\ncaf\xe9,,b\n")
        bad = subprocess.run([str(INSTRUCTUNE), "prepare", str(raw), "--task", "alpaca", "-o", str(tmp_path / "o.jsonl")],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2
        assert bad.stderr.strip().splitlines() == [
            f"instructune prepare: error: {raw}:2: not UTF-8 text (byte 0xe9 at byte offset 28); save the file as UTF-8"]
