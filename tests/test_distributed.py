"""Two CPU processes (gloo DDP through accelerate) train like one process with the same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from instructune.runlog import MetricsLog

WORKER = Path(__file__).with_name("ddp_worker.py")


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in MetricsLog.read(run_dir / "run" / "metrics.jsonl")]


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
class TestTwoProcesses:
    def test_two_processes_follow_the_one_process_loss_curve(self, tmp_path):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, WORKER, tmp_path / "one", "8"], check=True, env=env, capture_output=True)
        torchrun = Path(sys.executable).parent / "torchrun"
        subprocess.run([torchrun, "--nproc_per_node", "2", WORKER, tmp_path / "two", "4"], check=True, env=env,
                       capture_output=True)
        one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
        assert len(one) == len(two) == 6
        assert two == pytest.approx(one, abs=1e-4)
