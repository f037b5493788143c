"""What the Train tab's live charts and progress bar show, read from a run's metrics.jsonl.

The training process appends one JSON line per logged step (runlog.MetricsLog); the board reads the
file again on every tick, so the charts follow a run started from the page or from a terminal alike.
Leaves out: writing metrics (train/trainer.py, train/runlog.py) and drawing (the page's plot widgets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instructune.train.runlog import MetricsLog

# Chart -> (record key, series label). ROUGE comes from train.generate_every_n_steps.
CURVES = {
    "loss": (("loss", "train loss"), ("val_loss", "validation loss")),
    "rouge": (("gen_rouge1", "ROUGE-1"), ("gen_rougeL", "ROUGE-L"), ("gen_exact_match", "exact match")),
}


def curve_points(records: list[dict[str, Any]], chart: str) -> list[dict[str, Any]]:
    """Long-format points of one chart: [{"step", "value", "series"}], ready for a line plot.

    Args:
        records: metrics records (`MetricsLog.read`).
        chart: "loss" (train and validation loss) or "rouge" (in-training generation scores).

    Example:
        >>> curve_points([{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.1, "val_loss": 2.3}], "loss")
        [{'step': 1, 'value': 2.5, 'series': 'train loss'}, {'step': 2, 'value': 2.1, 'series': 'train loss'}, {'step': 2, 'value': 2.3, 'series': 'validation loss'}]
    """
    points = []
    for key, label in CURVES[chart]:
        points += [{"step": r["step"], "value": float(r[key]), "series": label} for r in records
                   if key in r and "step" in r and r[key] is not None]
    return points


def run_progress(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a run stands: step, total steps, fraction done, seconds per step and the ETA.

    The rate is measured over the steps of the latest process only: a resumed run restarts its clock
    (elapsed_s falls back), and the steps before the resume cost nothing now.

    Returns:
        {"step", "total_steps", "fraction", "seconds_per_step", "eta_s", "last_loss"}; None where unknown.

    Example:
        >>> run_progress([{"step": 1, "total_steps": 4, "elapsed_s": 2.0, "loss": 3.0},
        ...               {"step": 2, "total_steps": 4, "elapsed_s": 4.0, "loss": 2.0}])
        {'step': 2, 'total_steps': 4, 'fraction': 0.5, 'seconds_per_step': 2.0, 'eta_s': 4.0, 'last_loss': 2.0}
    """
    steps = [r for r in records if "elapsed_s" in r and "step" in r]
    if not steps:
        return {"step": 0, "total_steps": None, "fraction": 0.0, "seconds_per_step": None, "eta_s": None,
                "last_loss": None}
    segment_start = 0
    for i in range(1, len(steps)):
        if steps[i]["elapsed_s"] < steps[i - 1]["elapsed_s"]:
            segment_start = i
    segment, last = steps[segment_start:], steps[-1]
    total = last.get("total_steps")
    # The segment's first record already includes its own step: count it.
    done_here = last["step"] - segment[0]["step"] + 1
    per_step = last["elapsed_s"] / done_here if done_here > 0 else None
    fraction = min(1.0, last["step"] / total) if total else None
    eta = per_step * max(0, total - last["step"]) if per_step is not None and total else None
    losses = [r["loss"] for r in records if "loss" in r]
    return {"step": last["step"], "total_steps": total, "fraction": fraction, "seconds_per_step": per_step,
            "eta_s": eta, "last_loss": losses[-1] if losses else None}


def read_run(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of a run folder's metrics.jsonl (none yet: []) and its progress.

    A line the trainer is still writing is left for the next tick (MetricsLog.read).
    """
    records = MetricsLog.read(Path(run_dir) / "metrics.jsonl")
    return records, run_progress(records)


def format_progress(progress: dict[str, Any]) -> str:
    """One line for the page: `step 3/10 (30%), 2.1 s/step, ETA 15 s, loss 2.4312`."""
    if not progress["step"]:
        return "no steps logged yet"
    parts = [f"step {progress['step']}" + (f"/{progress['total_steps']}" if progress["total_steps"] else "")]
    if progress["fraction"] is not None:
        parts[0] += f" ({progress['fraction']:.0%})"
    if progress["seconds_per_step"] is not None:
        parts.append(f"{progress['seconds_per_step']:.1f} s/step")
    if progress["eta_s"] is not None:
        parts.append(f"ETA {_duration(progress['eta_s'])}")
    if progress["last_loss"] is not None:
        parts.append(f"loss {progress['last_loss']:.4f}")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"
