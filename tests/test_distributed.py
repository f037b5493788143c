"""Two CPU processes (gloo DDP through accelerate) train like one process with the same global batch.

The two ranks see very different label counts (ddp_worker.py), so the weights only match the
one-process run when the loss is normalised over the label tokens of the whole step, on all ranks.
Each launch gets a free port: accelerate otherwise takes 29500 whenever it looks free, and two test runs
on one machine race for it. A failing launch shows its output.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from instructune.runlog import MetricsLog

WORKER = Path(__file__).with_name("ddp_worker.py")
BIN = Path(sys.executable).parent
# accelerate's --cpu flag runs a single process (its multi-CPU path wants mpirun); --multi_gpu hands the
# processes to torchrun, and on a machine without CUDA the Accelerator in each one joins a gloo group.
# Ports: torchrun --standalone binds its store to a free port itself; accelerate's port 0 means "pick a free one".
LAUNCHERS = {
    "torchrun": [BIN / "torchrun", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(command: list) -> None:
    """Run a launch; on failure, fail the test with its output (a launcher's children report on stderr)."""
    done = subprocess.run([str(c) for c in command], env=ENV, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited with {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
                    f"\n--- stderr\n{done.stderr[-6000:]}", pytrace=False)


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in MetricsLog.read(run_dir / "run" / "metrics.jsonl") if "loss" in r]


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "run" / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    _run([sys.executable, WORKER, out, "8"])
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
    reference, weights = _weights(one_process), _weights(tmp_path)
    assert weights.keys() == reference.keys()
    gap = max(float((weights[k] - reference[k]).abs().max()) for k in reference)
    print(f"{launcher}: max abs weight difference to one process {gap:.3g}")
    assert gap <= 1e-5


def test_a_failed_launch_shows_the_output_of_its_processes():
    with pytest.raises(pytest.fail.Exception, match=r"exited with 3(.|\n)*--- stderr\nrank 1: no gloo"):
        _run([sys.executable, "-c", "import sys; sys.stderr.write('rank 1: no gloo'); sys.exit(3)"])
