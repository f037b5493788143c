"""Minimum Bayes risk (MBR) decoding: sample several answers per prompt, keep the one the others agree with most.

Greedy decoding returns the single most likely next token at each step, which is not the answer a
metric scores best: a summary that shares the most words with what the model would *typically* write
tends to share the most with a human's too. MBR (Kumar & Byrne 2004; for neural text, Eikema & Aziz
2020, Freitag et al. 2022) draws `samples` answers per prompt, scores each against all the others
with a utility (here ROUGE, rouge-score's with Porter stemming, the metric evaluation reports), and
returns the candidate with the highest mean utility: the sampled answers stand in for the model's
distribution, and the chosen one is its consensus.

The samples are drawn by the engine (generate.py: OpenVINO or Hugging Face, one prompt's samples
together, seeded), so MBR costs `samples` sampled answers per prompt where greedy costs one, plus
samples x (samples - 1) / 2 ROUGE pairs per prompt (each answer tokenized once). What this file
leaves out: choosing among beam-search answers, and utilities other than ROUGE.

Example:
    >>> choose(["the cat sat", "a cat sat down", "the dog ran"], "rouge1")
    0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from instructune.errors import InstructuneError
from instructune.generation.engines import Sampling
from instructune.generation.rouge import rouge_scorer

__all__ = ["UTILITIES", "Mbr", "choose", "expected_utilities"]

# ROUGE variants MBR may maximise; "rouge" is the mean of ROUGE-1, ROUGE-2 and ROUGE-L.
UTILITIES = ("rouge1", "rouge2", "rougeL", "rouge")


@dataclass(frozen=True)
class Mbr:
    """MBR decoding's settings: how many answers to sample per prompt, how, and what they are ranked by.

    Example:
        >>> Mbr(samples=16, utility="rouge1", temperature=0.7)
        Mbr(samples=16, utility='rouge1', temperature=0.7, top_p=1.0, top_k=50, seed=0)
    """

    # Sampled answers per prompt: the candidates and, each against the others, the evidence.
    samples: int = 16
    # What a candidate's agreement with another is measured by (UTILITIES).
    utility: str = "rouge1"
    # How the candidates are sampled (engines.Sampling: temperature, then top-k, then top-p).
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    # Seeds the draws: the same prompts, settings and engine give the same answers.
    seed: int = 0

    def __post_init__(self):
        if self.samples < 2:
            raise InstructuneError(f"mbr: samples {self.samples}; expected >= 2 (one answer has nothing to agree with)")
        if self.utility not in UTILITIES:
            raise InstructuneError(f"mbr: utility {self.utility!r}; expected one of {', '.join(UTILITIES)}")

    def sampling(self) -> Sampling:
        """The `engines.Sampling` that draws the candidates."""
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, as result files record it."""
        return asdict(self)


def expected_utilities(candidates: list[str], utility: str = "rouge1") -> list[float]:
    """Each candidate's mean utility against every other candidate (the MBR objective, samples as evidence).

    Utility is rouge-score's F-measure with Porter stemming, the same numbers `rouge_score.RougeScorer`
    gives the pair; it is symmetric, so each pair is scored once. Identical candidates count each time
    they were drawn: a frequent answer is a likely one.

    Example:
        >>> expected_utilities(["a b", "a b", "c"], "rouge1")
        [0.5, 0.5, 0.0]
    """
    if utility not in UTILITIES:
        raise InstructuneError(f"mbr: utility {utility!r}; expected one of {', '.join(UTILITIES)}")
    if len(candidates) < 2:
        return [0.0] * len(candidates)
    types = ["rouge1", "rouge2", "rougeL"] if utility == "rouge" else [utility]
    scorer = rouge_scorer(tuple(types), cache_tokens=True)
    totals = [0.0] * len(candidates)
    for i in range(len(candidates)):
        for j in range(i + 1, len(candidates)):
            scores = scorer.score(candidates[j], candidates[i])
            value = sum(scores[name].fmeasure for name in types) / len(types)
            totals[i] += value
            totals[j] += value
    return [total / (len(candidates) - 1) for total in totals]


def choose(candidates: list[str], utility: str = "rouge1") -> int:
    """The index of the MBR answer among `candidates`: the highest mean utility, the first drawn on a tie."""
    if not candidates:
        raise InstructuneError("mbr: no candidates to choose among")
    scores = expected_utilities(candidates, utility)
    return max(range(len(candidates)), key=lambda index: (scores[index], -index))
