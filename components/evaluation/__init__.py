"""Evaluation on DEMON: the official-parity and strict scorers (`scorers`), score reports (`report`), scoring of
prediction folders in the release's layout (`runner`, `demonlab score`) and chance-level baselines (`baselines`).

In-process API (no files): `scorers.score_task(task, preds, gts, choices, scorer) -> TaskScore` and
`report.summarize(task_scores) -> dict`.
"""
