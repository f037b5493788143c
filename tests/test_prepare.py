"""`instructune prepare`: single task and mixture forms, outputs, summaries, one-line errors."""

import json
import re

import datasets
import pytest

from instructune.data.prepare import build_task_examples, load_mixture, main, prepare, summarize
from instructune.errors import InstructuneError

PIQA_ROWS = [{"goal": f"goal {i}", "sol1": f"first {i}", "sol2": f"second {i}", "label": i % 2} for i in range(40)]
ALPACA_ROWS = [{"instruction": f"Do {i}", "input": "" if i % 3 else f"in {i}", "output": f"out {i}"} for i in range(200)]


@pytest.fixture()
def raw_dir(tmp_path):
    for name, rows in {"piqa.jsonl": PIQA_ROWS, "alpaca.jsonl": ALPACA_ROWS}.items():
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class TestSingleTask:
    def test_writes_jsonl_and_summary(self, raw_dir, capsys):
        out = raw_dir / "out" / "piqa.jsonl"
        assert main([str(raw_dir / "piqa.jsonl"), "--task", "piqa", "-o", str(out), "--limit", "30"]) == 0
        examples = read_jsonl(out)
        assert len(examples) == 30
        assert set(examples[0]) == {"prompt", "completion", "task", "template", "options", "label"}
        summary = json.loads((raw_dir / "out" / "piqa.jsonl.summary.json").read_text())
        assert summary["examples"] == 30 and summary["per_task"] == {"piqa": 30}
        assert sum(summary["per_template"]["piqa"].values()) == 30
        assert summary["length"]["unit"] == "characters"
        assert "30 examples" in capsys.readouterr().out

    def test_template_all_and_fixed(self, raw_dir):
        summary = prepare(raw_dir / "all.jsonl", data=raw_dir / "piqa.jsonl", task="piqa", template="all", limit=5)
        assert summary["examples"] == 5 * 9
        main([str(raw_dir / "piqa.jsonl"), "--task", "piqa", "-o", str(raw_dir / "t3.jsonl"), "--template", "3"])
        assert {e["template"] for e in read_jsonl(raw_dir / "t3.jsonl")} == {3}

    def test_same_seed_same_output(self, raw_dir):
        for name in ("a.jsonl", "b.jsonl"):
            main([str(raw_dir / "alpaca.jsonl"), "--task", "alpaca", "-o", str(raw_dir / name), "--seed", "5",
                  "--num-fewshot", "2"])
        assert (raw_dir / "a.jsonl").read_text() == (raw_dir / "b.jsonl").read_text()

    def test_datasets_folder_output(self, raw_dir):
        prepare(raw_dir / "piqa_ds", data=raw_dir / "piqa.jsonl", task="piqa")
        loaded = datasets.load_from_disk(str(raw_dir / "piqa_ds"))
        assert len(loaded) == 40 and loaded[0]["task"] == "piqa"
        assert (raw_dir / "piqa_ds.summary.json").is_file()

    def test_token_lengths_and_truncation_count(self, raw_dir, tokenizer):
        summary = prepare(raw_dir / "tok.jsonl", data=raw_dir / "alpaca.jsonl", task="alpaca",
                          tokenizer=tokenizer, max_length=40)
        length = summary["length"]
        assert length["unit"] == "tokens" and length["p50"] <= length["p90"] <= length["p99"] <= length["max"]
        assert 0 <= summary["over_max_length"] <= 200

    def test_user_yaml_task(self, raw_dir):
        (raw_dir / "goal.yaml").write_text("kind: generation\nmetric: rouge\nfields: [goal, sol1]\n"
                                           "templates:\n  - {input: 'How to {goal}?', target: '{sol1}'}\n")
        summary = prepare(raw_dir / "g.jsonl", data=raw_dir / "piqa.jsonl", task=str(raw_dir / "goal.yaml"))
        assert summary["per_task"] == {"goal": 40}

    def test_needs_one_form(self, raw_dir):
        with pytest.raises(InstructuneError, match="--task"):
            main([str(raw_dir / "piqa.jsonl"), "-o", str(raw_dir / "x.jsonl")])
        with pytest.raises(InstructuneError, match="not both"):
            main([str(raw_dir / "piqa.jsonl"), "--task", "piqa", "--mixture", "m.yaml", "-o", str(raw_dir / "x.jsonl")])

    def test_row_error_is_one_line_with_file_and_line(self, raw_dir):
        (raw_dir / "broken.jsonl").write_text(json.dumps(PIQA_ROWS[0]) + "\n" + json.dumps({"goal": "g", "sol1": "a", "label": 0}) + "\n")
        with pytest.raises(InstructuneError, match=r"record lacks field 'sol2' at .*broken\.jsonl:2"):
            main([str(raw_dir / "broken.jsonl"), "--task", "piqa", "-o", str(raw_dir / "x.jsonl"), "--template", "0"])


class TestEmptyCompletions:
    """Issue 12 item 4: a record whose target renders empty is skipped and named, or stops with --strict."""

    ROWS = [{"instruction": "Say hi", "input": "", "output": "Hi"}, {"instruction": "Summarize", "input": "x", "output": ""},
            {"instruction": "Add", "input": "1+1", "output": "2"}, {"instruction": "Answer", "input": "", "output": " \n "}]

    def test_skipped_counted_and_named_in_the_summary(self, tmp_path, capsys):
        raw = tmp_path / "raw.jsonl"
        raw.write_text("".join(json.dumps(row) + "\n" for row in self.ROWS))
        out = tmp_path / "out.jsonl"
        assert main([str(raw), "--task", "alpaca", "-o", str(out)]) == 0
        assert [e["completion"] for e in read_jsonl(out)] == ["Hi", "2"]
        expected = {"count": 2, "first": [f"{raw}:2", f"{raw}:4"]}
        assert json.loads((tmp_path / "out.jsonl.summary.json").read_text())["empty_completion"] == expected
        assert f"skipped with an empty completion 2 ({raw}:2, {raw}:4)" in capsys.readouterr().out

    def test_mixture_skips_before_mixing(self, tmp_path):
        (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(row) + "\n" for row in self.ROWS))
        (tmp_path / "mix.yaml").write_text("tasks:\n  - {task: alpaca, data: alpaca.jsonl}\n")
        summary = prepare(tmp_path / "mix.jsonl", mixture=tmp_path / "mix.yaml")
        assert summary["examples"] == 2 and summary["empty_completion"]["count"] == 2

    def test_strict_stops_naming_the_first_and_writes_nothing(self, tmp_path):
        raw = tmp_path / "raw.csv"
        datasets.Dataset.from_list(self.ROWS).to_csv(str(raw), index=False)
        out = tmp_path / "out.jsonl"
        with pytest.raises(InstructuneError, match=rf"^{raw} record 2: the completion renders empty \(2 such examples"):
            main([str(raw), "--task", "alpaca", "-o", str(out), "--strict"])
        assert not out.exists() and not (tmp_path / "out.jsonl.summary.json").exists()


class TestTruncationCounts:
    """Issue 12 item 5: `prepare --max-length` counts exactly what training will cut, with the same rows."""

    def test_prepare_reports_what_training_reports(self, tmp_path, tokenizer, llama):
        from instructune.config import load_config
        from instructune.train.trainer import Trainer

        long = "The quick brown fox jumps over the lazy dog. " * 12
        rows = [{"instruction": f"Say {i}", "input": long if i % 3 == 0 else "", "output": long if i % 4 == 0 else "ok"}
                for i in range(12)]
        raw = tmp_path / "raw.jsonl"
        raw.write_text("".join(json.dumps(row) + "\n" for row in rows))
        out = tmp_path / "train.jsonl"
        summary = prepare(out, data=raw, task="alpaca", tokenizer=tokenizer, max_length=96)
        truncation = summary["truncation"]
        assert truncation["prompt_cut"]["count"] > 0 and truncation["answer_cut"]["count"] > 0

        config = load_config(None, [f"output_dir={tmp_path}", "run_name=run", f"data.train={out}", "data.max_length=96",
                                    "lora.enabled=false", "train.num_threads=1"])
        trainer = Trainer(config, model=llama, tokenizer=tokenizer, progress=False)
        trainer.setup()
        assert trainer.data_report["train"] == truncation
        assert truncation["prompt_cut"]["first"][0].startswith(f"{out}:")


MIXTURE = """\
strategy: proportional
cap: 100
seed: 3
tasks:
  - {task: alpaca, data: alpaca.jsonl}
  - {task: piqa, data: piqa.jsonl, limit: 20}
"""


class TestMixture:
    def test_mixture_relative_paths_caps_and_report(self, raw_dir, monkeypatch, tmp_path_factory):
        (raw_dir / "mix.yaml").write_text(MIXTURE)
        monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # data paths resolve beside the YAML
        summary = prepare(raw_dir / "mix.jsonl", mixture=raw_dir / "mix.yaml")
        assert summary["per_task"] == {"alpaca": 100, "piqa": 20}
        assert summary["mixture"]["tasks"]["alpaca"]["proportion"] == pytest.approx(100 / 120)
        examples = read_jsonl(raw_dir / "mix.jsonl")
        assert len(examples) == 120 and {e["task"] for e in examples[:30]} == {"alpaca", "piqa"}
        assert "options" in next(e for e in examples if e["task"] == "piqa")

    def test_mixture_is_deterministic(self, raw_dir):
        (raw_dir / "mix.yaml").write_text(MIXTURE)
        for name in ("m1.jsonl", "m2.jsonl"):
            main(["--mixture", str(raw_dir / "mix.yaml"), "-o", str(raw_dir / name)])
        assert (raw_dir / "m1.jsonl").read_text() == (raw_dir / "m2.jsonl").read_text()

    def test_start_skips_records_kept_for_evaluation(self, raw_dir):
        # Issue 16: train on PIQA items 30-34 while items 0-29 are evaluated; same templates as a full render.
        (raw_dir / "mix.yaml").write_text("tasks:\n  - {task: piqa, data: piqa.jsonl, start: 30, limit: 5}\n")
        prepare(raw_dir / "mix.jsonl", mixture=raw_dir / "mix.yaml")
        prompts = [e["prompt"] for e in read_jsonl(raw_dir / "mix.jsonl")]
        assert sorted(int(re.search(r"goal (\d+)", prompt).group(1)) for prompt in prompts) == [30, 31, 32, 33, 34]
        assert set(prompts) <= {e["prompt"] for e in build_task_examples(raw_dir / "piqa.jsonl", "piqa")}

    def test_every_takes_a_spread_sample_and_keeps_file_lines(self, raw_dir, tmp_path):
        # Issue 16: Bitext is sorted by intent; train on its odd rows while the evaluations read even ones.
        (raw_dir / "mix.yaml").write_text("tasks:\n  - {task: piqa, data: piqa.jsonl, start: 1, every: 10, limit: 3}\n")
        prepare(raw_dir / "mix.jsonl", mixture=raw_dir / "mix.yaml")
        goals = sorted(int(re.search(r"goal (\d+)", e["prompt"]).group(1)) for e in read_jsonl(raw_dir / "mix.jsonl"))
        assert goals == [1, 11, 21]
        assert len(build_task_examples(raw_dir / "piqa.jsonl", "piqa", start=1, every=10)) == 4  # 1, 11, 21, 31
        rows = [{"instruction": str(i), "input": "", "output": "" if i == 5 else str(i)} for i in range(8)]
        (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        skipped = []
        examples = build_task_examples(tmp_path / "alpaca.jsonl", "alpaca", start=1, every=2, skipped=skipped)
        assert [e["completion"] for e in examples] == ["1", "3", "7"] and skipped == [f"{tmp_path / 'alpaca.jsonl'}:6"]
        with pytest.raises(InstructuneError, match="every 0; expected a step of at least 1"):
            build_task_examples(tmp_path / "alpaca.jsonl", "alpaca", every=0)

    def test_start_keeps_file_lines_in_skips_and_errors(self, tmp_path):
        rows = TestEmptyCompletions.ROWS
        (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        skipped = []
        examples = build_task_examples(tmp_path / "alpaca.jsonl", "alpaca", start=2, skipped=skipped)
        assert [e["completion"] for e in examples] == ["2"] and skipped == [f"{tmp_path / 'alpaca.jsonl'}:4"]
        (tmp_path / "piqa.jsonl").write_text("".join(
            json.dumps(row) + "\n" for row in [*PIQA_ROWS[:3], {"goal": "g", "sol1": "a", "label": 0}]))
        with pytest.raises(InstructuneError, match=r"lacks field 'sol2' at .*piqa\.jsonl:4"):
            build_task_examples(tmp_path / "piqa.jsonl", "piqa", start=2, template=0)
        with pytest.raises(InstructuneError, match=r"piqa\.jsonl: start 9, but it holds only 4 records"):
            build_task_examples(tmp_path / "piqa.jsonl", "piqa", start=9)

    def test_unknown_key_is_one_line_naming_it(self, raw_dir):
        (raw_dir / "bad.yaml").write_text(MIXTURE.replace("limit: 20", "limt: 20"))
        with pytest.raises(InstructuneError, match=r"bad\.yaml: tasks\.1\.limt: unknown key$"):
            load_mixture(raw_dir / "bad.yaml")

    def test_unknown_strategy_lists_allowed(self, raw_dir):
        (raw_dir / "bad.yaml").write_text(MIXTURE.replace("proportional", "uniform"))
        with pytest.raises(InstructuneError, match=r"strategy: unknown strategy 'uniform'; allowed: proportional"):
            load_mixture(raw_dir / "bad.yaml")


class TestSummarize:
    def test_percentiles_nearest_rank(self):
        examples = [{"prompt": "x" * n, "completion": "", "task": "t", "template": n % 2} for n in range(1, 101)]
        summary = summarize(examples, max_length=95)
        assert (summary["length"]["p50"], summary["length"]["p90"], summary["length"]["max"]) == (50, 90, 100)
        assert summary["over_max_length"] == 5
        assert summary["per_template"] == {"t": {"0": 50, "1": 50}}


class TestTokenizerArgument:
    def test_a_folder_path_measures_in_tokens(self, tmp_path, tiny_llama_dir, shared_data):
        from instructune.data.prepare import prepare

        summary = prepare(tmp_path / "out.jsonl", data=shared_data / "piqa" / "validation.jsonl", task="piqa",
                          limit=5, tokenizer=str(tiny_llama_dir), max_length=64)
        assert summary["length"]["unit"] == "tokens"

    def test_a_missing_tokenizer_folder_is_a_clear_error(self, tmp_path, shared_data):
        from instructune.data.prepare import prepare
        from instructune.errors import InstructuneError

        with pytest.raises(InstructuneError, match="no-such-folder"):
            prepare(tmp_path / "out.jsonl", data=shared_data / "piqa" / "validation.jsonl", task="piqa",
                    limit=5, tokenizer="no-such-folder")
