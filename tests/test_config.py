"""The run config: unknown keys and wrong types are one-line errors naming the key; overrides are YAML scalars."""

import re
from pathlib import Path

import pytest
import yaml

from instructune.config import RunConfig, apply_overrides, config_fields, load_config, save_config
from instructune.errors import InstructuneError

ROOT = Path(__file__).resolve().parents[1]
# configs/accelerate/ holds accelerate's launch configs, checked in test_distributed.py.
SHIPPED = sorted(p for p in [*(ROOT / "configs").rglob("*.y*ml"), *(ROOT / "src" / "instructune" / "configs").rglob("*.y*ml")]
                 if p.parent.name != "accelerate")
RUN_CONFIGS = [p for p in SHIPPED if "tasks" not in (yaml.safe_load(p.read_text()) or {})]
MIXTURES = [p for p in SHIPPED if p not in RUN_CONFIGS]


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


class TestLoadConfig:
    def test_defaults_without_a_file(self):
        config = load_config()
        assert config == RunConfig()
        assert config.lora.enabled and config.train.lr == 2e-4

    def test_yaml_file_then_overrides(self, tmp_path):
        path = write(tmp_path, "run_name: base\ntrain:\n  lr: 0.001\n  batch_size: 4\n")
        config = load_config(path, ["train.batch_size=2"])
        assert (config.run_name, config.train.lr, config.train.batch_size) == ("base", 0.001, 2)
        assert config.run_dir == Path("runs") / "base"

    def test_unknown_key_names_the_key(self, tmp_path):
        path = write(tmp_path, "train:\n  lrr: 0.1\n")
        with pytest.raises(InstructuneError, match=r"run\.yaml: unknown config key 'train\.lrr'") as error:
            load_config(path)
        assert "\n" not in str(error.value)
        with pytest.raises(InstructuneError, match="unknown config key 'lora.rank'"):
            load_config(None, ["lora.rank=8"])

    def test_wrong_type_names_the_key(self, tmp_path):
        with pytest.raises(InstructuneError, match=r"config key 'train\.batch_size': .*integer"):
            load_config(None, ["train.batch_size=abc"])
        path = write(tmp_path, "data:\n  packing: [1, 2]\n")
        with pytest.raises(InstructuneError, match=r"run\.yaml: config key 'data\.packing'"):
            load_config(path)

    def test_out_of_range_and_bad_choice(self):
        with pytest.raises(InstructuneError, match="train.lr"):
            load_config(None, ["train.lr=0"])
        with pytest.raises(InstructuneError, match="train.schedule"):
            load_config(None, ["train.schedule=exponential"])

    def test_invalid_yaml_names_file_and_line(self, tmp_path):
        path = write(tmp_path, "run_name: x\ntrain:\n  lr: [0.1\n  batch_size: 2\n")
        with pytest.raises(InstructuneError, match=rf"{path}:\d+: not valid YAML"):
            load_config(path)
        path = write(tmp_path, "run_name: x\ndata:\n  train: a.jsonl\n   limit: 3\n", name="indent.yaml")
        with pytest.raises(InstructuneError, match=rf"{path}:4: not valid YAML"):
            load_config(path)

    def test_missing_file_and_non_mapping(self, tmp_path):
        with pytest.raises(InstructuneError, match="missing.yaml: config file not found"):
            load_config(tmp_path / "missing.yaml")
        with pytest.raises(InstructuneError, match="expected a mapping"):
            load_config(write(tmp_path, "- a\n- b\n"))

    def test_cross_field_check_says_how_to_fix(self):
        with pytest.raises(InstructuneError, match="needs train.eval_every_n_steps and validation data"):
            load_config(None, ["train.early_stopping_patience=2"])
        with pytest.raises(InstructuneError, match="needs train.generate_every_n_steps"):
            load_config(None, ["train.early_stopping_patience=2", "train.select_best_by=rougeL"])

    def test_saved_config_loads_back_equal(self, tmp_path):
        config = load_config(None, ["run_name=saved", "lora.target_modules=[q_proj, v_proj]", "train.max_steps=7"])
        save_config(config, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml") == config


class TestChatTemplate:
    @pytest.mark.parametrize("value, expected", [("null", None), ("true", True), ("false", False),
                                                 ("chatml", "chatml"), ("gemma", "gemma")])
    def test_null_true_false_or_a_built_in_name(self, value, expected):
        assert load_config(None, [f"model.chat_template={value}"]).model.chat_template == expected

    def test_a_jinja_file_that_exists(self, tmp_path):
        path = write(tmp_path, "{{ messages }}", name="turns.jinja")
        config = load_config(None, [f"model.chat_template={path}"])
        assert config.model.chat_template == str(path)
        save_config(config, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml") == config

    @pytest.mark.parametrize("value, problem", [
        ("gemma3", "unknown chat template 'gemma3'; expected null, true, false, one of chatml, gemma, or a path to a "
                   ".jinja file"),
        ("3", "unknown chat template 3; expected null, true, false, one of chatml, gemma, or a path to a .jinja file"),
        ("[gemma]", "unknown chat template ['gemma']; expected null, true, false, one of chatml, gemma, or a path to "
                    "a .jinja file"),
        ("nowhere/turns.jinja", "nowhere/turns.jinja: chat template file not found"),
    ])
    def test_anything_else_is_one_line_naming_the_key(self, tmp_path, value, problem):
        with pytest.raises(InstructuneError) as error:
            load_config(None, [f"model.chat_template={value}"])
        assert str(error.value) == f"config: config key 'model.chat_template': {problem}"
        path = write(tmp_path, f"model:\n  chat_template: {value}\n")
        with pytest.raises(InstructuneError, match=rf"^{path}: config key 'model.chat_template': "):
            load_config(path)


class TestOverrides:
    def test_values_parse_as_yaml_scalars(self):
        config = load_config(None, ["train.lr=1e-4", "train.max_steps=50", "data.packing=false", "model.name=null",
                                    "train.max_grad_norm=null", "lora.target_modules=[q_proj, v_proj]",
                                    "lora.dropout=0.1"])
        assert config.train.lr == 1e-4 and config.train.max_steps == 50
        assert config.data.packing is False and config.model.name is None and config.train.max_grad_norm is None
        assert config.lora.target_modules == ["q_proj", "v_proj"] and config.lora.dropout == 0.1

    def test_numbers_are_accepted_where_text_is_expected(self):
        config = load_config(None, ["run_name=2024", "data.train=001.jsonl"])
        assert config.run_name == "2024" and config.data.train == "001.jsonl"

    def test_value_may_contain_equals_sign(self):
        assert apply_overrides({}, ["run_name=a=b"]) == {"run_name": "a=b"}

    def test_malformed_override(self):
        with pytest.raises(InstructuneError, match="expected key=value"):
            load_config(None, ["train.lr"])
        with pytest.raises(InstructuneError, match="lr is not a section"):
            apply_overrides({"train": {"lr": 0.1}}, ["train.lr.x=1"])


class TestConfigFields:
    def test_literal_fields_list_their_choices(self):
        fields = {field["key"]: field for field in config_fields()}
        assert fields["train.precision"]["choices"] == ["auto", "fp32", "bf16", "bf16-true"]
        assert fields["train.lr"]["choices"] is None
        assert fields["train.lr"]["default"] == RunConfig().train.lr

    def test_every_key_sets_a_value_load_config_accepts(self):
        overrides = [f"{field['key']}={field['choices'][-1]}" for field in config_fields() if field["choices"]]
        config = load_config(None, overrides)
        assert config.train.select_best_by == "f1" and config.train.schedule == "constant"


class TestShippedConfigs:
    @pytest.mark.parametrize("path", RUN_CONFIGS, ids=[str(p.relative_to(ROOT)) for p in RUN_CONFIGS])
    def test_every_shipped_run_config_validates(self, path):
        load_config(path)

    def test_forgetting_runs_share_one_budget_and_train_on_no_evaluated_item(self):
        # Issue 16: the single-task and mixture runs differ only in their data; `make forgetting` scores
        # multiple-choice items 0-999, `make forgetting-search` 1000-1499 (Makefile).
        from instructune.data.prepare import load_mixture

        single, mixture = (load_config(ROOT / "configs" / "forgetting" / f"{name}.yaml") for name in ("dialogsum", "mixed"))
        assert single.train == mixture.train and single.data.max_length == mixture.data.max_length
        assert not single.lora.enabled and not mixture.lora.enabled
        for entry in load_mixture(ROOT / "configs" / "forgetting" / "mixed.mixture.yaml").tasks:
            if "validation" in entry.data:
                assert entry.start >= 1500, f"{entry.task} trains on validation items the evaluations score"


    def test_multitask_runs_share_one_budget_and_train_on_no_evaluated_item(self):
        # Issue 16 item 3: each single-task run and the mixture differ only in their data (configs/multitask/).
        from instructune.data.prepare import load_mixture

        folder = ROOT / "configs" / "multitask"
        singles = ("dialogsum", "support_response", "support_intent", "piqa")
        runs = {name: load_config(folder / f"{name}.yaml") for name in (*singles, "mixed")}
        first = runs["mixed"]
        for name, config in runs.items():
            assert config.train == first.train and config.lora == first.lora and config.seed == first.seed, name
            assert (config.data.max_length, config.data.packing) == (first.data.max_length, first.data.packing), name
            assert config.data.train == f"runs/multitask/data/{name}.jsonl" and config.run_name == f"multitask-{name}"
        mixture = load_mixture(folder / "mixed.mixture.yaml")
        assert [entry.task for entry in mixture.tasks] == list(singles) and mixture.total == sum(mixture.weights.values())
        for entry in mixture.tasks:
            single = load_mixture(folder / f"{entry.task}.mixture.yaml")
            # The same pool, seed and templates: the mixture's share is the first of the single-task draw.
            assert single.tasks == [entry] and (single.seed, single.template) == (mixture.seed, mixture.template)
            assert mixture.weights[entry.task] <= single.total, entry.task
            if "bitext" in entry.data:
                # Bitext is one file: the evaluations read even rows (Makefile MT_SET), training odd rows only.
                assert entry.start % 2 == 1 and entry.every % 2 == 0, entry.task
            if "validation" in entry.data:
                assert entry.start >= 1500, f"{entry.task} trains on validation items the evaluations score"
        evaluated = re.findall(r"--task (\w+) --data \$\(SHARED\)/bitext\S+ --limit \S+ --start (\d+) --every (\d+)",
                               (ROOT / "Makefile").read_text().split("MT_SET =")[1].split("\n\n")[0].split("MT_FLAGS")[0])
        assert {task for task, _, _ in evaluated} == {"support_response", "support_intent"}
        assert all(int(start) % 2 == 0 and int(every) % 2 == 0 for _, start, every in evaluated)


@pytest.mark.parametrize("path", MIXTURES, ids=[str(p.relative_to(ROOT)) for p in MIXTURES])
def test_every_shipped_mixture_validates(path):
    from instructune.data.prepare import load_mixture

    assert load_mixture(path).tasks
