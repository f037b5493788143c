"""Two CPU processes (gloo DDP through accelerate) train like one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from instructune.runlog import MetricsLog

WORKER = Path(__file__).with_name("ddp_worker.py")


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in MetricsLog.read(run_dir / "run" / "metrics.jsonl") if "loss" in r]


BIN = Path(sys.executable).parent
# accelerate's --cpu flag runs a single process (its multi-CPU path wants mpirun); --multi_gpu hands the
# processes to torchrun, and on a machine without CUDA the Accelerator in each one joins a gloo group.
LAUNCHERS = {
    "torchrun": [BIN / "torchrun", "--nproc_per_node", "2"],
    "accelerate": [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_follow_the_one_process_loss_curve(tmp_path, launcher):
    command = LAUNCHERS[launcher]
    if not Path(command[0]).is_file():
        pytest.skip(f"no {launcher}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, WORKER, tmp_path / "one", "8"], check=True, env=env, capture_output=True)
    subprocess.run([*command, WORKER, tmp_path / "two", "4"], check=True, env=env, capture_output=True)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert two == pytest.approx(one, abs=1e-4)
