"""Two CPU processes (gloo DDP, and FSDP through accelerate's own config) train like one process with the same global batch.

The two ranks see very different label counts (ddp_worker.py), so the weights only match the
one-process run when the loss is normalised over the label tokens of the whole step, on all ranks.
Each launch gets a free port: accelerate otherwise takes 29500 whenever it looks free, and two test runs
on one machine race for it. A failing launch shows its output.

FSDP: accelerate 1.15 runs it on GPUs only (on CPU its FSDP config silently becomes DDP, which
instructune refuses), while torch 2.13's fully_shard runs on gloo. The FSDP launches here lift only
accelerate's device gate (fsdp_on_cpu.py); sharding, gathering and loading are accelerate's and torch's.
Tolerance 1e-5, as for DDP: the sharded run sums the same fp32 gradients in another order (reduce-scatter
over 2 ranks instead of one backward over 8 rows), a rounding-level difference (the resume test prints
it: 3.7e-7 on the loss, 2.8e-7 on the weights after 6 Adam steps, bench/RESULTS.md, 2026-12-06); a
resume that drops the optimizer state fails it (checked by disabling that load).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructune import cli
from instructune.models import load_model
from instructune.train.runlog import MetricsLog

WORKER = Path(__file__).with_name("ddp_worker.py")
BIN = Path(sys.executable).parent
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
# accelerate's --cpu flag runs a single process (its multi-CPU path wants mpirun); --multi_gpu hands the
# processes to torchrun, and on a machine without CUDA the Accelerator in each one joins a gloo group.
# Ports: torchrun --standalone binds its store to a free port itself; accelerate's port 0 means "pick a free one".
LAUNCHERS = {
    "torchrun": [BIN / "torchrun", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [BIN / "accelerate", "launch", "--config_file", ACCELERATE_CONFIGS / "ddp.yaml",
                   "--dynamo_backend", "no", "--main_process_port", "0"],
}
FSDP = [BIN / "accelerate", "launch", "--config_file", ACCELERATE_CONFIGS / "fsdp.yaml", "--dynamo_backend", "no",
        "--main_process_port", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(command: list) -> None:
    """Run a launch; on failure, fail the test with its output (a launcher's children report on stderr)."""
    done = subprocess.run([str(c) for c in command], env=ENV, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited with {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
                    f"\n--- stderr\n{done.stderr[-6000:]}", pytrace=False)


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in MetricsLog.read(run_dir / "run" / "metrics.jsonl") if "loss" in r]


def _weights(run_dir: Path, lora: bool = False) -> dict:
    return load_file(run_dir / "run" / ("adapter/adapter_model.safetensors" if lora else "model/model.safetensors"))


def _left_the_group(run_dir: Path) -> bool:
    """Every process left its gloo group before exiting (else its C++ teardown can abort the launch)."""
    return all(not json.loads((run_dir / f"left-{rank}.json").read_text())["group_alive"] for rank in (0, 1))


def _gap(weights: dict, reference: dict) -> float:
    assert weights.keys() == reference.keys()
    return max(float((weights[k] - reference[k]).abs().max()) for k in reference)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    _run([sys.executable, WORKER, out, "8"])
    return out


@pytest.fixture(scope="module")
def one_process_lora(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-lora")
    _run([sys.executable, WORKER, out, "8", "lora"])
    return out


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_with_unequal_label_counts_match_the_one_process_run(tmp_path, launcher, one_process):
    command = LAUNCHERS[launcher]
    if not Path(command[0]).is_file():
        pytest.skip(f"no {launcher}")
    _run([*command, WORKER, tmp_path, "4"])
    one, two = _losses(one_process), _losses(tmp_path)
    assert len(one) == len(two) == 6
    assert two == pytest.approx(one, abs=1e-5)
    gap = _gap(_weights(tmp_path), _weights(one_process))
    print(f"{launcher}: max abs weight difference to one process {gap:.3g}")
    assert gap <= 1e-5
    assert _left_the_group(tmp_path)


class TestFsdp:
    def _held(self, run_dir: Path) -> list[dict]:
        return [json.loads((run_dir / f"shard-{rank}.json").read_text()) for rank in (0, 1)]

    def test_interrupted_and_resumed_run_is_sharded_and_follows_the_one_process_run(self, tmp_path, one_process):
        # Rank 0 alone asks to stop after step 3: both stop there, gather and save; the next launch resumes.
        _run([*FSDP, WORKER, tmp_path, "4", "fsdp_on_cpu", "stop_after=3"])
        checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
        assert checkpoints == ["step-0000003"] and not (tmp_path / "run" / "model").exists()
        assert _left_the_group(tmp_path)  # the interrupted launch too: an abort there once failed CI
        _run([*FSDP, WORKER, tmp_path, "4", "fsdp_on_cpu", "resume"])
        for shard in self._held(tmp_path):  # each process held half of every weight, not a copy
            assert shard["distributed_type"] == "FSDP" and shard["held"] * 2 == shard["trainable"]
        one, two = _losses(one_process), _losses(tmp_path)
        assert len(two) == 6 and two == pytest.approx(one, abs=1e-5)
        reference, weights = _weights(one_process), _weights(tmp_path)
        gap = _gap(weights, reference)  # same names: the tied lm_head is saved once, as in one process
        print(f"fsdp: max abs loss difference {max(abs(a - b) for a, b in zip(one, two)):.3g}, weights {gap:.3g}")
        assert gap <= 1e-5
        # model/ is a plain model folder: what `instructune eval --model` loads.
        model, _ = load_model(str(tmp_path / "run" / "model"))
        assert torch.equal(model.lm_head.weight.detach(), weights["model.embed_tokens.weight"])

    def test_lora_adapter_trains_and_saves_like_one_process(self, tmp_path, one_process_lora):
        _run([*FSDP, WORKER, tmp_path, "4", "lora", "fsdp_on_cpu"])
        assert all(shard["distributed_type"] == "FSDP" for shard in self._held(tmp_path))
        assert _losses(tmp_path) == pytest.approx(_losses(one_process_lora), abs=1e-5)
        assert _gap(_weights(tmp_path, lora=True), _weights(one_process_lora, lora=True)) <= 1e-5

    def test_on_cpu_accelerate_would_fall_back_to_ddp_so_the_run_stops_in_one_line(self, tmp_path, monkeypatch, capsys):
        from accelerate.state import AcceleratorState

        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets from fsdp.yaml
        try:
            code = cli.main(["train", f"output_dir={tmp_path}", "data.train=unused.jsonl"])
        finally:
            AcceleratorState._reset_state(reset_partial_state=False)
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err
        assert "distributed_type FSDP was asked for" in err and "configs/accelerate/ddp.yaml" in err


@pytest.mark.parametrize("path", sorted(ACCELERATE_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_load_and_name_only_known_launch_options(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(path))  # rejects unknown top-level keys
    options = {action.dest for action in launch_command_parser()._actions}
    assert config.distributed_type.value == {"fsdp.yaml": "FSDP", "ddp.yaml": "MULTI_GPU"}[path.name]
    assert set(config.fsdp_config) <= options  # fsdp_config keys become launch options; a typo is silently dropped


def test_a_failed_launch_shows_the_output_of_its_processes():
    with pytest.raises(pytest.fail.Exception, match=r"exited with 3(.|\n)*--- stderr\nrank 1: no gloo"):
        _run([sys.executable, "-c", "import sys; sys.stderr.write('rank 1: no gloo'); sys.exit(3)"])
