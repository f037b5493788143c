"""Checkpoints: atomic folders, a kill during a save leaves the last good one, keep-last-K, exact round trip,
strict loading (another model or LoRA shape is a one-line error), fsync before the rename, and unreadable
files (one line naming the file; resume passes over them to the checkpoint before)."""

import json
import os

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

import tiny
from instructune.train.checkpoint import (
    STATE_FILE,
    UnreadableFile,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    load_latest_checkpoint,
    read_json_object,
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
    def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(self, tmp_path, tokenizer, monkeypatch):
        from instructune.train import checkpoint

        model, optimizer, scheduler = parts(tokenizer)
        good = save(tmp_path, 2, model, optimizer, scheduler)
        real_save = torch.save

        def full_disk(obj, path, *args, **kwargs):
            if str(path).endswith("scheduler.pt"):  # after the weights and the optimizer state were written
                raise OSError(28, "No space left on device")
            return real_save(obj, path, *args, **kwargs)

        monkeypatch.setattr(checkpoint.torch, "save", full_disk)
        with pytest.raises(InstructuneError, match=r"could not write checkpoint step-0000004 in .*No space left on "
                                                   r"device \(.* GB free there\); the last good checkpoint is kept: "
                                                   r".*step-0000002"):
            save(tmp_path, 4, model, optimizer, scheduler)
        monkeypatch.setattr(checkpoint.torch, "save", real_save)
        assert latest_checkpoint(tmp_path) == good
        assert sorted(p.name for p in checkpoint_dir(tmp_path).iterdir()) == ["step-0000002"]  # no half-written folder

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

    def test_resave_of_the_same_step_killed_before_the_new_folder_lands_keeps_a_complete_one(
            self, tmp_path, tokenizer, monkeypatch):
        model, optimizer, scheduler = parts(tokenizer)
        save(tmp_path, 6, model, optimizer, scheduler, note="first")
        replace = os.replace

        def die_before_the_new_folder_lands(src, dst):
            if os.path.basename(src).startswith(".tmp-"):
                raise KeyboardInterrupt  # stands in for SIGKILL at that instant
            return replace(src, dst)

        monkeypatch.setattr(os, "replace", die_before_the_new_folder_lands)
        with pytest.raises(KeyboardInterrupt):
            save(tmp_path, 6, model, optimizer, scheduler, note="second")
        monkeypatch.setattr(os, "replace", replace)
        survivor = latest_checkpoint(tmp_path)
        assert survivor is not None and json.loads((survivor / STATE_FILE).read_text())["note"] == "first"
        fresh, fresh_optimizer, fresh_scheduler = parts(tokenizer, seed=7)
        assert load_checkpoint(survivor, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)["step"] == 6
        # The next save of that step puts a complete folder back under its own name and tidies up.
        save(tmp_path, 6, model, optimizer, scheduler, note="third")
        assert sorted(p.name for p in checkpoint_dir(tmp_path).iterdir()) == ["step-0000006"]
        assert json.loads((latest_checkpoint(tmp_path) / STATE_FILE).read_text())["note"] == "third"

    def test_every_file_and_folder_is_fsynced_before_the_rename(self, tmp_path, tokenizer, monkeypatch):
        model, optimizer, scheduler = parts(tokenizer)
        synced, unsynced_at_rename = set(), []
        fsync, replace = os.fsync, os.replace

        def recording_fsync(fd):
            synced.add(os.readlink(f"/proc/self/fd/{fd}"))
            return fsync(fd)

        def checking_replace(src, dst):
            if os.path.basename(src).startswith(".tmp-"):
                for root, dirs, files in os.walk(src):
                    unsynced_at_rename.extend(p for p in [root, *(os.path.join(root, f) for f in files)]
                                              if os.path.realpath(p) not in synced)
            return replace(src, dst)

        monkeypatch.setattr(os, "fsync", recording_fsync)
        monkeypatch.setattr(os, "replace", checking_replace)
        save(tmp_path, 1, model, optimizer, scheduler)
        assert unsynced_at_rename == []
        assert os.path.realpath(checkpoint_dir(tmp_path)) in synced  # the rename itself is made durable


def lora_parts(tokenizer, r):
    model = get_peft_model(tiny.make_llama(tokenizer), LoraConfig(r=r, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def load_into(folder, model, optimizer, scheduler):
    return load_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler)


class TestStrictLoading:
    def test_wrong_model_is_a_one_line_error_naming_the_checkpoint(self, tmp_path, tokenizer):
        folder = save(tmp_path, 1, *parts(tokenizer))
        other = torch.nn.Linear(2, 2)
        other_optimizer = torch.optim.AdamW(other.parameters())
        with pytest.raises(InstructuneError, match="does not match the model") as error:
            load_into(folder, other, other_optimizer, torch.optim.lr_scheduler.LambdaLR(other_optimizer, lambda s: 1.0))
        assert str(error.value).startswith(str(folder)) and "\n" not in str(error.value)

    def test_other_lora_rank_names_the_tensor_and_both_shapes(self, tmp_path, tokenizer):
        folder = save(tmp_path, 1, *lora_parts(tokenizer, r=4))
        with pytest.raises(InstructuneError, match=r"another shape \(.*lora_A.*saved \(4, 32\), model needs \(8, 32\)"):
            load_into(folder, *lora_parts(tokenizer, r=8))

    def test_adapter_with_an_unexpected_tensor_is_refused(self, tmp_path, tokenizer):
        folder = save(tmp_path, 1, *lora_parts(tokenizer, r=4))
        file = folder / "weights" / "adapter_model.safetensors"
        save_file({**load_file(file), "base_model.model.extra.lora_A.weight": torch.zeros(4, 32)}, file)
        with pytest.raises(InstructuneError, match="1 unexpected .*extra"):
            load_into(folder, *lora_parts(tokenizer, r=4))

    def test_adapter_missing_a_tensor_is_refused(self, tmp_path, tokenizer):
        folder = save(tmp_path, 1, *lora_parts(tokenizer, r=4))
        file = folder / "weights" / "adapter_model.safetensors"
        tensors = load_file(file)
        dropped = sorted(tensors)[0]
        save_file({k: v for k, v in tensors.items() if k != dropped}, file)
        with pytest.raises(InstructuneError, match="1 missing"):
            load_into(folder, *lora_parts(tokenizer, r=4))

    def test_full_checkpoint_into_a_lora_run_says_which_is_which(self, tmp_path, tokenizer):
        folder = save(tmp_path, 1, *parts(tokenizer))
        with pytest.raises(InstructuneError, match="holds full model weights, but this run trains a LoRA adapter"):
            load_into(folder, *lora_parts(tokenizer, r=4))


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


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class TestUnreadable:
    @pytest.mark.parametrize("name, reason", [
        (STATE_FILE, "not valid JSON"),
        ("optimizer.pt", "truncated or corrupt (PytorchStreamReader failed reading zip archive"),
        ("scheduler.pt", "truncated or corrupt ("),
        ("rng.pt", "truncated or corrupt ("),
        ("weights/model.safetensors", "truncated or corrupt safetensors file (incomplete metadata, file not fully covered)"),
    ])
    def test_a_truncated_file_is_one_line_naming_it_and_restores_nothing(self, tmp_path, tokenizer, name, reason):
        model, optimizer, scheduler = parts(tokenizer)
        take_step(model, optimizer, scheduler)
        folder = save(tmp_path, 1, model, optimizer, scheduler)
        truncate(folder / name)
        fresh, fresh_optimizer, fresh_scheduler = parts(tokenizer, seed=1)
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        rng = torch.get_rng_state()
        with pytest.raises(UnreadableFile) as error:
            load_into(folder, fresh, fresh_optimizer, fresh_scheduler)
        assert str(error.value).startswith(f"{folder / name}") and reason in str(error.value)
        assert "\n" not in str(error.value)
        # Every file is read before anything is restored: the model, optimizer and RNG are as they were.
        assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
        assert not fresh_optimizer.state and torch.equal(torch.get_rng_state(), rng)

    def test_a_checkpoint_without_weights_is_unreadable_not_another_model(self, tmp_path, tokenizer):
        folder = save(tmp_path, 1, *parts(tokenizer))
        (folder / "weights" / "model.safetensors").unlink()
        with pytest.raises(UnreadableFile, match=r"weights: no weights \(\*.safetensors\) in this checkpoint"):
            load_into(folder, *parts(tokenizer))

    def test_json_that_is_not_an_object_or_not_json(self, tmp_path):
        (tmp_path / "a.json").write_text('{"step": 1,\n "x": }')
        with pytest.raises(UnreadableFile, match=r"a.json:2: not valid JSON \(Expecting value, column 7\)$"):
            read_json_object(tmp_path / "a.json")
        (tmp_path / "a.json").write_text("[1, 2]")
        with pytest.raises(UnreadableFile, match="a.json: expected a JSON object, got list"):
            read_json_object(tmp_path / "a.json")


class TestLoadLatestCheckpoint:
    def test_passes_over_an_unreadable_newest_checkpoint_says_so_and_sets_it_aside(self, tmp_path, tokenizer):
        model, optimizer, scheduler = parts(tokenizer)
        save(tmp_path, 1, model, optimizer, scheduler, note="good")
        take_step(model, optimizer, scheduler)
        bad = save(tmp_path, 2, model, optimizer, scheduler)
        truncate(bad / "optimizer.pt")
        said = []
        folder, state = load_latest_checkpoint(tmp_path, say=said.append, set_aside=True,
                                               **dict(zip(("model", "optimizer", "scheduler"), parts(tokenizer))))
        assert folder.name == "step-0000001" and state == {"note": "good", "step": 1}
        aside = checkpoint_dir(tmp_path) / "unreadable-step-0000002"
        assert said == [f"passing over checkpoint step-0000002: {bad / 'optimizer.pt'}: truncated or corrupt "
                        "(PytorchStreamReader failed reading zip archive: failed finding central directory); "
                        f"moved to {aside}"]
        assert (aside / "optimizer.pt").is_file() and latest_checkpoint(tmp_path).name == "step-0000001"

    def test_no_readable_checkpoint_is_one_line_naming_the_newest_file(self, tmp_path, tokenizer):
        model, optimizer, scheduler = parts(tokenizer)
        for step in (1, 2):
            truncate(save(tmp_path, step, model, optimizer, scheduler) / "rng.pt")
        with pytest.raises(InstructuneError) as error:
            load_latest_checkpoint(tmp_path, say=print, set_aside=True, model=model, optimizer=optimizer,
                                   scheduler=scheduler)
        message = str(error.value)
        assert message.startswith(f"{checkpoint_dir(tmp_path) / 'step-0000002' / 'rng.pt'}: truncated or corrupt")
        assert message.endswith("(the 1 earlier checkpoint cannot be read either); nothing to resume from: "
                                "drop --resume and pass --overwrite to start again")
        assert latest_checkpoint(tmp_path).name == "step-0000002"  # nothing moved when nothing loaded

    def test_a_checkpoint_of_another_shape_is_an_error_not_passed_over(self, tmp_path, tokenizer):
        save(tmp_path, 1, *lora_parts(tokenizer, r=4))
        save(tmp_path, 2, *lora_parts(tokenizer, r=4))
        model, optimizer, scheduler = lora_parts(tokenizer, r=8)
        with pytest.raises(InstructuneError, match=r"step-0000002: checkpoint does not match the model"):
            load_latest_checkpoint(tmp_path, say=pytest.fail, set_aside=True, model=model, optimizer=optimizer,
                                   scheduler=scheduler)
