"""Evaluation on DEMON: the official-parity and strict scorers (`scorers`), score reports (`report`), scoring of
prediction folders in the release's layout (`runner`, `demonlab score`) and the floors: chance and context-copying
baselines (`baselines`); running models over DEMON (`demonlab evaluate`): model adapters (`adapters`), the `eval:`
settings (`settings`), batched inference with sharding and OOM splits (`inference`), the response cache (`cache`),
results bundles and their merge (`bundle`), bundle reports and comparisons (`bundle_report`), the entry point
(`evaluate`).

In-process API (no files): `scorers.score_task(task, preds, gts, choices, scorer) -> TaskScore` and
`report.summarize(task_scores) -> dict`; `evaluate.evaluate(model, data, out, settings) -> results dict`.
"""
