"""The board's glue, without a browser: the config form, the live metrics, path safety, the tabs' calls.

The browser drives the same functions in tests/test_board_browser.py; here each is checked against
the API it wraps (the CLI's own output, the config model, the mixing formulas).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from instructune.train import checkpoint as ckpt
from instructune.board import chat_tab, data_tab, eval_tab, export_tab
from instructune.board.form import form_fields, form_overrides, form_values, yaml_text
from instructune.board.metrics import curve_points, format_progress, read_run, run_progress
from instructune.board.paths import Workdir
from instructune.board.process import TrainingProcess
from instructune.board.state import Board, error_line, guarded
from instructune.config import RunConfig, config_fields, load_config
from instructune.data.mixture import mixing_rates
from instructune.data.prepare import main as prepare_main
from instructune.errors import InstructuneError


@pytest.fixture()
def board(tmp_path):
    return Board(str(tmp_path))


@pytest.fixture()
def support(board):
    """The quickstart's data written into the working folder, as the Data tab's button does."""
    return data_tab.quickstart_data(board)


class TestConfigForm:
    def test_one_widget_per_config_key_with_the_models_description(self):
        fields = form_fields()
        assert [f["key"] for f in fields] == [f["key"] for f in config_fields()]
        by_key = {f["key"]: f for f in fields}
        assert by_key["train.schedule"]["widget"] == "dropdown"
        assert by_key["data.packing"]["widget"] == "checkbox"
        assert by_key["model.chat_template"]["widget"] == "text"  # bool | None: true, false or null
        assert by_key["train.lr"]["description"] == RunConfig.model_fields["train"].default_factory().model_fields["lr"].description

    def test_unchanged_form_gives_no_overrides_and_each_change_one(self):
        fields, base = form_fields(), load_config(None, ["train.max_steps=50"])
        values = form_values(base, fields)
        assert form_overrides(fields, values, base) == []
        keys = [f["key"] for f in fields]
        values[keys.index("train.lr")] = "1e-4"
        values[keys.index("data.packing")] = False
        values[keys.index("train.max_steps")] = "null"
        overrides = form_overrides(fields, values, base)
        assert overrides == ["data.packing=false", "train.max_steps=null", "train.lr=1e-4"]
        config = load_config(None, ["train.max_steps=50", *overrides])
        assert (config.train.lr, config.data.packing, config.train.max_steps) == (1e-4, False, None)

    def test_form_round_trips_every_value_of_a_config(self):
        fields = form_fields()
        config = load_config(None, ["lora.target_modules=[q_proj, v_proj]", "train.precision=bf16", "seed=3"])
        values = form_values(config, fields)
        overrides = form_overrides(fields, values, RunConfig())
        assert load_config(None, overrides) == config

    def test_yaml_text_is_what_key_equals_value_takes(self):
        assert [yaml_text(v) for v in (None, True, 2e-4, 3, "runs", ["q_proj", "v_proj"])] == \
            ["null", "true", "0.0002", "3", "runs", "[q_proj, v_proj]"]


class TestMetricsReader:
    def test_curves_from_a_real_metrics_file(self, tmp_path):
        lines = [{"step": 1, "total_steps": 4, "loss": 3.0, "elapsed_s": 2.0},
                 {"step": 2, "total_steps": 4, "loss": 2.5, "val_loss": 2.7, "gen_rougeL": 0.2, "elapsed_s": 4.0}]
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        records, progress = read_run(tmp_path)
        assert curve_points(records, "loss") == [
            {"step": 1, "value": 3.0, "series": "train loss"}, {"step": 2, "value": 2.5, "series": "train loss"},
            {"step": 2, "value": 2.7, "series": "validation loss"}]
        assert curve_points(records, "rouge") == [{"step": 2, "value": 0.2, "series": "ROUGE-L"}]
        assert progress == {"step": 2, "total_steps": 4, "fraction": 0.5, "seconds_per_step": 2.0, "eta_s": 4.0,
                            "last_loss": 2.5}
        assert format_progress(progress) == "step 2/4 (50%), 2.0 s/step, ETA 4 s, loss 2.5000"

    def test_a_line_being_written_is_left_for_the_next_read(self, tmp_path):
        (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + '\n{"step": 2, "lo')
        records, _ = read_run(tmp_path)
        assert records == [{"step": 1, "loss": 2.0}]

    def test_eta_after_resume_uses_the_new_process_clock(self):
        records = [{"step": s, "total_steps": 10, "elapsed_s": 10.0 * s} for s in (1, 2, 3)]
        records += [{"step": 4, "total_steps": 10, "elapsed_s": 1.0}, {"step": 5, "total_steps": 10, "elapsed_s": 2.0}]
        progress = run_progress(records)
        assert progress["seconds_per_step"] == 1.0 and progress["eta_s"] == 5.0

    def test_no_file_yet(self, tmp_path):
        records, progress = read_run(tmp_path)
        assert records == [] and format_progress(progress) == "no steps logged yet"


class TestWorkdir:
    def test_paths_resolve_inside_and_escapes_are_refused(self, tmp_path):
        work = Workdir(tmp_path)
        assert work.path("data/x.jsonl") == tmp_path.resolve() / "data" / "x.jsonl"
        assert work.path(str(tmp_path / "a")) == tmp_path.resolve() / "a"
        for bad in ("../x", "/etc/passwd", "data/../../x"):
            with pytest.raises(InstructuneError, match="outside the working folder"):
                work.path(bad)
        with pytest.raises(InstructuneError, match="data file not found"):
            work.path("missing.jsonl", must_exist=True, what="data file")

    def test_file_search_skips_hidden_and_deep_folders(self, tmp_path):
        for name in ("runs/a/config.yaml", ".board/x/config.yaml", ".venv/config.yaml", "a/b/c/d/config.yaml"):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text("{}")
        assert Workdir(tmp_path).files("config.yaml") == [tmp_path.resolve() / "runs/a/config.yaml"]

    def test_a_symlink_out_of_the_folder_is_refused(self, tmp_path):
        (tmp_path / "work").mkdir()
        (tmp_path / "work" / "link").symlink_to(tmp_path)
        with pytest.raises(InstructuneError, match="outside the working folder"):
            Workdir(tmp_path / "work").path("link/secret.txt")


class TestErrors:
    def test_bad_input_is_the_clis_one_line(self):
        assert error_line(InstructuneError("x.yaml:3: bad key")) == "error: x.yaml:3: bad key"
        assert error_line(ValueError("boom\ntrace")) == "error: ValueError: boom"

    def test_guarded_handlers_put_the_line_in_their_status(self):
        status = object()

        @guarded(status)
        def fails():
            raise InstructuneError("data.jsonl:2: expected a JSON object")

        @guarded(status)
        def streams():
            yield {status: "working"}
            raise InstructuneError("late")

        assert fails() == {status: "error: data.jsonl:2: expected a JSON object"}
        assert list(streams()) == [{status: "working"}, {status: "error: late"}]


class TestDataTab:
    def test_unedited_builtin_task_is_passed_by_name_and_edits_are_validated(self, board):
        text = data_tab.builtin_task_text("piqa")
        assert data_tab.task_reference(board, "piqa", text) == "piqa"
        edited = text.replace("{goal}", "{gaol}", 1)
        with pytest.raises(InstructuneError, match=r"task 'piqa' template 0: unknown placeholder \{gaol\}"):
            data_tab.task_reference(board, "piqa", edited)
        with pytest.raises(InstructuneError, match=r"^\.board/tasks/piqa\.yaml:\d+"):  # relative to the folder
            data_tab.task_reference(board, "piqa", "kind: [generation\n")
        assert "task 'piqa': multiple_choice" in data_tab.check_task(board, "piqa", text + "\n# a comment\n")

    def test_preview_renders_every_template_on_real_rows(self, board, support):
        first = json.loads((board.work.root / "data/raw/train.jsonl").read_text().splitlines()[0])
        preview = data_tab.template_preview(board, "data/raw/train.jsonl", "support_response",
                                            data_tab.builtin_task_text("support_response"), rows=5)
        assert preview.count("#### template") == 9 and first["instruction"] in preview

    def test_mixture_shares_follow_the_mixing_formula(self, board, support):
        table = pd.DataFrame([["support_response", "data/raw/train.jsonl", "100", ""],
                              ["support_intent", "data/raw/train.jsonl", "", ""]], columns=data_tab.MIX_COLUMNS)
        config = data_tab.mixture_config(board, table, "temperature", "", "2", "", "0")
        shares = data_tab.mixture_shares(config).set_index("task")["proportion"].to_dict()
        expected = mixing_rates({"support_response": 100, "support_intent": 480}, strategy="temperature", temperature=2)
        assert shares == pytest.approx(expected, abs=2e-3)

    def test_weights_and_bad_rows_are_one_line_errors(self, board, support):
        table = pd.DataFrame([["support_response", "data/raw/train.jsonl", "", "x"]], columns=data_tab.MIX_COLUMNS)
        with pytest.raises(InstructuneError, match="mixture row 1: weight: 'x' is not a number"):
            data_tab.mixture_config(board, table, "weights", "", "1", "", "0")
        table = pd.DataFrame([["support_response", "../outside.jsonl", "", ""]], columns=data_tab.MIX_COLUMNS)
        with pytest.raises(InstructuneError, match="outside the working folder"):
            data_tab.mixture_config(board, table, "proportional", "", "1", "", "0")

    def test_written_mixture_equals_instructune_prepare(self, board, support, tmp_path):
        table = pd.DataFrame([[task, "data/raw/validation.jsonl", "", ""] for task in data_tab.QUICKSTART_TASKS],
                             columns=data_tab.MIX_COLUMNS)
        config = data_tab.mixture_config(board, table, "proportional", "", "1", "", "0")
        data_tab.write_mixture(board, config, "out/page.jsonl")
        mixture = tmp_path / "mix.yaml"
        mixture.write_text(json.dumps(config.model_dump(exclude_none=True)))
        prepare_main(["--mixture", str(mixture), "-o", str(tmp_path / "cli.jsonl")])
        assert (tmp_path / "out/page.jsonl").read_text() == (tmp_path / "cli.jsonl").read_text()
        with pytest.raises(InstructuneError, match="outside the working folder"):
            data_tab.write_mixture(board, config, "/tmp/elsewhere.jsonl")


class TestEvalTab:
    def test_settings_pair_tasks_with_data_inside_the_folder(self, board, support):
        from instructune.evaluate.run import TaskData

        table = pd.DataFrame([["support_intent", "data/raw/test.jsonl"], ["", ""]], columns=eval_tab.TASK_COLUMNS)
        tasks, options = eval_tab.eval_settings(board, table, "5", "16")
        assert tasks == [TaskData("support_intent", str(board.work.root / "data/raw/test.jsonl"), limit=5)]
        assert options.max_new_tokens == 16
        with pytest.raises(InstructuneError, match="evaluation: --limit: 'five' is not a whole number"):
            eval_tab.eval_settings(board, table, "five", "")
        with pytest.raises(InstructuneError, match="evaluation: no task rows"):
            eval_tab.eval_settings(board, table.iloc[1:], "", "")

    def test_table_shows_every_column_the_comparison_rows_carry(self, tmp_path):
        rows = [{"task": "t", "metric": "rougeL", "before": 0.2, "after": 0.41234567, "delta": 0.21234567,
                 "held_out": False, "forgetting": False, "ci_low": 0.1, "ci_high": 0.3, "significant": True}]
        (tmp_path / "compare").mkdir()
        (tmp_path / "compare" / "comparison.json").write_text(json.dumps({"comparisons": {"run": rows}}))
        table = eval_tab.comparison_table(tmp_path)
        assert list(table.columns) == ["run", *rows[0]] and table.loc[0, "after"] == 0.4123


class TestChatTab:
    def test_widget_messages_become_plain_turns(self):
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}]
        assert chat_tab.plain_history(messages) == [{"role": "user", "content": "hi"},
                                                    {"role": "assistant", "content": "yo"}]

    def test_both_answers_stream_at_once(self):
        class Session:
            def __init__(self, words):
                self.words = words

            def reply(self, message, stream):
                for word in self.words:
                    stream(word)
                    time.sleep(0.05)
                return "".join(self.words).strip()

        updates = list(chat_tab.stream_replies({"base": Session(["a", " b"]), "tuned": Session(["c", " d", " e"])}, "x"))
        assert updates[-1] == {"base": "a b", "tuned": "c d e"}
        assert any(0 < len(update["tuned"]) < 5 for update in updates)  # seen while still growing


class TestExportTab:
    def test_the_gguf_types_are_the_exports_own(self):
        from instructune.export.merge import make_parser

        assert export_tab.gguf_types() == ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]
        assert all(kind in make_parser().format_help() for kind in export_tab.gguf_types())

    def test_a_full_fine_tune_needs_no_export(self, board):
        run = board.work.root / "runs" / "full"
        (run / "model").mkdir(parents=True)
        (run / "model" / "config.json").write_text("{}")
        (run / "config.yaml").write_text("lora: {enabled: false}\n")
        assert "already a plain model folder" in export_tab.export_run(board, "runs/full", "exported/x")


class TestTrainingProcess:
    def test_bad_config_ends_in_the_clis_error_line(self, tmp_path):
        process = TrainingProcess(tmp_path, tmp_path)
        (tmp_path / "bad.yaml").write_text("train:\n  lrr: 1\n")
        process.start("bad.yaml", ["run_name=x"], tmp_path / "runs" / "x")
        assert process.wait(120) == 2
        assert process.state() == "instructune train: error: bad.yaml: unknown config key 'train.lrr'"
        assert "$ instructune train bad.yaml run_name=x" in process.log_tail()

    def test_stop_saves_a_checkpoint_and_resume_continues_the_curve(self, tmp_path, tiny_llama_dir):
        (tmp_path / "train.jsonl").write_text("".join(
            json.dumps({"prompt": f"Where is order {i}?", "completion": f"Order {i} has shipped."}) + "\n"
            for i in range(16)))
        overrides = [f"model.name={tiny_llama_dir}", "data.train=train.jsonl", "run_name=r", "train.max_steps=400",
                     "train.batch_size=2", "train.num_threads=1", "train.precision=fp32", "lora.r=4"]
        run_dir = tmp_path / "runs" / "r"
        process = TrainingProcess(tmp_path, tmp_path)
        process.start(None, overrides, run_dir)
        with pytest.raises(InstructuneError, match="already going"):
            process.start(None, overrides, run_dir)
        deadline = time.monotonic() + 240
        while not read_run(run_dir)[1]["step"] and time.monotonic() < deadline and process.running():
            time.sleep(0.2)
        assert process.stop()
        assert process.wait(120) == 130 and "stopped" in process.state()
        logged = read_run(run_dir)[1]["step"]
        stopped_at = int(ckpt.latest_checkpoint(run_dir).name.split("-")[1])
        assert 0 < stopped_at < 400 and stopped_at in (logged, logged + 1)  # SIGTERM may land before the log line
        process.start(None, [*overrides[:-4], "train.max_steps=" + str(stopped_at + 2), *overrides[-3:]], run_dir,
                      resume=True)
        assert process.wait(240) == 0, process.log_tail()
        records, progress = read_run(run_dir)
        # One data report (step 0: what was cut or skipped), then every step once across the resume.
        assert [r["step"] for r in records] == [0, *range(1, stopped_at + 3)] and "data" in records[0]
        assert progress["total_steps"] == stopped_at + 2 and not process.stop()


def test_board_command_with_a_missing_folder_is_one_line(tmp_path):
    source = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=str(source))
    result = subprocess.run([sys.executable, "-m", "instructune.cli", "board", "--workdir", str(tmp_path / "nope")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().endswith("working folder not found")
