"""rouge-score set up the one way this project scores text: Porter stemming, F-measure.

MBR decoding (mbr.py) scores sampled answers against each other with it; evaluation
(evaluate/metrics.py, a later stage) scores predictions against references with it. One
construction for both, here in the earlier stage, so that the utility MBR maximises is the metric
evaluation reports, number for number.

Example:
    >>> rouge_scorer(("rouge1",)).score("the cat sat", "the cats sat")["rouge1"].fmeasure
    1.0
"""

from __future__ import annotations

from functools import lru_cache


def rouge_scorer(types: tuple[str, ...], *, cache_tokens: bool = False):
    """A `rouge_score.RougeScorer` for `types`, stemming on.

    cache_tokens: tokenize each distinct text once for the life of the scorer (MBR scores each sampled
    answer against every other one); the scores are the same.
    """
    if not cache_tokens:
        return _shared_scorer(tuple(types))
    from rouge_score import rouge_scorer as rouge

    return rouge.RougeScorer(list(types), tokenizer=_CachedTokenizer())


@lru_cache(maxsize=8)
def _shared_scorer(types: tuple[str, ...]):
    from rouge_score import rouge_scorer as rouge

    return rouge.RougeScorer(list(types), use_stemmer=True)


class _CachedTokenizer:
    """rouge-score's default tokenizer (lower case, alphanumeric words, Porter stems), each text tokenized once."""

    def __init__(self):
        from rouge_score.tokenizers import DefaultTokenizer

        self._tokenizer = DefaultTokenizer(use_stemmer=True)
        self._tokens: dict[str, list[str]] = {}

    def tokenize(self, text: str) -> list[str]:
        if text not in self._tokens:
            self._tokens[text] = self._tokenizer.tokenize(text)
        return self._tokens[text]
