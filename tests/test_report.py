"""Before/after comparison: deltas and forgetting flags, the rendered report, and eval -> compare end to end."""

import json

import pytest

from instructune.errors import InstructuneError
from instructune.evaluate import compare as compare_module
from instructune.evaluate import run as run_module
from instructune.evaluate.compare import compare, task_metrics
from instructune.evaluate.report import before_after_markdown, comparison_markdown

BEFORE = {"dialogsum": {"rouge1": 0.21, "rouge2": 0.05}, "piqa": {"acc": 0.62, "acc_norm": 0.60},
          "hellaswag": {"acc": 0.30, "acc_norm": 0.35}}
AFTER = {"dialogsum": {"rouge1": 0.43, "rouge2": 0.18}, "piqa": {"acc": 0.58, "acc_norm": 0.595},
         "hellaswag": {"acc": 0.29, "acc_norm": 0.36}}


def _row(rows, task, metric):
    return next(r for r in rows if r["task"] == task and r["metric"] == metric)


class TestCompare:
    def test_deltas(self):
        rows = compare(BEFORE, AFTER, held_out={"piqa", "hellaswag"})
        assert _row(rows, "dialogsum", "rouge1")["delta"] == pytest.approx(0.22)
        assert _row(rows, "piqa", "acc")["delta"] == pytest.approx(-0.04)
        assert len(rows) == 6

    def test_forgetting_only_on_held_out_drops_beyond_threshold(self):
        rows = compare(BEFORE, AFTER, held_out={"piqa", "hellaswag"}, threshold=0.01)
        flagged = {(r["task"], r["metric"]) for r in rows if r["forgetting"]}
        # piqa acc -0.04: flagged; piqa acc_norm -0.005 and hellaswag acc -0.01: within the threshold.
        assert flagged == {("piqa", "acc")}
        assert not _row(rows, "dialogsum", "rouge1")["held_out"]

    def test_drop_on_tuned_task_is_not_forgetting(self):
        rows = compare({"dialogsum": {"rouge1": 0.5}}, {"dialogsum": {"rouge1": 0.1}}, held_out={"piqa"})
        assert not rows[0]["forgetting"]

    def test_missing_metric_has_no_delta(self):
        rows = compare({"piqa": {"acc": 0.6}}, {"hellaswag": {"acc": 0.3}}, held_out={"piqa"})
        assert [(r["task"], r["before"], r["after"], r["delta"], r["forgetting"]) for r in rows] == [
            ("piqa", 0.6, None, None, False), ("hellaswag", None, 0.3, None, False)]

    def test_accepts_eval_json_shape(self):
        result = {"model": "m", "tasks": {"piqa": {"task": "piqa", "metrics": {"acc": 0.5}}}}
        assert task_metrics(result) == {"piqa": {"acc": 0.5}}

    def test_negative_threshold_raises(self):
        with pytest.raises(InstructuneError, match="threshold"):
            compare(BEFORE, AFTER, threshold=-1)


class TestMarkdown:
    def test_before_after_table(self):
        text = before_after_markdown(compare({"rouge1": 0.21, "rouge2": 0.05}, {"rouge1": 0.43, "rouge2": 0.0412}))
        assert text.splitlines() == [
            "| metric | before | after | Δ |", "|---|---|---|---|",
            "| rouge1 | 0.2100 | 0.4300 | +0.2200 |", "| rouge2 | 0.0500 | 0.0412 | -0.0088 |"]

    def test_comparison_marks_forgetting(self):
        comparisons = {"tuned": compare(BEFORE, AFTER, held_out={"piqa", "hellaswag"})}
        text = comparison_markdown("base", comparisons)
        assert "| piqa (held out) | acc | 0.6200 | 0.5800 | **-0.0400 forgetting** |" in text
        assert "Flagged: piqa acc (tuned)." in text


def _write_run(path, metrics_by_task, predictions):
    tasks = {task: {"task": task, "metrics": metrics} for task, metrics in metrics_by_task.items()}
    path.write_text(json.dumps({"model": path.stem, "predictions": path.stem + ".predictions.jsonl", "tasks": tasks}))
    lines = [json.dumps(row) for row in predictions]
    (path.parent / (path.stem + ".predictions.jsonl")).write_text("\n".join(lines) + "\n")


class TestCompareCommand:
    def test_writes_table_chart_and_html(self, tmp_path, capsys):
        prompt = "Summarize this dialogue:\n\n#Person1#: Hi <there>"
        before_rows = [{"task": "dialogsum", "prompt": prompt, "prediction": "old answer", "references": ["gold"]}]
        after_rows = [{"task": "dialogsum", "prompt": prompt, "prediction": "new answer", "references": ["gold"]}]
        _write_run(tmp_path / "base.json", BEFORE, before_rows)
        _write_run(tmp_path / "tuned.json", AFTER, after_rows)
        loss = tmp_path / "loss.png"
        loss.write_bytes(b"\x89PNG\r\n\x1a\n")
        out = tmp_path / "report"
        code = compare_module.main([str(tmp_path / "base.json"), str(tmp_path / "tuned.json"), "--held-out", "piqa",
                                    "hellaswag", "--loss-png", str(loss), "-o", str(out)])
        assert code == 0
        assert "**-0.0400 forgetting**" in capsys.readouterr().out
        assert (out / "comparison.png").stat().st_size > 1000
        page = (out / "report.html").read_text()
        assert "old answer" in page and "new answer" in page and "Hi &lt;there&gt;" in page
        assert 'src="loss.png"' in page and (out / "loss.png").is_file()
        saved = json.loads((out / "comparison.json").read_text())
        assert saved["held_out"] == ["hellaswag", "piqa"]

    def test_unknown_held_out_task_raises(self, tmp_path):
        _write_run(tmp_path / "a.json", BEFORE, [])
        _write_run(tmp_path / "b.json", AFTER, [])
        with pytest.raises(InstructuneError, match="boolq"):
            compare_module.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--held-out", "boolq",
                                 "-o", str(tmp_path / "o")])


class TestEvalThenCompare:
    def test_eval_command_writes_metrics_and_predictions(self, tmp_path, tiny_llama_dir):
        dialogs = tmp_path / "dialogsum.jsonl"
        dialogs.write_text("\n".join(json.dumps(
            {"dialogue": f"#Person1#: Hi {i}. #Person2#: Hello.", "summary1": "They greet.",
             "summary2": f"Two people say hi {i}.", "summary3": "A greeting."}) for i in range(3)) + "\n")
        piqa = tmp_path / "piqa.jsonl"
        piqa.write_text("\n".join(json.dumps(
            {"goal": f"Open a jar {i}", "sol1": "Twist the lid", "sol2": "Bite the lid", "label": i % 2})
            for i in range(4)) + "\n")
        out = tmp_path / "base.json"
        code = run_module.main(["--model", str(tiny_llama_dir), "--task", "dialogsum", "--data", str(dialogs),
                                "--task", "piqa", "--data", str(piqa), "--limit", "2", "--max-new-tokens", "4",
                                "--no-progress", "-o", str(out)])
        assert code == 0
        result = json.loads(out.read_text())
        assert set(result["tasks"]) == {"dialogsum", "piqa"}
        assert set(result["tasks"]["piqa"]["metrics"]) == {"acc", "acc_norm"}
        assert "rouge1_first_ref" in result["tasks"]["dialogsum"]["metrics"]
        assert result["tasks"]["piqa"]["n_examples"] == 2 and result["versions"]["torch"]
        rows = [json.loads(line) for line in (tmp_path / "base.predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 4
        assert rows[0]["references"] == ["They greet.", "Two people say hi 0.", "A greeting."]

        report = tmp_path / "report"
        assert compare_module.main([str(out), str(out), "--names", "base", "same", "--held-out", "piqa",
                                    "-o", str(report)]) == 0
        assert "None flagged." in (report / "comparison.md").read_text()
        assert result["tasks"]["piqa"]["mode"] == "instruct" and {row["mode"] for row in rows} == {"instruct"}
        assert "Scoring mode (`instructune eval --mode`): dialogsum instruct; piqa instruct." in (
            report / "comparison.md").read_text()

    def test_lm_eval_mode_is_recorded_and_refuses_the_chat_template(self, tmp_path, tiny_llama_dir):
        piqa = tmp_path / "piqa.jsonl"
        piqa.write_text(json.dumps({"goal": "Open a jar", "sol1": "Twist the lid", "sol2": "Bite", "label": 0}) + "\n")
        out = tmp_path / "lm.json"
        assert run_module.main(["--model", str(tiny_llama_dir), "--task", "piqa_lmeval", "--data", str(piqa),
                                "--task", "piqa", "--data", str(piqa), "--mode", "lm-eval",
                                "--no-progress", "-o", str(out)]) == 0
        tasks = json.loads(out.read_text())["tasks"]
        assert {name: (t["mode"], t["chat_template"], t["with_options"]) for name, t in tasks.items()} == {
            "piqa_lmeval": ("lm-eval", False, False), "piqa": ("lm-eval", False, False)}
        with pytest.raises(InstructuneError, match="lm-eval.*chat-template"):
            run_module.main(["--model", str(tiny_llama_dir), "--task", "piqa_lmeval", "--data", str(piqa),
                             "--chat-template", "--no-progress", "-o", str(out)])

    def test_mismatched_task_and_data_counts_raise(self, tmp_path):
        with pytest.raises(InstructuneError, match="one --data per --task"):
            run_module.main(["--task", "piqa", "--task", "dialogsum", "--data", "x.jsonl", "-o", str(tmp_path / "o.json")])
