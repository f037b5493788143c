"""The training engine on a tiny Llama: learning, gradient accumulation, resume after SIGKILL, NaN, Ctrl-C, outputs,
and bad input as one line (issue 28): out of memory, max_length past the model's context, --resume without or
with an unreadable checkpoint, overrides anywhere on the command line."""

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tiny
from instructune.train import checkpoint as ckpt
from instructune import cli
from instructune.train import trainer as train_module
from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.train.loss import causal_lm_loss_sum
from instructune.train import precision as precision_module
from instructune.models import load_model
from instructune.train.pack import collate
from instructune.train.runlog import MetricsLog
from instructune.data.tokenize import encode_prompt_completion
from instructune.train.trainer import Trainer

# Answers of different lengths: a mean of per-micro-batch means would weigh their tokens unequally.
EXAMPLES = [
    {"prompt": "Where is my order?", "completion": "It has shipped."},
    {"prompt": "How do I reset my password?", "completion": "Click the link in the email we sent you, then choose a new one."},
    {"prompt": "I want a refund.", "completion": "Done."},
    {"prompt": "Summarize: #Person1#: Hello. #Person2#: Hi.", "completion": "Two people greet each other politely."},
    {"prompt": "Which option is correct?", "completion": "The first one."},
    {"prompt": "How are you?", "completion": "I am fine, thank you, and how are you today?"},
    {"prompt": "Where is my refund?", "completion": "It will arrive in three days."},
    {"prompt": "Say yes.", "completion": "yes"},
]

# One thread: tiny matmuls only lose to thread start-up and contention on busy cores.
QUIET = ["train.log_every_n_steps=1", "train.warmup_ratio=0", "data.max_length=128", "train.num_threads=1",
         "train.precision=fp32"]  # exact comparisons need fp32 (auto picks bf16 where bf16 matmuls pay)


def make_config(tmp_path, *overrides, name="run"):
    return load_config(None, [f"output_dir={tmp_path}", f"run_name={name}", *QUIET, *overrides])


run_trainer = tiny.run_trainer


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in MetricsLog.read(run_dir / "metrics.jsonl") if "loss" in r]


class TestLearning:
    def test_one_step_on_a_repeated_batch_lowers_the_loss(self, tmp_path, tokenizer, llama):
        example = EXAMPLES[1]
        batch = collate([encode_prompt_completion(example, tokenizer, 128)] * 4, tokenizer.pad_token_id)
        with torch.no_grad():
            before = float(torch.div(*causal_lm_loss_sum(llama, batch)))
        config = make_config(tmp_path, "lora.enabled=false", "train.max_steps=1", "train.batch_size=4",
                             "train.lr=1e-2", "data.packing=false")
        trainer = run_trainer(config, model=llama, tokenizer=tokenizer, train_examples=[example] * 4)
        with torch.no_grad():
            after = float(torch.div(*causal_lm_loss_sum(trainer.model, batch)))
        assert trainer.summary["first_loss"] == pytest.approx(before, rel=1e-4)
        assert after < before - 0.1


class TestGradientAccumulation:
    def _one_step(self, tmp_path, tokenizer, batch_size, accum):
        config = make_config(tmp_path, "lora.enabled=false", "data.packing=false", "train.max_steps=1",
                             "train.lr=1e-3", "train.max_grad_norm=null", f"train.batch_size={batch_size}",
                             f"train.grad_accum_steps={accum}", name=f"b{batch_size}x{accum}")
        trainer = Trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES,
                          progress=False)
        grads, summary = tiny.train_capturing_first_grads(trainer)
        weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        return grads, weights, summary["first_loss"]

    def test_one_batch_of_8_equals_4_accumulated_batches_of_2(self, tmp_path, tokenizer):
        grads_8, weights_8, loss_8 = self._one_step(tmp_path, tokenizer, 8, 1)
        grads_2, weights_2, loss_2 = self._one_step(tmp_path, tokenizer, 2, 4)
        assert loss_8 == pytest.approx(loss_2, abs=1e-5)
        assert grads_8.keys() == grads_2.keys()
        for name in grads_8:
            torch.testing.assert_close(grads_2[name], grads_8[name], atol=1e-5, rtol=1e-4, msg=name)
        for name in weights_8:
            torch.testing.assert_close(weights_2[name], weights_8[name], atol=1e-5, rtol=0, msg=name)

        # Reference: the gradient of (sum of every response token's loss) / (their count).
        model = tiny.make_llama(tokenizer)
        batch = collate([encode_prompt_completion(e, tokenizer, 128) for e in EXAMPLES], tokenizer.pad_token_id)
        loss_sum, count = causal_lm_loss_sum(model, batch)
        (loss_sum / count).backward()
        assert (loss_sum / count).item() == pytest.approx(loss_8, abs=1e-5)
        for name, param in model.named_parameters():
            torch.testing.assert_close(grads_8[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _cli_overrides(tmp_path, tiny_llama_dir, *more):
    data = _write_jsonl(tmp_path / "train.jsonl", EXAMPLES)
    return [f"output_dir={tmp_path}", f"model.name={tiny_llama_dir}", f"data.train={data}", *QUIET,
            "train.batch_size=2", "lora.r=4", "run_name=run", *more]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    return line


class TestResume:
    def test_resume_without_a_checkpoint_says_so_and_starts_at_step_0(self, tmp_path, tiny_llama_dir, capsys):
        overrides = _cli_overrides(tmp_path, tiny_llama_dir, "train.max_steps=2")
        assert cli.main(["train", "--resume", *overrides]) == 0
        out = capsys.readouterr().out
        assert f"--resume: no checkpoint in {tmp_path / 'run' / 'checkpoints'} yet; starting the run at step 0\n" in out
        assert [s for s, _ in losses(tmp_path / "run")] == [1, 2]

    def test_help_says_what_resume_does_without_a_checkpoint(self):
        text = " ".join(train_module.make_parser().format_help().split())
        assert "With no checkpoint yet it says so in one line and starts at step 0." in text
        assert "anywhere on the line, before or after the flags" in text

    def test_overrides_after_the_flags_are_taken(self, tmp_path, tiny_llama_dir, capsys):
        overrides = _cli_overrides(tmp_path, tiny_llama_dir)
        assert cli.main(["train", *overrides, "train.max_steps=2"]) == 0
        # `train CFG --resume key=value`: the override after the flag sets the new end of the run.
        assert cli.main(["train", *overrides[:3], "--resume", *overrides[3:], "train.max_steps=3"]) == 0
        assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'step-0000002'} (step 2)" in capsys.readouterr().out
        assert [s for s, _ in losses(tmp_path / "run")] == [1, 2, 3]

    def test_a_word_that_is_no_override_or_an_unknown_flag_is_one_line(self, tmp_path, tiny_llama_dir, capsys):
        overrides = _cli_overrides(tmp_path, tiny_llama_dir)
        assert cli.main(["train", *overrides, "--resume", "max_steps"]) == 2
        assert _error_line(capsys) == "instructune train: error: override 'max_steps': expected key=value, e.g. train.lr=1e-4"
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["train", *overrides, "--resmue"])
        assert exit_info.value.code == 2
        assert _error_line(capsys) == "instructune train: error: unrecognized arguments: --resmue"
        assert not (tmp_path / "run").exists()

    def test_an_unreadable_newest_checkpoint_is_passed_over_and_the_curve_continues(self, tmp_path, tiny_llama_dir,
                                                                                   capsys):
        overrides = _cli_overrides(tmp_path, tiny_llama_dir, "train.save_every_n_steps=1", "train.lr=1e-2")
        assert cli.main(["train", *overrides, "train.max_steps=4"]) == 0
        checkpoints = tmp_path / "run" / "checkpoints"
        optimizer_file = checkpoints / "step-0000004" / "optimizer.pt"
        optimizer_file.write_bytes(optimizer_file.read_bytes()[:100])  # a copy cut short
        capsys.readouterr()
        assert cli.main(["train", *overrides, "--resume", "train.max_steps=4"]) == 0
        out = capsys.readouterr().out
        assert (f"passing over checkpoint step-0000004: {optimizer_file}: truncated or corrupt (PytorchStreamReader "
                f"failed reading zip archive: failed finding central directory); moved to "
                f"{checkpoints / 'unreadable-step-0000004'}\n") in out
        assert f"resuming from {checkpoints / 'step-0000003'} (step 3)" in out
        assert cli.main(["train", *overrides, "train.max_steps=4", "run_name=straight"]) == 0
        resumed, straight = losses(tmp_path / "run"), losses(tmp_path / "straight")
        assert [s for s, _ in resumed] == [1, 2, 3, 4]
        assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], abs=1e-6)

    def test_resume_with_another_lora_rank_is_one_line_naming_the_checkpoint(self, tmp_path, tiny_llama_dir, capsys):
        data = _write_jsonl(tmp_path / "train.jsonl", EXAMPLES)
        overrides = [f"output_dir={tmp_path}", f"model.name={tiny_llama_dir}", f"data.train={data}", *QUIET,
                     "train.max_steps=2", "train.batch_size=4", "run_name=run"]
        assert train_module.main([*overrides, "lora.r=4"]) == 0
        capsys.readouterr()
        assert cli.main(["train", *overrides, "lora.r=8", "train.max_steps=4", "--resume"]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"instructune train: error: {tmp_path / 'run' / 'checkpoints' / 'step-0000002'}: ")
        assert "another shape" in error and "(4, 32)" in error and "(8, 32)" in error


WORKER = Path(__file__).with_name("kill_worker.py")
# Kill moments, as (kind, lowest, highest) occurrence within one launch; kill_worker.py defines the kinds.
# The ranges stay within a launch's first save or first steps, so every chosen kill happens.
KILL_KINDS = [("step", 2, 3), ("metrics", 1, 3), ("torch.save", 1, 3), ("fsync", 1, 10), ("replace", 2, 2),
              ("rmtree", 1, 2)]


class TestKilledAnywhere:
    def test_runs_killed_mid_training_and_mid_save_resume_to_the_unbroken_weights(self, tmp_path, tiny_llama_dir):
        data = _write_jsonl(tmp_path / "train.jsonl", EXAMPLES * 2)
        overrides = [f"output_dir={tmp_path}", f"model.name={tiny_llama_dir}", f"data.train={data}", *QUIET,
                     "train.max_steps=8", "train.batch_size=2", "train.save_every_n_steps=2", "train.lr=1e-2",
                     "train.keep_last_n_checkpoints=2", "lora.r=4", "lora.dropout=0.1"]
        rng = random.Random(int(os.environ.get("KILL_SEED", "12")))
        schedule = [f"{kind}:{rng.randint(low, high)}" for kind, low, high in KILL_KINDS]
        rng.shuffle(schedule)

        env = {**os.environ, "KILL_SCHEDULE": ",".join(schedule)}
        run = subprocess.run([sys.executable, WORKER, *overrides, "run_name=killed"], env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        launches = json.loads(run.stdout.strip().splitlines()[-1])
        # Every chosen moment killed its launch (-9); the launch after the last one ran to the end.
        assert launches == [[kill_at, -9] for kill_at in schedule] + [[None, 0]], run.stderr[-3000:]

        assert train_module.main([*overrides, "run_name=straight"]) == 0
        killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
        assert [s for s, _ in losses(killed_dir)] == list(range(1, 9))
        for (_, resumed), (_, reference) in zip(losses(killed_dir), losses(straight_dir)):
            assert resumed == pytest.approx(reference, abs=1e-6)
        resumed = load_file(killed_dir / "adapter" / "adapter_model.safetensors")
        reference = load_file(straight_dir / "adapter" / "adapter_model.safetensors")
        assert resumed.keys() == reference.keys()
        gap = max(float((resumed[k] - reference[k]).abs().max()) for k in reference)
        print(f"kills at {schedule}: max abs weight difference to the unbroken run {gap:.3g}")
        assert gap <= 1e-6


def _fail_at_call(monkeypatch, call_number, failure):
    """Make the trainer's loss fail on its `call_number`-th micro-batch (1-based)."""
    calls = []

    def loss_sum(model, batch):
        calls.append(1)
        result, count = causal_lm_loss_sum(model, batch)
        if len(calls) == call_number:
            if failure == "nan":
                return result * float("nan"), count
            raise KeyboardInterrupt
        return result, count

    monkeypatch.setattr(train_module, "causal_lm_loss_sum", loss_sum)


class TestStops:
    def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(self, tmp_path, tokenizer, llama, monkeypatch):
        _fail_at_call(monkeypatch, 3, "nan")
        config = make_config(tmp_path, "lora.enabled=false", "train.max_steps=5", "train.batch_size=4",
                             "train.save_every_n_steps=1", "train.keep_last_n_checkpoints=5")
        with pytest.raises(InstructuneError, match=r"at step 3\b") as error:
            run_trainer(config, model=llama, tokenizer=tokenizer, train_examples=EXAMPLES)
        assert "step-0000002" in str(error.value)
        last = ckpt.latest_checkpoint(config.run_dir)
        assert last.name == "step-0000002"
        model = tiny.make_llama(tokenizer, seed=1)
        optimizer = torch.optim.AdamW(model.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        state = ckpt.load_checkpoint(last, model=model, optimizer=optimizer, scheduler=scheduler)
        assert state["step"] == 2
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert [s for s, _ in losses(config.run_dir)] == [1, 2]

    def test_keyboard_interrupt_saves_a_checkpoint_and_resume_finishes(self, tmp_path, tokenizer, monkeypatch):
        _fail_at_call(monkeypatch, 3, "interrupt")
        config = make_config(tmp_path, "lora.enabled=false", "train.max_steps=4", "train.batch_size=4")
        with pytest.raises(KeyboardInterrupt):
            run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES)
        assert ckpt.latest_checkpoint(config.run_dir).name == "step-0000002"
        monkeypatch.setattr(train_module, "causal_lm_loss_sum", causal_lm_loss_sum)
        trainer = run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES,
                              resume=True)
        assert trainer.summary["steps"] == 4
        assert [s for s, _ in losses(config.run_dir)] == [1, 2, 3, 4]


FORGETFUL = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 53687091200 bytes. Error code 12"


def _out_of_memory_at_call(monkeypatch, call_number):
    """The trainer's loss raises the CPU allocator's error on its `call_number`-th micro-batch (1-based)."""
    calls = []

    def loss_sum(model, batch):
        calls.append(1)
        if len(calls) == call_number:
            raise RuntimeError(FORGETFUL)
        return causal_lm_loss_sum(model, batch)

    monkeypatch.setattr(train_module, "causal_lm_loss_sum", loss_sum)


class TestOutOfMemory:
    def test_in_a_step_names_step_batch_shape_and_settings_and_keeps_the_last_checkpoint(self, tmp_path, tiny_llama_dir,
                                                                                        capsys, monkeypatch):
        overrides = _cli_overrides(tmp_path, tiny_llama_dir, "train.max_steps=5", "train.save_every_n_steps=1",
                                   "train.keep_last_n_checkpoints=5", "data.packing=false")
        _out_of_memory_at_call(monkeypatch, 3)
        assert cli.main(["train", *overrides]) == 2
        line = _error_line(capsys)
        last = tmp_path / "run" / "checkpoints" / "step-0000002"
        assert re.fullmatch(
            r"instructune train: error: out of memory at step 3 on a batch of 2 row\(s\) x \d+ tokens "
            r"\(train.batch_size=2, data.max_length=128\): lower train.batch_size \(raising train.grad_accum_steps "
            r"keeps 2 rows per step\) or data.max_length, or set train.gradient_checkpointing=true; "
            + re.escape(f"last good checkpoint: {last}"), line), line
        # Nothing was saved from the failed state: step 2 is the newest checkpoint, no final weights.
        assert ckpt.latest_checkpoint(tmp_path / "run") == last
        assert not (tmp_path / "run" / "adapter").exists()
        assert [s for s, _ in losses(tmp_path / "run")] == [1, 2]
        monkeypatch.setattr(train_module, "causal_lm_loss_sum", causal_lm_loss_sum)
        assert cli.main(["train", *overrides, "--resume"]) == 0  # and the run continues from it
        assert [s for s, _ in losses(tmp_path / "run")] == [1, 2, 3, 4, 5]

    @staticmethod
    def _failing_run(tmp_path, tokenizer, n_validation, *overrides):
        """A 4-step full fine-tune with `n_validation` validation examples that must fail; (config, its error)."""
        config = make_config(tmp_path, "lora.enabled=false", "train.max_steps=4", "train.batch_size=4", *overrides)
        with pytest.raises(InstructuneError) as error:
            run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES,
                        validation_examples=EXAMPLES[:n_validation])
        return config, error

    def test_in_the_validation_loss_names_the_step(self, tmp_path, tokenizer, monkeypatch):
        # Steps 1 and 2 take one call each; validation after step 2 takes the 3rd.
        _out_of_memory_at_call(monkeypatch, 3)
        _, error = self._failing_run(tmp_path, tokenizer, 3, "train.eval_every_n_steps=2", "data.packing=false")
        assert re.fullmatch(r"out of memory in the validation loss after step 2 on a batch of 3 row\(s\) x \d+ tokens "
                            r"\(train.batch_size=4, data.max_length=128\): lower train.batch_size \(validation "
                            r"batches use it\) or data.max_length; no checkpoint was saved yet", str(error.value))

    def test_in_in_training_generation_names_the_step_and_the_train_settings(self, tmp_path, tokenizer, monkeypatch):
        from instructune.evaluate import score

        def generate(*args, **kwargs):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        monkeypatch.setattr(score, "generate", generate)
        config, error = self._failing_run(tmp_path, tokenizer, 2, "train.generate_every_n_steps=2",
                                          "train.generate_samples=2", "train.generate_max_new_tokens=8",
                                          "train.save_every_n_steps=1")
        assert re.fullmatch(r"in-training generation after step 2: out of memory on batches of 2 prompt\(s\) of up to \d+ "
                            r"tokens \+ up to 8 new tokens: lower train.batch_size or train.generate_max_new_tokens; "
                            + re.escape(f"last good checkpoint: {config.run_dir / 'checkpoints' / 'step-0000001'}"),
                            str(error.value)), str(error.value)

    def test_other_runtime_errors_are_not_taken_for_out_of_memory(self, tmp_path, tokenizer, monkeypatch):
        def loss_sum(model, batch):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

        monkeypatch.setattr(train_module, "causal_lm_loss_sum", loss_sum)
        config = make_config(tmp_path, "lora.enabled=false", "train.max_steps=1")
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES)


class TestContextLength:
    def test_max_length_past_the_models_positions_is_one_line_before_anything_is_written(self, tmp_path,
                                                                                          tiny_llama_dir, capsys):
        overrides = _cli_overrides(tmp_path, tiny_llama_dir, "data.max_length=100000")
        assert cli.main(["train", *overrides]) == 2
        assert _error_line(capsys) == (
            f"instructune train: error: config key 'data.max_length': 100000 tokens, but the model ({tiny_llama_dir}) "
            "has a context of 512 (max_position_embeddings in its config.json); set data.max_length=512 or less")
        assert not (tmp_path / "run").exists()

    def test_the_full_context_is_allowed(self, tmp_path, tokenizer):
        config = make_config(tmp_path, "lora.enabled=false", "train.max_steps=1", "data.max_length=512")
        assert run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer,
                           train_examples=EXAMPLES).summary["steps"] == 1


class TestSignals:
    @pytest.mark.parametrize("precision", ["fp32", "bf16-true"])  # bf16-true: the stochastic rounding resumes too
    def test_sigterm_right_after_the_weight_update_saves_that_step_and_resume_matches(self, tmp_path, tokenizer,
                                                                                      precision):
        common = ["lora.enabled=false", "train.max_steps=5", "train.batch_size=2", "train.lr=1e-2",
                  f"train.precision={precision}"]
        trainer = Trainer(make_config(tmp_path, *common, name="signalled"), model=tiny.make_llama(tokenizer),
                          tokenizer=tokenizer, train_examples=EXAMPLES, progress=False)
        trainer.setup()
        optimizer_step, calls = trainer.optimizer.step, []

        def step_then_signal(*args, **kwargs):
            optimizer_step(*args, **kwargs)
            calls.append(1)
            if len(calls) == 3:  # the weights are now those of step 3, while the step counter says 2
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)  # and an impatient second one

        trainer.optimizer.step = step_then_signal
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
        run_dir = trainer.run_dir
        assert ckpt.latest_checkpoint(run_dir).name == "step-0000003"
        resumed = run_trainer(make_config(tmp_path, *common, name="signalled"), model=tiny.make_llama(tokenizer),
                              tokenizer=tokenizer, train_examples=EXAMPLES, resume=True)
        straight = run_trainer(make_config(tmp_path, *common, name="straight"), model=tiny.make_llama(tokenizer),
                               tokenizer=tokenizer, train_examples=EXAMPLES)
        assert [s for s, _ in losses(run_dir)] == [1, 2, 3, 4, 5]
        expected = dict(straight.model.named_parameters())
        for name, value in resumed.model.named_parameters():
            torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0, msg=name)


class TestPackedFlashAttention:
    def _setup(self, tmp_path, tokenizer, *overrides):
        model = tiny.make_llama(tokenizer)
        model.config._attn_implementation = "flash_attention_2"
        trainer = Trainer(make_config(tmp_path, "lora.enabled=false", *overrides), model=model, tokenizer=tokenizer,
                          train_examples=EXAMPLES, progress=False)
        trainer.setup()

    def test_packed_rows_several_to_a_batch_are_refused(self, tmp_path, tokenizer):
        with pytest.raises(InstructuneError, match=r"data.packing.*flash_attention_2 need train.batch_size=1 \(got 4"):
            self._setup(tmp_path, tokenizer, "train.batch_size=4")

    def test_one_row_per_batch_or_no_packing_is_allowed(self, tmp_path, tokenizer):
        self._setup(tmp_path, tokenizer, "train.batch_size=1", "train.grad_accum_steps=4")
        self._setup(tmp_path, tokenizer, "train.batch_size=4", "data.packing=false")


class TestRunFolder:
    def test_lora_run_writes_adapter_tokenizer_config_metrics_and_plot(self, tmp_path, tiny_llama_dir):
        config = make_config(tmp_path, f"model.name={tiny_llama_dir}", "train.max_steps=3", "train.batch_size=2",
                             "train.eval_every_n_steps=3", "lora.r=4")
        run_trainer(config, train_examples=EXAMPLES, validation_examples=EXAMPLES[:3])
        run = config.run_dir
        for name in ("config.yaml", "metrics.jsonl", "loss.png", "adapter/adapter_model.safetensors",
                     "adapter/adapter_config.json", "adapter/tokenizer_config.json"):
            assert (run / name).is_file(), name
        assert load_config(run / "config.yaml") == config
        data, *records = MetricsLog.read(run / "metrics.jsonl")
        assert data["step"] == 0 and data["data"]["train"]["examples"] == len(EXAMPLES)
        assert data["data"]["validation"]["examples"] == 3
        assert [r["step"] for r in records] == [1, 2, 3]
        assert {r["total_steps"] for r in records} == {3}
        assert math.isfinite(records[-1]["val_loss"])
        assert ckpt.run_weights(run) == (str(tiny_llama_dir), str(run / "adapter"))
        model, tokenizer = load_model(tiny_llama_dir, adapter=run / "adapter")
        assert type(model).__name__.startswith("Peft") and tokenizer.eos_token == "<|im_end|>"

    def test_empty_training_data_is_an_error(self, tmp_path, tokenizer, llama):
        config = make_config(tmp_path, "lora.enabled=false", "data.max_length=16")
        chats = [{"messages": [{"role": "user", "content": "hi " * 30}, {"role": "assistant", "content": "ok"}]}]
        trainer = Trainer(config, model=llama, tokenizer=tokenizer, train_examples=chats, progress=False)
        with pytest.raises(InstructuneError, match="no examples left"):
            trainer.setup()


class TestRerun:
    def test_fresh_run_in_an_old_run_folder_is_not_shadowed_by_old_checkpoints(self, tmp_path, tokenizer):
        common = ["lora.enabled=false", "train.batch_size=4", "train.save_every_n_steps=1"]
        run_trainer(make_config(tmp_path, *common, "train.max_steps=4"), model=tiny.make_llama(tokenizer),
                    tokenizer=tokenizer, train_examples=EXAMPLES)
        config = make_config(tmp_path, *common, "train.max_steps=2")
        with pytest.raises(InstructuneError, match="--overwrite"):
            run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES)
        assert ckpt.latest_checkpoint(config.run_dir).name == "step-0000004"  # nothing lost
        run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES,
                    overwrite=True)
        # --resume must continue the new run, not the old one's step 4.
        assert ckpt.latest_checkpoint(config.run_dir).name == "step-0000002"
        assert [s for s, _ in losses(config.run_dir)] == [1, 2]


class TestGenerationMetrics:
    def test_generation_scores_are_logged_and_pick_the_best_checkpoint(self, tmp_path, tokenizer):
        examples = [{"prompt": "Is the order late?", "completion": "yes"}] * 8
        config = make_config(
            tmp_path, "lora.enabled=false", "data.packing=false", "train.max_steps=30", "train.lr=1e-2",
            "train.warmup_ratio=0", "train.generate_every_n_steps=10", "train.generate_samples=2",
            "train.generate_max_new_tokens=4", "train.select_best_by=exact_match",
        )
        trainer = run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer,
                              train_examples=examples, validation_examples=examples[:2])
        scores = [(r["step"], r["gen_exact_match"]) for r in MetricsLog.read(config.run_dir / "metrics.jsonl")
                  if "gen_exact_match" in r]
        assert [step for step, _ in scores] == [10, 20, 30]
        assert scores[0][1] == 0.0 and scores[-1][1] == 1.0  # the model learned to answer "yes" and stop
        assert trainer.summary["best_metric"] == "gen_exact_match" and trainer.summary["best_value"] == 1.0
        assert (config.run_dir / "best" / "model.safetensors").is_file()
        # best/ of a full run is a model folder the eval and chat commands load as --model.
        reloaded, reloaded_tokenizer = load_model(config.run_dir / "best")
        assert reloaded_tokenizer.encode("yes") == tokenizer.encode("yes")
        assert (config.run_dir / "loss.png").is_file()


class TestPrecision:
    def test_runs_with_different_precisions_share_one_process(self, tmp_path, tokenizer):
        examples = [{"prompt": "Is the order late?", "completion": "yes"}] * 4
        for precision in ("fp32", "bf16", "fp32"):
            config = make_config(tmp_path, "train.max_steps=1", f"train.precision={precision}", name=precision)
            trainer = run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer,
                                  train_examples=examples, overwrite=True)
            assert trainer.accelerator.mixed_precision == ("bf16" if precision == "bf16" else "no")

    @pytest.mark.parametrize("rates, expected", [((279e9, 146e9), "no"), ((302e9, 1977e9), "bf16"),
                                                 ((250e9, 280e9), "no")])
    def test_auto_takes_bf16_only_where_its_matmuls_are_clearly_faster(self, tmp_path, tokenizer, monkeypatch, capsys,
                                                                        rates, expected):
        # (fp32, bf16) GFLOP/s as measured: an Intel Xeon without AMX, one with AMX, and a near tie.
        monkeypatch.setattr(precision_module, "native_bf16", lambda: True)
        monkeypatch.setattr(precision_module, "_cpu_rates", lambda threads: rates)
        config = make_config(tmp_path, "train.max_steps=1", "train.precision=auto")
        trainer = run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer,
                              train_examples=[{"prompt": "Is the order late?", "completion": "yes"}] * 4, overwrite=True)
        assert trainer.accelerator.mixed_precision == expected
        fp32, bf16 = (f"{rate / 1e9:,.0f}" for rate in rates)
        captured = capsys.readouterr()
        assert f"precision {expected} (auto: bf16 matmuls {bf16} GFLOP/s against fp32 {fp32} on this CPU)" in (
            captured.out + captured.err)

    def test_auto_without_bf16_instructions_is_fp32_and_the_timing_is_real(self, monkeypatch):
        monkeypatch.setattr(precision_module, "native_bf16", lambda: False)
        assert precision_module.auto_precision() == precision_module.Choice(
            "no", "this CPU has no bf16 matmul instructions")
        # the timed rate is the shape's FLOPs over a measured time: positive, and below a petaflop on 2 cores
        rate = precision_module.matmul_rate(torch.float32, seconds=0.01, shape=(64, 32, 48))
        assert 1e6 < rate < 1e15


    @pytest.mark.parametrize("lora", [False, True])
    def test_bf16_true_trains_bf16_weights_and_state_along_the_fp32_curve(self, tmp_path, tokenizer, lora):
        runs = {}
        for precision in ("fp32", "bf16-true"):
            config = make_config(tmp_path, "train.max_steps=6", "train.batch_size=2", "train.lr=1e-2",
                                 f"lora.enabled={str(lora).lower()}", "lora.dropout=0", f"train.precision={precision}",
                                 name=precision)
            runs[precision] = run_trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer,
                                          train_examples=EXAMPLES)
        trainer = runs["bf16-true"]
        assert trainer.accelerator.mixed_precision == "no"  # no autocast: the weights are bf16 themselves
        assert {p.dtype for p in trainer.params} == {torch.bfloat16}
        state = trainer.optimizer.optimizer.state if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer.state
        assert {t.dtype for s in state.values() for k, t in s.items() if k != "step"} == {torch.bfloat16}
        reference = [loss for _, loss in losses(tmp_path / "fp32")]
        ours = [loss for _, loss in losses(tmp_path / "bf16-true")]
        assert ours[-1] < ours[0] - 0.05
        assert max(abs(a - b) for a, b in zip(ours, reference)) < 0.05
        saved = load_file(tmp_path / "bf16-true" / ("adapter/adapter_model.safetensors" if lora else "model/model.safetensors"))
        assert {t.dtype for t in saved.values()} == {torch.bfloat16}

    def test_bf16_true_loads_its_model_straight_into_bf16_with_the_weights_a_cast_gives(self, tmp_path, tiny_llama_dir,
                                                                                     monkeypatch):
        # No fp32 copy is made first; round-to-nearest either way.
        from instructune.train import trainer as trainer_module

        asked = []
        real_load = trainer_module.load_model
        monkeypatch.setattr(trainer_module, "load_model", lambda *a, **k: asked.append(k.get("dtype")) or real_load(*a, **k))
        config = make_config(tmp_path, f"model.name={tiny_llama_dir}", "train.precision=bf16-true", "train.max_steps=1",
                             "lora.enabled=false")
        trainer = Trainer(config, train_examples=EXAMPLES, progress=False)
        trainer.setup()
        assert asked == [torch.bfloat16]
        cast = real_load(tiny_llama_dir)[0].to(torch.bfloat16).state_dict()
        assert all(torch.equal(cast[name], tensor) for name, tensor in trainer.model.state_dict().items())

    def test_bf16_true_with_a_4bit_base_is_refused_with_the_fix(self, tmp_path):
        with pytest.raises(InstructuneError, match="use train.precision=bf16 with lora.load_in_4bit"):
            make_config(tmp_path, "train.precision=bf16-true", "lora.load_in_4bit=true")


class TestLossPlot:
    def test_smoothing_follows_the_trend_without_lagging_at_the_start(self):
        from instructune.train.runlog import smooth

        assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # debiased: no ramp up from zero
        noisy = [1.0 + (0.5 if i % 2 else -0.5) for i in range(200)]
        assert max(abs(v - 1.0) for v in smooth(noisy)[50:]) < 0.05
