"""Evaluation against ground truth: generation metrics, multiple-choice scoring, before/after reports.

metrics.py scores text (ROUGE, exact match, token F1); choice.py and choice_pack.py score options by
log-likelihood; score.py turns examples or a task's records into metrics (what training, eval and the
quickstart call), generating answers through generation/; run.py is the `instructune eval` command;
compare.py and report.py are `instructune compare` (deltas, forgetting flags, chart, HTML), with
stats.py's paired confidence intervals and tests and provenance.py's check that compared runs were
scored alike. `compare()` is imported from `instructune.evaluate.compare`, not re-exported here, so
that name stays the module the CLI runs.
"""

from instructune.evaluate.choice import score_choices
from instructune.evaluate.metrics import exact_match, generation_metrics, normalize_answer, rouge_scores, token_f1
from instructune.evaluate.report import before_after_markdown, comparison_markdown
from instructune.evaluate.score import evaluate_examples, evaluate_task

__all__ = [
    "before_after_markdown", "comparison_markdown", "evaluate_examples", "evaluate_task", "exact_match",
    "generation_metrics", "normalize_answer", "rouge_scores", "score_choices", "token_f1",
]
