"""How each task of a run was scored, as its eval JSON records it: mode, decoding, items, metric protocol.

`compare` puts these beside its numbers so a table never sets side by side scores made in different
ways without saying so (lm-eval vs instruct mode, greedy vs beam search, which items, which reference
protocol). This file only reads the records `instructune eval` writes; it computes no statistics.
"""

from __future__ import annotations

from typing import Any

from instructune.generation.engines import Decoding
from instructune.evaluate.metrics import PROTOCOLS


def _task_settings(results: list[dict], names: list[str], read: Any) -> dict[str, dict[str, str]]:
    """{task: {run: read(its summary)}} over the runs' eval JSONs, leaving out tasks where `read` gives None."""
    seen: dict[str, dict[str, str]] = {}
    for name, result in zip(names, results):
        for task, summary in (result.get("tasks") or {}).items():
            value = read(summary) if isinstance(summary, dict) else None
            if value is not None:
                seen.setdefault(task, {})[name] = value
    return seen


def scoring_modes(results: list[dict], names: list[str]) -> dict[str, str]:
    """{task: the mode its scores came from}, or "<mode> (<run>), ..." where runs used different modes.

    Example:
        >>> scoring_modes([{"tasks": {"piqa": {"mode": "lm-eval"}}}] * 2, ["base", "tuned"])
        {'piqa': 'lm-eval'}
    """
    seen = _task_settings(results, names, lambda summary: summary.get("mode") or None)
    return {task: (next(iter(by_run.values())) if len(set(by_run.values())) == 1 else
                   "MIXED, not comparable: " + ", ".join(f"{mode} ({run})" for run, mode in by_run.items()))
            for task, by_run in seen.items()}


def decoding_settings(results: list[dict], names: list[str]) -> dict[str, str]:
    """{task: how its answers were decoded} for the generation tasks where a run left plain greedy decoding.

    Eval files from before the decoding flags record none: they decoded greedily.

    Example:
        >>> decoding_settings([{"tasks": {"dialogsum": {"kind": "generation"}}},
        ...                    {"tasks": {"dialogsum": {"decoding": {"num_beams": 4}}}}], ["base", "beam4"])
        {'dialogsum': 'greedy (base) / num_beams=4 (beam4)'}
    """
    seen = _task_settings(results, names, _decoding_of)
    return {task: (next(iter(by_run.values())) if len(set(by_run.values())) == 1 else
                   " / ".join(f"{how} ({run})" for run, how in by_run.items()))
            for task, by_run in seen.items() if set(by_run.values()) != {"greedy"}}


def _decoding_of(summary: dict) -> str | None:
    """`Decoding.describe()` of a task summary, or its MBR settings; None where nothing was decoded (multiple choice)."""
    if summary.get("mbr"):
        mbr = summary["mbr"]
        return (f"MBR over {mbr['samples']} samples by {mbr['utility']} (temperature {mbr['temperature']}, "
                f"top_p {mbr['top_p']}, top_k {mbr['top_k']}, seed {mbr['seed']})")
    if "decoding" not in summary:
        return "greedy" if summary.get("kind") == "generation" else None
    return Decoding(**summary["decoding"]).describe() if summary["decoding"] else None


def scoring_protocols(result: dict, metrics: dict[str, str]) -> dict[str, str]:
    """{task: how its score was computed}, from the eval JSON's record of each task (its baseline's); tasks
    it does not describe (no "n_examples": not written by `instructune eval`) are left out.

    Example:
        >>> summary = {"mode": "instruct", "template": 0, "n_examples": 100, "data": "d/test.jsonl", "start": 0,
        ...            "every": 1, "max_new_tokens": 64}
        >>> scoring_protocols({"tasks": {"dialogsum": summary}}, {"dialogsum": "rouge1_mean_ref"})["dialogsum"]
        'rouge1_mean_ref (mean over the references), instruct mode, template 0, items 0-99 of d/test.jsonl, at most 64 new tokens'
    """
    protocols = {}
    for task, metric in metrics.items():
        summary = (result.get("tasks") or {}).get(task)
        if isinstance(summary, dict) and "n_examples" in summary:
            suffix = next((suffix for suffix in PROTOCOLS if suffix and metric.endswith(suffix)), None)
            text = metric + (f" ({PROTOCOLS[suffix]})" if suffix else "")
            if metric in ("acc", "acc_norm"):
                text += f" (the option of highest log-likelihood{' per character' if metric == 'acc_norm' else ''})"
            start, every, n = summary["start"], summary.get("every", 1), summary["n_examples"]
            items = (f"items {start}-{start + n - 1} of {summary['data']}" if every == 1 else
                     f"{n} items of {summary['data']} ({start}, {start + every}, {start + 2 * every}, ...)")
            text += f", {summary['mode']} mode, template {summary['template']}, {items}"
            if summary.get("max_new_tokens"):
                text += f", at most {summary['max_new_tokens']} new tokens"
            protocols[task] = text
    return protocols
