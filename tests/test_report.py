"""Before/after comparison: deltas, intervals and forgetting flags, the rendered report, and eval -> compare end to end."""

import json
import re

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
GREEDY = {"num_beams": 1, "length_penalty": 1.0, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0}
ROW_KEYS = ["task", "metric", "before", "after", "delta", "ci_low", "ci_high", "n", "p_value", "significant", "test",
            "note", "held_out", "forgetting"]


def _row(rows, task, metric):
    return next(r for r in rows if r["task"] == task and r["metric"] == metric)


def _accuracy_run(task: str, n_items: int, right: set[int]) -> tuple[dict, list[dict]]:
    """({task: {"acc": share right}}, prediction rows with per-item scores), items right where listed."""
    rows = [{"task": task, "prompt": f"{task} question {i}", "prediction": "x", "references": ["x"],
             "scores": {"acc": float(i in right)}} for i in range(n_items)]
    return {task: {"acc": len(right) / n_items}}, rows


class TestCompare:
    def test_deltas(self):
        rows = compare(BEFORE, AFTER, held_out={"piqa", "hellaswag"})
        assert _row(rows, "dialogsum", "rouge1")["delta"] == pytest.approx(0.22)
        assert _row(rows, "piqa", "acc")["delta"] == pytest.approx(-0.04)
        assert len(rows) == 6

    def test_rows_are_flat_with_the_documented_keys(self):
        before, before_items = _accuracy_run("piqa", 100, set(range(60)))
        after, after_items = _accuracy_run("piqa", 100, set(range(48)))
        rows = compare(before, after, held_out={"piqa"}, before_items=before_items, after_items=after_items)
        assert list(rows[0]) == ROW_KEYS
        assert all(value is None or isinstance(value, (str, int, float, bool)) for value in rows[0].values())
        assert json.loads(json.dumps(rows)) == rows

    def test_significant_held_out_drop_is_forgetting(self):
        # 100 items: 12 lost, none gained. Exact McNemar p = 2 / 2**12.
        before, before_items = _accuracy_run("piqa", 100, set(range(60)))
        after, after_items = _accuracy_run("piqa", 100, set(range(48)))
        row = compare(before, after, held_out={"piqa"}, before_items=before_items, after_items=after_items)[0]
        assert row["p_value"] == pytest.approx(2 / 2**12) and row["test"] == "exact McNemar"
        assert row["ci_low"] < row["delta"] < row["ci_high"] < 0 and row["n"] == 100
        assert row["significant"] and row["forgetting"]

    def test_drop_within_noise_is_not_forgetting(self):
        # The same -0.04 that a fixed 0.01 threshold flagged: 7 lost, 3 gained of 100 is noise (p = 0.34).
        before, before_items = _accuracy_run("piqa", 100, set(range(62)))
        after, after_items = _accuracy_run("piqa", 100, set(range(7, 62)) | {90, 91, 92})
        row = compare(before, after, held_out={"piqa"}, before_items=before_items, after_items=after_items)[0]
        assert row["delta"] == pytest.approx(-0.04)
        assert row["p_value"] == pytest.approx(0.34375) and row["ci_low"] < 0 < row["ci_high"]
        assert row["significant"] is False and not row["forgetting"]

    def test_threshold_is_a_minimum_effect_size(self):
        before, before_items = _accuracy_run("piqa", 1000, set(range(600)))
        after, after_items = _accuracy_run("piqa", 1000, set(range(585)))
        kwargs = {"held_out": {"piqa"}, "before_items": before_items, "after_items": after_items}
        assert compare(before, after, **kwargs)[0]["forgetting"]  # -0.015, 15 lost and none gained: significant
        assert not compare(before, after, threshold=0.02, **kwargs)[0]["forgetting"]

    def test_significant_drop_on_tuned_task_is_not_forgetting(self):
        before, before_items = _accuracy_run("piqa", 100, set(range(60)))
        after, after_items = _accuracy_run("piqa", 100, set(range(30)))
        row = compare(before, after, held_out={"hellaswag"}, before_items=before_items, after_items=after_items)[0]
        assert row["significant"] and not row["forgetting"]

    def test_continuous_metric_gets_a_bootstrap_interval(self):
        before_items = [{"task": "dialogsum", "prompt": f"d{i}", "scores": {"rouge1": 0.2 + 0.01 * (i % 5)}}
                        for i in range(40)]
        after_items = [{**row, "scores": {"rouge1": row["scores"]["rouge1"] + 0.1 + 0.02 * (i % 3)}}
                       for i, row in enumerate(before_items)]
        mean = lambda items: sum(r["scores"]["rouge1"] for r in items) / len(items)  # noqa: E731
        row = compare({"dialogsum": {"rouge1": mean(before_items)}}, {"dialogsum": {"rouge1": mean(after_items)}},
                      before_items=before_items, after_items=after_items)[0]
        assert row["test"] == "paired bootstrap" and row["p_value"] is None
        assert 0.1 <= row["ci_low"] < row["delta"] < row["ci_high"] <= 0.14 and row["significant"]

    def test_without_per_item_scores_nothing_is_tested(self):
        # A 0.40 drop on a held-out task, but old eval files: no interval, no verdict, no flag.
        rows = compare({"piqa": {"acc": 0.6}}, {"piqa": {"acc": 0.2}}, held_out={"piqa"})
        assert rows[0]["note"] == "no per-item scores" and rows[0]["ci_low"] is None
        assert rows[0]["significant"] is None and not rows[0]["forgetting"]

    def test_different_items_do_not_pair(self):
        before, before_items = _accuracy_run("piqa", 100, set(range(60)))
        after, after_items = _accuracy_run("piqa", 99, set(range(30)))
        assert compare(before, after, before_items=before_items, after_items=after_items)[0]["note"] == (
            "runs scored different items")
        after_items = [{**row, "prompt": row["prompt"] + "?"} for row in before_items]
        assert compare(before, before, before_items=before_items, after_items=after_items)[0]["note"] == (
            "runs scored different items")

    def test_scores_that_do_not_match_the_metric_are_not_used(self):
        before, before_items = _accuracy_run("piqa", 100, set(range(60)))
        row = compare({"piqa": {"acc": 0.5}}, before, before_items=before_items, after_items=before_items)[0]
        assert row["ci_low"] is None and "do not average" in row["note"]

    def test_missing_metric_has_no_delta(self):
        rows = compare({"piqa": {"acc": 0.6}}, {"hellaswag": {"acc": 0.3}}, held_out={"piqa"})
        assert [(r["task"], r["before"], r["after"], r["delta"], r["forgetting"]) for r in rows] == [
            ("piqa", 0.6, None, None, False), ("hellaswag", None, 0.3, None, False)]
        assert rows[0]["note"] is None

    def test_accepts_eval_json_shape(self):
        result = {"model": "m", "tasks": {"piqa": {"task": "piqa", "metrics": {"acc": 0.5}}}}
        assert task_metrics(result) == {"piqa": {"acc": 0.5}}

    def test_negative_threshold_raises(self):
        with pytest.raises(InstructuneError, match="threshold"):
            compare(BEFORE, AFTER, threshold=-1)


class TestMarkdown:
    def test_before_after_table_without_items(self):
        text = before_after_markdown(compare({"rouge1": 0.21, "rouge2": 0.05}, {"rouge1": 0.43, "rouge2": 0.0412}))
        assert text.splitlines() == [
            "| metric | before | after | Δ |", "|---|---|---|---|",
            "| rouge1 | 0.2100 | 0.4300 | +0.2200 no CI (no per-item scores) |",
            "| rouge2 | 0.0500 | 0.0412 | -0.0088 no CI (no per-item scores) |",
            "", "No confidence intervals (no per-item scores), so no change is tested."]

    def test_before_after_table_with_items(self):
        before, before_items = _accuracy_run("support_intent", 40, set(range(10)))
        after, after_items = _accuracy_run("support_intent", 40, set(range(9)) | {20})
        text = before_after_markdown(compare(before, after, before_items=before_items, after_items=after_items))
        assert "| support_intent | acc | 0.2500 | 0.2500 | +0.0000 [-0.075, +0.075] p=1 within noise |" in text
        assert "95% confidence interval" in text and "support_intent 40" in text

    def test_comparison_marks_forgetting_and_noise(self):
        before, before_items = _accuracy_run("piqa", 100, set(range(60)))
        after_big, big_items = _accuracy_run("piqa", 100, set(range(48)))
        after_small, small_items = _accuracy_run("piqa", 100, set(range(58)))
        comparisons = {
            "big": compare(before, after_big, held_out={"piqa"}, before_items=before_items, after_items=big_items),
            "small": compare(before, after_small, held_out={"piqa"}, before_items=before_items, after_items=small_items),
        }
        text = comparison_markdown("base", comparisons)
        assert ("| piqa (held out) | acc | 0.6000 | 0.4800 | **-0.1200 [-0.190, -0.060] p=0.00049 forgetting** "
                "| 0.5800 | -0.0200 [-0.050, +0.000] p=0.5 within noise |") in text
        assert "Flagged: piqa acc (big)." in text

    def test_untested_held_out_drop_is_named(self):
        text = comparison_markdown("base", {"tuned": compare(BEFORE, AFTER, held_out={"piqa", "hellaswag"})})
        assert "| piqa (held out) | acc | 0.6200 | 0.5800 | -0.0400 no CI (no per-item scores) |" in text
        assert "None flagged. Drops not tested: hellaswag acc (tuned: no per-item scores)" in text


def _write_run(path, metrics_by_task, predictions):
    tasks = {task: {"task": task, "metrics": metrics} for task, metrics in metrics_by_task.items()}
    path.write_text(json.dumps({"model": path.stem, "predictions": path.stem + ".predictions.jsonl", "tasks": tasks}))
    lines = [json.dumps(row) for row in predictions]
    (path.parent / (path.stem + ".predictions.jsonl")).write_text("\n".join(lines) + "\n")


class TestCompareCommand:
    def test_writes_intervals_into_table_json_chart_and_html(self, tmp_path, capsys):
        prompt = "Summarize this dialogue:\n\n#Person1#: Hi <there>"
        dialog_before = [{"task": "dialogsum", "prompt": f"{prompt} {i}", "prediction": "old answer",
                          "references": ["gold"], "scores": {"rouge1": 0.2 + 0.01 * (i % 3)}} for i in range(12)]
        dialog_after = [{**row, "prediction": "new answer", "scores": {"rouge1": row["scores"]["rouge1"] + 0.2}}
                        for row in dialog_before]
        piqa_before, piqa_before_items = _accuracy_run("piqa", 100, set(range(62)))
        piqa_after, piqa_after_items = _accuracy_run("piqa", 100, set(range(40)))
        hella_before, hella_before_items = _accuracy_run("hellaswag", 100, set(range(30)))
        hella_after, hella_after_items = _accuracy_run("hellaswag", 100, set(range(29)))
        mean = lambda rows: sum(r["scores"]["rouge1"] for r in rows) / len(rows)  # noqa: E731
        _write_run(tmp_path / "base.json", {"dialogsum": {"rouge1": mean(dialog_before)}, **piqa_before, **hella_before},
                   dialog_before + piqa_before_items + hella_before_items)
        _write_run(tmp_path / "tuned.json", {"dialogsum": {"rouge1": mean(dialog_after)}, **piqa_after, **hella_after},
                   dialog_after + piqa_after_items + hella_after_items)
        loss = tmp_path / "loss.png"
        loss.write_bytes(b"\x89PNG\r\n\x1a\n")
        out = tmp_path / "report"
        code = compare_module.main([str(tmp_path / "base.json"), str(tmp_path / "tuned.json"), "--held-out", "piqa",
                                    "hellaswag", "--loss-png", str(loss), "-o", str(out)])
        assert code == 0
        printed = capsys.readouterr().out
        assert "| piqa (held out) | acc | 0.6200 | 0.4000 | **-0.2200 [" in printed
        assert "| hellaswag (held out) | acc | 0.3000 | 0.2900 | -0.0100 [-0.030, +0.000] p=1 within noise |" in printed
        assert (out / "comparison.md").read_text() in printed
        saved = json.loads((out / "comparison.json").read_text())
        assert saved["held_out"] == ["hellaswag", "piqa"] and saved["confidence"] == 0.95 and saved["seed"] == 0
        rows = {row["task"]: row for row in saved["comparisons"]["tuned"]}
        assert rows["piqa"]["forgetting"] and rows["piqa"]["n"] == 100
        assert rows["dialogsum"]["ci_low"] == pytest.approx(0.2) and rows["dialogsum"]["significant"]
        assert not rows["hellaswag"]["significant"] and not rows["hellaswag"]["forgetting"]
        assert (out / "comparison.png").stat().st_size > 1000
        page = (out / "report.html").read_text()
        assert "old answer" in page and "new answer" in page and "Hi &lt;there&gt;" in page
        assert '<td class="flag">-0.2200 [' in page and '<td class="noise">-0.0100 [-0.030, +0.000] p=1 within noise' in page
        assert "95% confidence interval" in page
        assert 'src="loss.png"' in page and (out / "loss.png").is_file()

    def test_old_eval_files_say_no_ci(self, tmp_path, capsys):
        rows = [{"task": "piqa", "prompt": "q", "prediction": "a", "references": ["a"]}]
        _write_run(tmp_path / "base.json", BEFORE, rows)
        _write_run(tmp_path / "tuned.json", AFTER, rows)
        assert compare_module.main([str(tmp_path / "base.json"), str(tmp_path / "tuned.json"), "--held-out", "piqa",
                                    "-o", str(tmp_path / "out")]) == 0
        text = (tmp_path / "out" / "comparison.md").read_text()
        assert "-0.0400 no CI (no per-item scores)" in text and "None flagged." in text

    def test_names_the_decoding_where_a_run_left_greedy(self, tmp_path, capsys):
        rows = [{"task": "dialogsum", "prompt": "q", "prediction": "a", "references": ["a"], "scores": {"rouge1": 1.0}}]
        _write_run(tmp_path / "old.json", {"dialogsum": {"rouge1": 0.3}, "piqa": {"acc": 0.6}}, rows)
        old = json.loads((tmp_path / "old.json").read_text())
        old["tasks"]["dialogsum"]["kind"] = "generation"  # an eval file from before the decoding flags
        (tmp_path / "old.json").write_text(json.dumps(old))
        beams = {**old, "tasks": {"dialogsum": {**old["tasks"]["dialogsum"], "decoding": {**GREEDY, "num_beams": 4}},
                                  "piqa": {**old["tasks"]["piqa"], "decoding": None}}}
        (tmp_path / "beam4.json").write_text(json.dumps({**beams, "predictions": "old.predictions.jsonl"}))
        runs = [str(tmp_path / "old.json"), str(tmp_path / "beam4.json")]
        assert compare_module.main([*runs, "-o", str(tmp_path / "out")]) == 0
        text = (tmp_path / "out" / "comparison.md").read_text()
        assert ("Decoding (`instructune eval --num-beams` and the other decoding flags): "
                "dialogsum greedy (old) / num_beams=4 (beam4).") in text
        assert json.loads((tmp_path / "out" / "comparison.json").read_text())["decoding"] == {
            "dialogsum": "greedy (old) / num_beams=4 (beam4)"}
        assert compare_module.main([runs[0], runs[0], "--names", "a", "b", "-o", str(tmp_path / "same")]) == 0
        assert "Decoding" not in (tmp_path / "same" / "comparison.md").read_text()  # greedy everywhere: no line

    def test_help_documents_the_statistics(self, capsys):
        with pytest.raises(SystemExit):
            compare_module.main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "paired bootstrap" in text and "exact McNemar" in text and "within noise" in text
        assert "--confidence" in text and "--bootstrap-samples" in text

    def test_unknown_held_out_task_raises(self, tmp_path):
        _write_run(tmp_path / "a.json", BEFORE, [])
        _write_run(tmp_path / "b.json", AFTER, [])
        with pytest.raises(InstructuneError, match="boolq"):
            compare_module.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--held-out", "boolq",
                                 "-o", str(tmp_path / "o")])


def _matrix_runs(tmp_path) -> list[str]:
    """Eval files of a base model, three single-task runs and a mixture; returns their paths, base first.

    PIQA (acc, 100 items), DialogSum (rouge1, 21 items) and intents (exact_match, 100 items). Against the
    single-task runs, the mixture is within noise on PIQA (2 items lost), below on DialogSum (-0.1 on
    every item) and beats on intents (15 items gained).
    """
    # run: (PIQA items right, DialogSum ROUGE-1 over the base's, intent items right)
    spec = {"base": (50, 0.0, 0), "piqa": (70, 0.0, 0), "dialogsum": (50, 0.2, 0), "support_intent": (50, 0.0, 80),
            "mix": (68, 0.1, 95)}
    paths = []
    for name, (piqa_right, rouge_gain, intent_right) in spec.items():
        piqa, piqa_items = _accuracy_run("piqa", 100, set(range(piqa_right)))
        dialog_items = [{"task": "dialogsum", "prompt": f"dialogue {i}", "prediction": "x", "references": ["x"],
                         "scores": {"rouge1": 0.2 + 0.01 * (i % 3) + rouge_gain}} for i in range(21)]
        intent_items = [{"task": "support_intent", "prompt": f"message {i}", "prediction": "x", "references": ["x"],
                         "scores": {"exact_match": float(i < intent_right)}} for i in range(100)]
        metrics = {**piqa, "dialogsum": {"rouge1": sum(r["scores"]["rouge1"] for r in dialog_items) / 21},
                   "support_intent": {"exact_match": intent_right / 100}}
        _write_run(tmp_path / f"{name}.json", metrics, piqa_items + dialog_items + intent_items)
        paths.append(str(tmp_path / f"{name}.json"))
    return paths


MATRIX = ["piqa=acc", "dialogsum=rouge1", "support_intent=exact_match"]


class TestMatrix:
    def test_runs_by_tasks_with_the_diagonal_and_the_mixture_against_it(self, tmp_path, capsys):
        paths = _matrix_runs(tmp_path)
        base = json.loads((tmp_path / "base.json").read_text())
        base["tasks"]["support_intent"].update(mode="instruct", template=0, n_examples=100, start=22, every=44,
                                               data="bitext.jsonl", max_new_tokens=64)
        (tmp_path / "base.json").write_text(json.dumps(base))
        out = tmp_path / "matrix"
        assert compare_module.main([*paths, "--matrix", *MATRIX, "-o", str(out)]) == 0
        table = (out / "matrix.md").read_text()
        assert table in capsys.readouterr().out
        lines = table.splitlines()
        assert lines[0] == "| run | piqa: acc | dialogsum: rouge1 | support_intent: exact_match |"
        assert lines[2] == "| base | 0.5000 | 0.2100 | 0.0000 |"
        assert lines[3].startswith("| piqa | **0.7000** (+0.2000 [")  # the diagonal is bold
        assert "| 0.2100 (+0.0000 [+0.000, +0.000] within noise) |" in lines[3]
        assert lines[4].startswith("| dialogsum | 0.5000 (+0.0000 [") and "| **0.4100** (+0.2000 [+0.200, +0.200]) |" in lines[4]
        assert lines[6].startswith("| mix | 0.6800 (+0.1800 [")
        versus = lines[7].split(" | ")
        assert versus[0] == "| mix vs single-task"
        assert versus[1].startswith("-0.0200 [") and versus[1].endswith("p=0.5 matches (within noise); 90% of its gain")
        assert versus[2] == "-0.1000 [-0.100, -0.100] below; 50% of its gain"
        assert versus[3].startswith("+0.1500 [") and versus[3].endswith("**beats**; 119% of its gain |")
        assert ("support_intent: exact_match, instruct mode, template 0, 100 items of bitext.jsonl (22, 66, 110, ...), "
                "at most 64 new tokens") in table
        saved = json.loads((out / "matrix.json").read_text())
        rows = {row["task"]: row for row in saved["versus_single_task"]["mix"]}
        assert rows["support_intent"]["before"] == 0.8 and rows["support_intent"]["after"] == 0.95
        assert rows["support_intent"]["test"] == "exact McNemar" and rows["support_intent"]["n"] == 100
        assert set(saved["versus_single_task"]) == {"mix"} and saved["metrics"]["dialogsum"] == "rouge1"
        assert (out / "matrix.png").stat().st_size > 1000 and (out / "comparison.md").is_file()

    def test_a_run_without_a_single_task_run_has_no_versus_row(self, tmp_path):
        paths = _matrix_runs(tmp_path)
        out = tmp_path / "matrix"
        assert compare_module.main([paths[0], paths[1], paths[4], "--names", "base", "piqa", "mix",
                                    "--matrix", *MATRIX, "-o", str(out)]) == 0
        table = (out / "matrix.md").read_text()
        versus = table.splitlines()[5]
        assert versus.startswith("| mix vs single-task | -0.0200 [") and versus.endswith(" | – | – |")
        assert "Scores:" not in table  # these eval files do not say how they were scored

    @pytest.mark.parametrize("spec, error", [
        ("piqa", "--matrix 'piqa'; expected TASK=METRIC"),
        ("piqa=rouge1", r"--matrix piqa=rouge1: a run lacks it \(acc\)"),
        ("boolq=acc", "--matrix boolq=acc: a run lacks it .*no task 'boolq'"),
    ])
    def test_bad_matrix_specs_are_one_line(self, tmp_path, spec, error):
        paths = _matrix_runs(tmp_path)
        with pytest.raises(InstructuneError, match=error):
            compare_module.main([*paths, "--matrix", spec, "-o", str(tmp_path / "o")])


class TestEvalThenCompare:
    def test_eval_command_writes_metrics_and_predictions(self, tmp_path, tiny_llama_dir, capsys):
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
        assert {"rouge1", "rouge1_first_ref", "rouge1_mean_ref"} <= set(result["tasks"]["dialogsum"]["metrics"])
        printed = capsys.readouterr().out
        for protocol in ("(best of the references)", "(first reference)", "(mean over the references)"):
            assert protocol in printed
        assert result["tasks"]["piqa"]["n_examples"] == 2 and result["versions"]["torch"]
        assert result["tasks"]["dialogsum"]["decoding"] == GREEDY and result["tasks"]["piqa"]["decoding"] is None
        rows = [json.loads(line) for line in (tmp_path / "base.predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 4
        assert rows[0]["references"] == ["They greet.", "Two people say hi 0.", "A greeting."]
        # Per-item scores: every metric of the task, averaging to the reported value.
        for task, metrics in ((name, result["tasks"][name]["metrics"]) for name in ("dialogsum", "piqa")):
            task_rows = [row for row in rows if row["task"] == task]
            assert set(task_rows[0]["scores"]) == set(metrics)
            for metric, value in metrics.items():
                assert sum(row["scores"][metric] for row in task_rows) / len(task_rows) == pytest.approx(value)

        report = tmp_path / "report"
        assert compare_module.main([str(out), str(out), "--names", "base", "same", "--held-out", "piqa",
                                    "-o", str(report)]) == 0
        saved = json.loads((report / "comparison.json").read_text())["comparisons"]["same"]
        assert all(row["n"] == 2 and row["ci_low"] == row["ci_high"] == 0 for row in saved)
        assert "None flagged." in (report / "comparison.md").read_text()
        assert result["tasks"]["piqa"]["mode"] == "instruct" and {row["mode"] for row in rows} == {"instruct"}
        assert "Scoring mode (`instructune eval --mode`): dialogsum instruct; piqa instruct." in (
            report / "comparison.md").read_text()

    def test_decoding_flags_are_recorded_per_generation_task(self, tmp_path, tiny_llama_dir):
        dialogs = tmp_path / "dialogsum.jsonl"
        dialogs.write_text("".join(json.dumps({"dialogue": f"#Person1#: Hi {i}. #Person2#: Hello.",
                                               "summary": "They greet."}) + "\n" for i in range(2)))
        piqa = tmp_path / "piqa.jsonl"
        piqa.write_text(json.dumps({"goal": "Open a jar", "sol1": "Twist the lid", "sol2": "Bite", "label": 0}) + "\n")
        out = tmp_path / "beams.json"
        assert run_module.main(["--model", str(tiny_llama_dir), "--task", "dialogsum", "--data", str(dialogs),
                                "--task", "piqa", "--data", str(piqa), "--max-new-tokens", "4", "--num-beams", "3",
                                "--length-penalty", "0.5", "--no-repeat-ngram-size", "3", "--repetition-penalty", "1.2",
                                "--no-progress", "-o", str(out)]) == 0
        tasks = json.loads(out.read_text())["tasks"]
        assert tasks["dialogsum"]["decoding"] == {"num_beams": 3, "length_penalty": 0.5, "no_repeat_ngram_size": 3,
                                                  "repetition_penalty": 1.2}
        assert tasks["piqa"]["decoding"] is None  # scored by log-likelihood, nothing decoded
        with pytest.raises(InstructuneError, match="length_penalty 0.8 only acts in beam search; set num_beams > 1"):
            run_module.main(["--task", "dialogsum", "--data", str(dialogs), "--length-penalty", "0.8", "-o", str(out)])

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

    def test_items_per_task_by_limit_start_and_every(self, tmp_path, tiny_llama_dir):
        # Issue 16: 1,000 multiple-choice items but 200 generations in one run; a search on other items.
        piqa = tmp_path / "piqa.jsonl"
        piqa.write_text("".join(json.dumps({"goal": f"Goal {i}.", "sol1": "Twist", "sol2": "Bite", "label": i % 2}) + "\n"
                                for i in range(10)))
        out = tmp_path / "slices.json"
        assert run_module.main(["--model", str(tiny_llama_dir), "--task", "piqa", "--data", str(piqa),
                                "--task", "piqa_lmeval", "--data", str(piqa), "--limit", "3", "--limit", "2",
                                "--start", "0", "--start", "4", "--every", "1", "--every", "3", "--template", "sample",
                                "--no-progress", "-o", str(out)]) == 0
        tasks = json.loads(out.read_text())["tasks"]
        assert {name: (t["start"], t["every"], t["limit"], t["n_examples"]) for name, t in tasks.items()} == {
            "piqa": (0, 1, 3, 3), "piqa_lmeval": (4, 3, 2, 2)}
        rows = [json.loads(line) for line in (tmp_path / "slices.predictions.jsonl").read_text().splitlines()]
        goals = [(row["task"], int(re.search(r"Goal (\d+)", row["prompt"]).group(1))) for row in rows]
        assert goals == [("piqa", 0), ("piqa", 1), ("piqa", 2), ("piqa_lmeval", 4), ("piqa_lmeval", 7)]
        # A slice renders as the whole file does: item 2 keeps its sampled template.
        whole = tmp_path / "whole.json"
        run_module.main(["--model", str(tiny_llama_dir), "--task", "piqa", "--data", str(piqa), "--template", "sample",
                         "--no-progress", "-o", str(whole)])
        assert [json.loads(line) for line in (tmp_path / "whole.predictions.jsonl").read_text().splitlines()][2][
            "prompt"] == rows[2]["prompt"]

    @pytest.mark.parametrize("flags, error", [
        (["--limit", "1", "--limit", "2", "--limit", "3"], "3 --limit for 2 --task; give it once"),
        (["--start", "-1"], "--start -1; expected a number >= 0"),
        (["--every", "0"], "--every 0; expected a number >= 1"),
        (["--start", "10"], "eval piqa: .*piqa.jsonl: --start 10, but it holds only 1 examples"),
    ])
    def test_bad_slices_are_one_line(self, tmp_path, tiny_llama_dir, flags, error):
        piqa = tmp_path / "piqa.jsonl"
        piqa.write_text(json.dumps({"goal": "Open a jar", "sol1": "Twist the lid", "sol2": "Bite", "label": 0}) + "\n")
        with pytest.raises(InstructuneError, match=error):
            run_module.main(["--model", str(tiny_llama_dir), "--task", "piqa", "--data", str(piqa), "--task", "piqa",
                             "--data", str(piqa), *flags, "--no-progress", "-o", str(tmp_path / "o.json")])

    def test_mismatched_task_and_data_counts_raise(self, tmp_path):
        with pytest.raises(InstructuneError, match="one --data per --task"):
            run_module.main(["--task", "piqa", "--task", "dialogsum", "--data", "x.jsonl", "-o", str(tmp_path / "o.json")])
