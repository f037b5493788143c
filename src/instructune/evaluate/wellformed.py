"""Instruction following, measured per answer: is a generated answer well formed?

An answer is well formed when all three checks hold (issue 32 item 3):
- `well_formed_option`: where the prompt's example carried options, the answer is one of them
  (exact match after SQuAD normalisation, metrics.normalize_answer); 1 where no options were given;
- `well_formed_stop`: the answer said something and ended by itself (end of turn or EOS) before the
  new-token cap; an empty answer (a stop at once) fails it, as it answered nothing;
- `well_formed_no_continuation`: the answer does not continue the prompt instead of answering it: no
  line of it opens with a label that opens a line of the prompt ("#Person2#:", "Customer:",
  "OPTIONS:", "Goal:"), it holds no speaker turn ("#Person1#:"), and it repeats no whole line of the
  prompt, nor a line's text after its label, of 30 characters or more that holds no option (the
  dialogue, the instruction).
Each check is a 0/1 score per item, and `well_formed` is their conjunction. score.py puts them beside
ROUGE and exact match in every generated answer's per-item scores, so `instructune compare` pairs
them across runs like any 0/1 metric (exact McNemar test, bootstrap interval of the change);
`share_interval` gives the Wilson interval of a share, which eval stores in its summary and compare
tabulates (`shares_markdown`).

Leaves out: judging the content (the task's metric does that), answers scored by option
log-likelihood (always an option), and a stop that an engine does not report (every engine here
returns the tokens before the stop, so an answer shorter than the cap stopped).
"""

from __future__ import annotations

import re
from statistics import NormalDist
from typing import Sequence

from instructune.evaluate.metrics import normalize_answer

CHECKS = ("well_formed_option", "well_formed_stop", "well_formed_no_continuation")
# A label opening a prompt line: "#Person1#:", "Goal:", "OPTIONS:", "Customer message:"; at most 4 words.
_LINE_LABEL = re.compile(r"^\s*([^\s:.?!\"][^:\n.?!\"]{0,31}):")
_SPEAKER_TURN = re.compile(r"#[A-Za-z]+\d*#:")
# Prompt lines at least this long that the answer repeats whole count as continuing the prompt.
MIN_REPEATED_LINE = 30


def prompt_labels(prompt: str) -> set[str]:
    """The labels that open lines of a prompt (at most 4 words each).

    Example:
        >>> sorted(prompt_labels("Goal: open a jar\\nOPTIONS:\\n- twist\\n#Person1#: Hi. Nice: yes"))
        ['#Person1#', 'Goal', 'OPTIONS']
    """
    labels = set()
    for line in prompt.splitlines():
        match = _LINE_LABEL.match(line)
        if match and len(match.group(1).split()) <= 4:
            labels.add(match.group(1).strip())
    return labels


def continues_prompt(answer: str, prompt: str, options: Sequence[str] | None = None) -> bool:
    """Whether an answer carries on the prompt's text instead of answering it.

    True when a line of the answer opens with one of the prompt's line labels (`prompt_labels`), when
    it holds a speaker turn such as "#Person2#:", or when it repeats a whole prompt line, or a line's
    text after its label, of at least MIN_REPEATED_LINE characters that contains no option.

    Example:
        >>> prompt = "Summarize this dialogue:\\n\\n#Person1#: Hi, Tom.\\n#Person2#: Hello."
        >>> continues_prompt("#Person1#: How are you?", prompt), continues_prompt("Two friends meet.", prompt)
        (True, False)
    """
    labels = prompt_labels(prompt)
    for line in answer.splitlines():
        stripped = line.strip()
        if any(stripped.startswith(f"{label}:") for label in labels):
            return True
    if _SPEAKER_TURN.search(answer):
        return True
    options = [option.strip() for option in options or () if option.strip()]
    for line in prompt.splitlines():
        label = _LINE_LABEL.match(line)
        # The line itself, and its text after a label ("#Person1#: Hi, Tom. Are you busy ...").
        for text in (line.strip(), line[label.end():].strip() if label else ""):
            if len(text) >= MIN_REPEATED_LINE and text in answer and not any(option in text for option in options):
                return True
    return False


def well_formed_scores(answer: str, prompt: str, *, options: Sequence[str] | None, new_tokens: int,
                       max_new_tokens: int) -> dict[str, float]:
    """The three checks of one answer and their conjunction, each 1.0 or 0.0.

    Args:
        answer: the generated text (stripped, special tokens removed).
        prompt: the rendered prompt (without the chat template), which options and labels come from.
        options: the example's options, or None where none were given.
        new_tokens: the answer's new tokens, the stop token left out (generate's `new_token_counts`).
        max_new_tokens: the cap it was generated under.

    Returns:
        {"well_formed_option", "well_formed_stop", "well_formed_no_continuation", "well_formed"}.

    Example:
        >>> well_formed_scores("Twist the lid.", "Goal: open a jar\\nOPTIONS:\\n- twist the lid\\n- bite it",
        ...                    options=["twist the lid", "bite it"], new_tokens=4, max_new_tokens=64)
        {'well_formed_option': 1.0, 'well_formed_stop': 1.0, 'well_formed_no_continuation': 1.0, 'well_formed': 1.0}
    """
    normalized = normalize_answer(answer)
    is_option = not options or any(normalized == normalize_answer(option) for option in options)
    stopped = new_tokens < max_new_tokens and bool(answer.strip())
    fresh = not continues_prompt(answer, prompt, options)
    scores = dict(zip(CHECKS, (float(is_option), float(stopped), float(fresh))))
    scores["well_formed"] = float(is_option and stopped and fresh)
    return scores


def share_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a share (successes out of n); (0, 1) when n is 0.

    Example:
        >>> [round(bound, 3) for bound in share_interval(45, 50)]
        [0.786, 0.957]
    """
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((share * (1 - share) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def share_intervals(metrics: dict[str, float], n: int, confidence: float = 0.95) -> dict[str, list[float]]:
    """{metric: [low, high]} for the well-formed shares among a task's metrics (none: {}).

    Example:
        >>> share_intervals({"rouge1": 0.4, "well_formed": 0.9}, 50)
        {'well_formed': [0.786, 0.957]}
    """
    return {name: [round(bound, 3) for bound in share_interval(value * n, n, confidence)]
            for name, value in metrics.items() if name == "well_formed" or name in CHECKS}


def shares_markdown(names: list[str], results: list[dict]) -> str:
    """A markdown table of each task's well-formed share in each run, with its Wilson interval; "" when none.

    Args:
        names: the runs' names.
        results: their eval JSONs (each task's summary holds "metrics", "n_examples" and "intervals").

    Example:
        >>> run = {"tasks": {"piqa_generate": {"metrics": {"well_formed": 0.9}, "n_examples": 50,
        ...                                     "intervals": {"well_formed": [0.786, 0.957]}}}}
        >>> print(shares_markdown(["base"], [run]))
        | task | base |
        |---|---|
        | piqa_generate | 0.900 [0.786, 0.957] (n=50) |
    """
    tasks = list(dict.fromkeys(task for result in results for task, summary in result.get("tasks", {}).items()
                               if "well_formed" in summary.get("metrics", {})))
    if not tasks:
        return ""
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for task in tasks:
        cells = []
        for result in results:
            summary = result.get("tasks", {}).get(task, {})
            share = summary.get("metrics", {}).get("well_formed")
            n = summary.get("n_examples", 0)
            low, high = summary.get("intervals", {}).get("well_formed") or share_interval(
                (share or 0) * n, n)
            cells.append("-" if share is None else f"{share:.3f} [{low:.3f}, {high:.3f}] (n={n})")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
