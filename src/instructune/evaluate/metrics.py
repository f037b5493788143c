"""Generation metrics against ground truth: ROUGE-1/2/L/Lsum, exact match and token F1.

ROUGE is Google's rouge-score with Porter stemming, F-measure, averaged over predictions. ROUGE-Lsum
splits summaries into sentences at newlines (rouge-score's own convention; no nltk sentence
splitter). With several references per prediction (DialogSum test has three) ROUGE is reported under
three protocols, side by side, because published tables differ and the gap is large (~8 points of
ROUGE-1 on DialogSum between the first and the last):
- best of N (`rouge1`): each prediction takes its best reference, as rouge-score's `score_multi` and
  SQuAD do; the most flattering.
- first reference (`rouge1_first_ref`): the official DialogSum baseline's protocol (summary1).
- mean over the references (`rouge1_mean_ref`): each reference scored alone, averaged; the protocol
  of tables computed on the Hugging Face copy of DialogSum test (one row per reference), so a
  reference given twice counts twice (data/render.py keeps DialogSum's repeated summaries).
Exact match and token F1 take the best reference.

Exact match and token F1 normalise text as the SQuAD evaluation script does: lower case, punctuation
removed, articles (a, an, the) removed, whitespace collapsed. Model-based metrics (BERTScore,
judges) are left out.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from instructune.errors import InstructuneError
from instructune.generation.rouge import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces.

    Example:
        >>> normalize_answer("  The Cat, sat!")
        'cat sat'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 of the normalised texts: harmonic mean of token precision and recall.

    Example:
        >>> round(token_f1("the cat sat", "a cat sat down"), 3)   # 2 shared of 2 and 3 tokens
        0.8
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        # Both empty counts as a match, one empty as a miss (SQuAD 2.0's rule for no-answer).
        return float(pred_tokens == ref_tokens)
    shared = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(pred_tokens)
    recall = shared / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def rouge_scores(prediction: str, references: list[str]) -> dict[str, float]:
    """ROUGE F-measures of one prediction, each the best over the references.

    Args:
        prediction: the model's text.
        references: one or more ground-truth texts.

    Returns:
        {"rouge1": f, "rouge2": f, "rougeL": f, "rougeLsum": f}, each in [0, 1].

    Example:
        >>> rouge_scores("the cat sat", ["the cat sat on the mat"])["rouge1"]
        0.6666666666666666
    """
    scores = rouge_scorer(ROUGE_TYPES).score_multi(references, prediction)
    return {rouge_type: scores[rouge_type].fmeasure for rouge_type in ROUGE_TYPES}


PROTOCOLS = {"": "best of the references", "_first_ref": "first reference", "_mean_ref": "mean over the references"}


def rouge_protocols(prediction: str, references: list[str]) -> dict[str, float]:
    """ROUGE of one prediction under the three multi-reference protocols (see the module docstring).

    Example:
        >>> scores = rouge_protocols("the cat sat", ["the cat sat", "a dog ran"])
        >>> scores["rouge1"], scores["rouge1_first_ref"], scores["rouge1_mean_ref"]
        (1.0, 1.0, 0.5)
    """
    scorer = rouge_scorer(ROUGE_TYPES)
    each = [scorer.score(reference, prediction) for reference in references]
    scores = {}
    for rouge_type in ROUGE_TYPES:
        values = [score[rouge_type].fmeasure for score in each]
        scores[rouge_type] = max(values)
        scores[f"{rouge_type}_first_ref"] = values[0]
        scores[f"{rouge_type}_mean_ref"] = sum(values) / len(values)
    return scores


def _as_reference_lists(references: list[str] | list[list[str]], n_predictions: int) -> list[list[str]]:
    if len(references) != n_predictions:
        raise InstructuneError(
            f"generation_metrics: {n_predictions} predictions but {len(references)} references; "
            "expected one reference (or list of references) per prediction"
        )
    lists = []
    for index, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs or not all(isinstance(ref, str) for ref in refs):
            raise InstructuneError(
                f"generation_metrics: reference {index} is {refs!r}; expected a string or a non-empty list of strings"
            )
        lists.append(refs)
    return lists


def generation_item_scores(
    predictions: list[str], references: list[str] | list[list[str]]
) -> list[dict[str, float]]:
    """Per-example ROUGE-1/2/L/Lsum, exact match and token F1: what `generation_metrics` averages.

    Paired statistics between runs (compare.py) need these per example, so eval keeps them.

    Args:
        predictions, references: as in `generation_metrics`.

    Returns:
        One dict per prediction with the keys `generation_metrics` returns, each in [0, 1].

    Example:
        >>> generation_item_scores(["the cat sat", "no"], ["the cat sat", "yes"])[0]["exact_match"]
        1.0
    """
    if not predictions:
        raise InstructuneError("generation_metrics: no predictions to score; expected at least one")
    reference_lists = _as_reference_lists(references, len(predictions))
    multi_reference = any(len(refs) > 1 for refs in reference_lists)
    keys = [*ROUGE_TYPES, "exact_match", "f1"]
    if multi_reference:
        keys += [f"{key}{suffix}" for suffix in ("_first_ref", "_mean_ref") for key in ROUGE_TYPES]
    items = []
    for prediction, refs in zip(predictions, reference_lists):
        scores = rouge_protocols(prediction, refs)
        scores["exact_match"] = max(exact_match(prediction, ref) for ref in refs)
        scores["f1"] = max(token_f1(prediction, ref) for ref in refs)
        items.append({key: scores[key] for key in keys})
    return items


def mean_scores(items: list[dict[str, float]]) -> dict[str, float]:
    """Each key's average over per-example score dicts (all with the same keys).

    Example:
        >>> mean_scores([{"f1": 1.0}, {"f1": 0.5}])
        {'f1': 0.75}
    """
    return {key: sum(item[key] for item in items) / len(items) for key in items[0]}


def generation_metrics(
    predictions: list[str], references: list[str] | list[list[str]]
) -> dict[str, float]:
    """Corpus averages of ROUGE-1/2/L/Lsum, exact match and token F1.

    Args:
        predictions: one generated text per example.
        references: per example either one reference string or a list of references; with a list,
            each metric takes the best reference for that prediction.

    Returns:
        {"rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "f1"} as fractions in [0, 1] (ROUGE
        best over the references), and, when any example has more than one reference, the same ROUGE
        keys under the other two protocols: "_first_ref" (e.g. "rouge1_first_ref") and "_mean_ref".

    Example:
        >>> generation_metrics(["the cat sat"], [["a dog ran", "the cat sat on the mat"]])["rouge1"]
        0.6666666666666666
    """
    return mean_scores(generation_item_scores(predictions, references))
