"""Checkpoints: atomic folders, a kill during a save leaves the last good one, keep-last-K, exact round trip."""

import json

import pytest
import torch

import tiny
from instructune.checkpoint import (
    STATE_FILE,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    run_weights,
    save_checkpoint,
)
from instructune.errors import InstructuneError


def parts(tokenizer, seed=0):
    model = tiny.make_llama(tokenizer, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, scheduler


def take_step(model, optimizer, scheduler):
    input_ids = torch.arange(12).unsqueeze(0)
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def save(run_dir, step, model, optimizer, scheduler, keep_last=3, **state):
    return save_checkpoint(run_dir, step, model=model, optimizer=optimizer, scheduler=scheduler, state=state,
                           keep_last=keep_last)


class TestLatestCheckpoint:
    def test_none_before_any_save(self, tmp_path):
        assert latest_checkpoint(tmp_path) is None

    def test_picks_the_highest_step_not_the_last_name(self, tmp_path, tokenizer):
        model, optimizer, scheduler = parts(tokenizer)
        for step in (9, 10, 100):
            save(tmp_path, step, model, optimizer, scheduler)
        assert latest_checkpoint(tmp_path).name == "step-0000100"

    def test_leftover_tmp_folder_from_a_killed_save_is_ignored(self, tmp_path, tokenizer):
        model, optimizer, scheduler = parts(tokenizer)
        good = save(tmp_path, 4, model, optimizer, scheduler)
        # A kill during the save of step 6: a complete-looking but never renamed folder.
        leftover = checkpoint_dir(tmp_path) / ".tmp-step-0000006"
        leftover.mkdir()
        (leftover / STATE_FILE).write_text(json.dumps({"step": 6}))
        # ... and a half-written final folder without its state file.
        (checkpoint_dir(tmp_path) / "step-0000008").mkdir()
        assert latest_checkpoint(tmp_path) == good
        # The next save of that step replaces the leftover cleanly.
        assert save(tmp_path, 6, model, optimizer, scheduler).name == "step-0000006"
        assert not leftover.exists() and latest_checkpoint(tmp_path).name == "step-0000006"


class TestSaveCheckpoint:
    def test_keep_last_deletes_older(self, tmp_path, tokenizer):
        model, optimizer, scheduler = parts(tokenizer)
        for step in range(1, 6):
            save(tmp_path, step, model, optimizer, scheduler, keep_last=2)
        names = sorted(p.name for p in checkpoint_dir(tmp_path).iterdir())
        assert names == ["step-0000004", "step-0000005"]

    def test_round_trip_restores_weights_optimizer_scheduler_rng_and_state(self, tmp_path, tokenizer):
        model, optimizer, scheduler = parts(tokenizer)
        take_step(model, optimizer, scheduler)
        torch.manual_seed(123)
        folder = save(tmp_path, 1, model, optimizer, scheduler, best_val_loss=1.5)
        expected_random = torch.rand(3)
        take_step(model, optimizer, scheduler)
        expected = {k: v.clone() for k, v in model.state_dict().items()}

        fresh, fresh_optimizer, fresh_scheduler = parts(tokenizer, seed=7)
        state = load_checkpoint(folder, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)
        assert state == {"best_val_loss": 1.5, "step": 1}
        torch.testing.assert_close(torch.rand(3), expected_random)
        take_step(fresh, fresh_optimizer, fresh_scheduler)  # same step from restored state: same weights
        for name, value in fresh.state_dict().items():
            torch.testing.assert_close(value, expected[name], msg=name)
        assert fresh_scheduler.last_epoch == scheduler.last_epoch

    def test_weights_are_safetensors(self, tmp_path, tokenizer):
        model, optimizer, scheduler = parts(tokenizer)
        folder = save(tmp_path, 1, model, optimizer, scheduler)
        assert list((folder / "weights").glob("*.safetensors"))
        assert not list((folder / "weights").glob("*.bin"))

    def test_wrong_model_is_refused(self, tmp_path, tokenizer):
        model, optimizer, scheduler = parts(tokenizer)
        folder = save(tmp_path, 1, model, optimizer, scheduler)
        other = torch.nn.Linear(2, 2)
        other_optimizer = torch.optim.AdamW(other.parameters())
        with pytest.raises(RuntimeError, match="does not match the model"):
            load_checkpoint(folder, model=other, optimizer=other_optimizer,
                            scheduler=torch.optim.lr_scheduler.LambdaLR(other_optimizer, lambda s: 1.0))


class TestRunWeights:
    def test_full_run_loads_from_its_model_folder(self, tmp_path):
        (tmp_path / "config.yaml").write_text("model: {name: null}\nlora: {enabled: false}\n")
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "config.json").write_text("{}")
        assert run_weights(tmp_path) == (str(tmp_path / "model"), None)

    def test_unfinished_or_foreign_folders_say_what_is_missing(self, tmp_path):
        with pytest.raises(InstructuneError, match="no config.yaml"):
            run_weights(tmp_path)
        (tmp_path / "config.yaml").write_text("run_name: r\n")
        with pytest.raises(InstructuneError, match="has not finished"):
            run_weights(tmp_path)
