"""Training metrics: one JSON line per event (metrics.jsonl), TensorBoard scalars, and the loss plot.

What this file leaves out: computing the metrics (trainer.py) and evaluation reports (evaluate/).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from instructune.fileio.atomic import write_text_atomic
from instructune.fileio.jsonio import read_jsonl

# Record keys that place a record (x axis, run length) rather than measure anything.
_NOT_CURVES = ("step", "total_steps")


class MetricsLog:
    """Appends metric records to `metrics.jsonl` and mirrors numbers to TensorBoard when available."""

    def __init__(self, run_dir: Path, *, resume_from_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # On resume, drop records past the checkpoint so the curve continues without duplicates (and a
        # line torn by a kill goes with them). The new file replaces the old in one rename.
        records = self.read(self.path) if resume_from_step else []
        kept = [r for r in records if r.get("step", 0) <= resume_from_step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                pass

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in _NOT_CURVES and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record.get("step", 0))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    @staticmethod
    def read(path: Path) -> list[dict]:
        """The records of a metrics file ([] when absent); a last line torn by a kill mid-write, or caught
        mid-write by a live reader (the board), is skipped with a warning.

        Example:
            >>> MetricsLog.read("runs/quickstart/metrics.jsonl")[0]["step"]
            1
        """
        path = Path(path)
        return read_jsonl(path, torn_tail="skip") if path.is_file() else []


def smooth(values: Sequence[float], weight: float = 0.95) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing slider draws it)."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def plot_losses(metrics_path: Path, out_png: Path, title: str = "Training") -> Path | None:
    """Draw train loss (and validation loss / generation scores when logged) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = MetricsLog.read(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        steps, losses = zip(*train)
        if len(train) >= 50:  # per-step losses of small batches are noisy: show the trend over them
            ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
            ax.plot(steps, smooth(losses), label="train loss (smoothed)", color="tab:blue")
        else:
            ax.plot(steps, losses, label="train loss", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    # A score that stays at zero (exact match of a free-text summary) only crowds the legend.
    scores = sorted({k for r in records for k in r if k.startswith("gen_") and r[k]})
    if scores:  # generation metrics share the x axis on a 0-1 scale of their own
        right = ax.twinx()
        for key, colour in zip(scores, ("tab:green", "tab:red", "tab:purple", "tab:brown")):
            points = [(r["step"], r[key]) for r in records if key in r]
            right.plot(*zip(*points), "s--", color=colour, label=key[4:] + " (validation sample)")
        right.set_ylabel("generation score")
        right.set_ylim(0, 1)
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
